"""The blank figure every stage of the check draws on (constrained layout)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches, laid out by matplotlib's constrained
    layout (no pyplot: figures are kept, not shown)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")
