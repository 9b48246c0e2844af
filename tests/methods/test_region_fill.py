"""Region fills and box placement: linear in-painting reproduces linear images and
handles edges; control positions miss the ROI; peak boxes avoid forbidden pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmaudit.methods.region_fill import (
    box_ladder,
    fitted_peak_boxes,
    free_positions,
    largest_fit,
    linear_fill,
    peak_boxes,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_linear_fill_reproduces_linear_images_and_handles_edges() -> None:
    rr, cc = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    ramp = (0.5 * rr + 0.25 * cc)[None, None].repeat(3, 1, 1, 1)
    r0 = torch.tensor([3, 0, 8])
    c0 = torch.tensor([4, 0, 8])
    filled = linear_fill(ramp, r0, c0, 4, 4, noise=0.0)
    # inside the image the Coons patch of a bilinear surface is the surface itself
    torch.testing.assert_close(filled[0], ramp[0])
    # at the top-left corner the missing sides borrow the opposite ones: still finite,
    # within the ring's range, and only the box changed
    box = torch.zeros(12, 12, dtype=torch.bool)
    box[0:4, 0:4] = True
    assert torch.equal(filled[1, 0][~box], ramp[1, 0][~box])
    assert torch.isfinite(filled).all()
    bright = ramp.clone()
    bright[:, :, 0:4, 0:4] = 100.0  # a marker
    cleared = linear_fill(bright, r0[1:2], c0[1:2], 4, 4, noise=0.0)
    assert cleared[0, 0, 0:4, 0:4].max() < 10.0
    noisy = linear_fill(ramp, r0, c0, 4, 4, noise=1.0, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(noisy[0], ramp[0])


def test_free_positions_and_peak_boxes() -> None:
    roi = torch.zeros(1, 10, 10)
    roi[0, 3:7, 3:7] = 1
    ok = free_positions(roi, (10, 10), 3, 3, exclude=[(0, 3, 7, 10)])
    assert ok.shape == (1, 8, 8)
    assert not ok[0, 3, 3] and not ok[0, 1, 1]  # touches the ROI
    assert ok[0, 0, 0] and not ok[0, 0, 7]  # the excluded box
    mean = torch.zeros(20, 20)
    mean[1, 1] = 5.0  # the sharpest peak, in the corner
    mean[10, 10] = 9.0  # higher, but inside the forbidden ROI
    mean[15, 3] = 2.0
    forbidden = torch.zeros(20, 20, dtype=torch.bool)
    forbidden[6:14, 6:14] = True
    boxes = peak_boxes(mean, 4, 4, forbidden, k=3)
    assert boxes[0][:2] == (0, 0)  # around (1, 1), clipped at the edge
    assert boxes[1][0] <= 15 < boxes[1][0] + 4 and boxes[1][1] <= 3 < boxes[1][1] + 4
    assert boxes[0][2] == pytest.approx(5.0 / 16.0)


def test_box_ladder_shrinks_to_half_the_default_but_not_below_three_px() -> None:
    assert box_ladder(10, 10) == [(10, 10), (9, 9), (8, 8), (7, 7), (6, 6), (5, 5)]
    assert box_ladder(4, 4) == [(4, 4), (3, 3)]
    assert box_ladder(2, 2) == [(2, 2)]  # never larger than the default
    big = box_ladder(77, 77)
    assert big[0] == (77, 77) and big[-1] == (38, 38) and len(big) == 9  # at most 8 steps


def _tight_corner() -> tuple[torch.Tensor, torch.Tensor]:
    """A 40-px map whose forbidden block (rows and cols 0-33) leaves 6-px strips along the
    bottom and right edges; a peak where they meet."""
    forbidden = torch.zeros(40, 40, dtype=torch.bool)
    forbidden[:34, :34] = True
    mean = torch.full((40, 40), 0.01)
    mean[36:39, 36:39] = 1.0  # a 3x3 marker in the free corner
    return mean, forbidden


def test_a_peak_in_a_tight_corner_gets_the_largest_box_that_fits_there() -> None:
    mean, forbidden = _tight_corner()
    # one size only: a default 8-px box has no legal position anywhere
    assert peak_boxes(mean, 8, 8, forbidden, k=1) == []
    boxes, unfit = fitted_peak_boxes(mean, box_ladder(8, 8), forbidden, k=1)
    assert unfit == []
    (b,) = boxes
    assert (b.bh, b.bw) == (6, 6) and b.c0 + b.bw == 40  # it touches the image edge
    assert b.r0 <= 36 and b.r0 + b.bh >= 39 and b.c0 <= 36  # and holds the whole marker
    assert b.mass == pytest.approx((9.0 + 27 * 0.01) / float(mean.sum()))


def test_a_peak_no_box_fits_is_named_with_the_room_there() -> None:
    mean, forbidden = _tight_corner()
    forbidden[:, :37] = True  # only 3 columns left free on the right edge
    mean[10, 38] = 2.0  # a peak in the 3-px strip: the smallest box (4 px) cannot hold it
    boxes, unfit = fitted_peak_boxes(mean, box_ladder(8, 8), forbidden, k=2)
    assert boxes == []
    assert [(u.row, u.col, u.free_rows, u.free_cols) for u in unfit][:1] == [(10, 38, 40, 3)]
    assert unfit[0].ratio > 10
    # attribution leaking from the forbidden block into the strip, falling away from it,
    # has no local maximum there: not a peak
    leak = torch.zeros(40, 40)
    leak[:, :37] = 1.0
    leak[:, 37:] = torch.tensor([0.5, 0.25, 0.125])
    assert fitted_peak_boxes(leak, box_ladder(8, 8), forbidden, k=2) == ([], [])


def test_largest_fit_is_the_room_the_roi_and_the_edge_leave() -> None:
    _, forbidden = _tight_corner()
    ladder = box_ladder(8, 8)
    assert largest_fit(forbidden, ladder, (40, 40), (37, 37)) == (6, 6)
    assert largest_fit(None, ladder, (40, 40), (37, 37)) == (8, 8)
    forbidden[:, :37] = True
    assert largest_fit(forbidden, ladder, (40, 40), (10, 38)) is None  # 3 px: below the floor


def test_random_corners_land_only_on_allowed_positions_and_reach_all_of_them() -> None:
    from mmaudit.methods.region_fill import pick_free_corners

    free = torch.zeros(2, 6, 6, dtype=torch.bool)
    free[0, :, 4] = True  # image 0: only column 4 allowed (6 positions)
    free[1, 5, :] = True  # image 1: only the last row allowed
    u = np.linspace(0, 0.999, 600).reshape(1, -1).repeat(2, axis=0)
    seen: list[set[tuple[int, int]]] = [set(), set()]
    for rows, cols in pick_free_corners(free, u):
        for i in range(2):
            r, c = int(rows[i]), int(cols[i])
            assert free[i, r, c], (i, r, c)
            seen[i].add((r, c))
    assert seen[0] == {(r, 4) for r in range(6)}
    assert seen[1] == {(5, c) for c in range(6)}
