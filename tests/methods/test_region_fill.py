"""Region fills and box placement: linear in-painting reproduces linear images and
handles edges; control positions miss the ROI; peak boxes avoid forbidden pixels."""

from __future__ import annotations

import pytest
import torch

from mmaudit.methods.region_fill import free_positions, linear_fill, peak_boxes

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
