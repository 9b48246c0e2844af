"""The saliency overlays name each study, share one colour scale and draw the tested boxes."""

from __future__ import annotations

import numpy as np

from mmaudit.checks.saliency.figures import OverlayMarks, _overlay_grid
from mmaudit.checks.saliency.maps import Maps


def test_overlays_carry_ids_colour_bar_and_tested_boxes() -> None:
    from matplotlib.patches import Rectangle

    rng = np.random.default_rng(0)
    n, side = 3, 16
    thumbs = rng.random((n, side, side)) * 0.01  # sums, not maxima: scaled for display
    maps = Maps(
        rows=np.arange(n),
        thumbs={"ig": thumbs, "gradcam": thumbs},
        images=rng.random((n, side, side)),
    )
    marks = OverlayMarks(
        ["s007", "s042", "s099"], {"ig": (0, 16, 0, 16), "ig_2": (32, 48, 0, 16)}, (64, 64)
    )
    fig = _overlay_grid(maps, ["ig", "gradcam"], np.array([2, 0]), "t", {}, marks)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in axes[:2]] == ["s099", "s007"]  # picked rows, in order
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    boxes = [[p for p in ax.patches if isinstance(p, Rectangle)] for ax in axes]
    assert [len(b) for b in boxes] == [2, 2, 0, 0]  # ig's two candidates; gradcam has none
    assert boxes[0][0].get_width() == 4 and boxes[0][1].get_xy() == (-0.5, 7.5)  # 64 -> 16 px
    shown = axes[0].images[1].get_array()
    assert np.isclose(float(np.max(shown)), 1.0)  # the map at its own maximum, colour bar 0..1
