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


def text_colour_on(cmap: str, value: float, vmin: float = 0.0, vmax: float = 1.0) -> str:
    """Black or white, whichever reads better on ``cmap``'s colour for ``value``: by the
    cell's relative luminance (WCAG 2), so that annotations of dark heatmap cells stay
    legible. A NaN cell (drawn blank) takes black."""
    import math

    import matplotlib

    if value is None or math.isnan(value):
        return "black"
    span = (vmax - vmin) or 1.0
    r, g, b, _ = matplotlib.colormaps[cmap](min(max((value - vmin) / span, 0.0), 1.0))

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    luminance = 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)
    # the contrast ratio against white equals the one against black at L = 0.179
    return "white" if luminance < 0.179 else "black"
