"""Figure helpers shared by the checks."""

from __future__ import annotations

import math

from mmaudit.checks.plotting import text_colour_on


def test_text_colour_follows_the_cell_colour() -> None:
    """Dark cells (the top of a sequential map, the bottom of a reversed one) get white text,
    light cells black; NaN cells are blank and get black."""
    assert text_colour_on("Oranges", 1.0) == "white"
    assert text_colour_on("Oranges", 0.0) == "black"
    assert text_colour_on("Oranges_r", 0.0) == "white"
    assert text_colour_on("viridis", 0.0) == "white" and text_colour_on("viridis", 1.0) == "black"
    assert text_colour_on("Oranges", math.nan) == "black"
    assert text_colour_on("Oranges", 5.0, vmin=0.0, vmax=10.0) == text_colour_on("Oranges", 0.5)
