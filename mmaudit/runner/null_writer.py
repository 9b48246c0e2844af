"""The report writer of ranks other than 0 under ``torchrun``: it writes nothing."""

from __future__ import annotations

from typing import Any

from mmaudit.report.document import Report
from mmaudit.report.writer import Redactor


class NullWriter:
    """What ranks other than 0 write: nothing (figures are closed, paths are empty)."""

    redactor: Redactor | None = None

    def add_check(self, name: str, output: Any, ids: Any) -> tuple[dict[str, str], dict[str, str]]:
        import matplotlib.pyplot as plt

        for fig in output.figures.values():
            plt.close(fig)
        return {}, {}

    def add_samples(self, frame: Any, embeddings: dict[str, Any], max_mb: float) -> list[str]:
        return []

    def finish(self, report: Report, config_yaml: str) -> None:
        return None

    def abort(self) -> None:
        return None
