"""What one stage adds to the check's output, merged by ``check.py`` in the order the
stages ran, so that metrics, tables, figures and notes keep the order they always had."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mmaudit.checks.contract import CheckOutput, MetricValue


@dataclass
class OutputPart:
    """Metrics, tables, figures, notes and private names from one stage.

    A table name already in the output (``excluded_rows``, ``clusters``: one part per
    layer) is appended to, row-wise; every other name is new."""

    metrics: dict[str, MetricValue] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    private: set[str] = field(default_factory=set)

    def merge_into(self, out: CheckOutput) -> None:
        """Add this part to ``out`` after what is there."""
        out.metrics.update(self.metrics)
        for name, frame in self.tables.items():
            prev = out.tables.get(name)
            out.tables[name] = (
                frame if prev is None else pd.concat([prev, frame], ignore_index=True)
            )
        out.figures.update(self.figures)
        out.notes.extend(self.notes)
        out.private.update(self.private)
