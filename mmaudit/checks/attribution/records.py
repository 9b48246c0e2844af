"""What a stage of the check hands back: a fragment of the check's output.

Each stage (report words, labs, modality shares) returns a ``Fragment`` instead of
writing into a shared output, and ``check.py`` merges the fragments in stage order; each
part keeps the order the stage added it in, so the report's metrics, notes, tables and
figures come out in one fixed order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

    from mmaudit.checks.contract import CheckOutput, MetricValue


@dataclass(frozen=True)
class SampleColumn:
    """One per-sample column a stage fills: ``values`` at dataset rows ``rows``."""

    name: str
    rows: np.ndarray
    values: np.ndarray


@dataclass
class Fragment:
    """The metrics, tables, figures, notes, private names and per-sample columns one stage
    adds to the check's output, each in the order the stage adds them; its coverage lines
    and the rules it exempts (``CheckOutput.coverage``, ``CheckOutput.exempt_rules``)."""

    metrics: dict[str, MetricValue] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    private: set[str] = field(default_factory=set)
    columns: list[SampleColumn] = field(default_factory=list)
    coverage: list[str] = field(default_factory=list)
    exempt_rules: dict[str, str] = field(default_factory=dict)
    exempt_next_steps: dict[str, str] = field(default_factory=dict)

    def merge_into(self, out: CheckOutput, per_sample: pd.DataFrame) -> None:
        """Append this fragment to ``out`` and fill its columns of ``per_sample``."""
        out.metrics.update(self.metrics)
        out.tables.update(self.tables)
        out.figures.update(self.figures)
        out.notes.extend(self.notes)
        out.private |= self.private
        out.coverage.extend(self.coverage)
        out.exempt_rules.update(self.exempt_rules)
        out.exempt_next_steps.update(self.exempt_next_steps)
        for column in self.columns:
            per_sample.loc[column.rows, column.name] = column.values


def unique_key(base: str, taken: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3`` ... whichever is not in ``taken`` (then taken):
    two words or features whose metric keys coincide get a metric each."""
    key, k = base, 2
    while key in taken:
        key, k = f"{base}_{k}", k + 1
    taken.add(key)
    return key
