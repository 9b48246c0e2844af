"""Matplotlib helpers shared by the checks' figures (headless: the Agg backend, no display)."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, imported on first use (it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def literal_text(fig: Any) -> Any:
    """Show every string in ``fig`` as written: report words such as "$5" are not TeX math."""
    from matplotlib.text import Text

    for t in fig.findobj(Text):
        t.set_parse_math(False)
    return fig
