"""Per-sample map statistics on hand-made maps, and the shifted-map null of a recurring
hotspot (its power, and its blocking over samples)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmaudit.methods.map_statistics import border_band, concentration, map_statistics, shifted_null

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_map_statistics_on_hand_made_maps() -> None:
    maps = torch.zeros(3, 10, 10)
    maps[0, 0, 0] = 1.0  # all mass in the corner: border, off-ROI
    maps[1, 4:6, 4:6] = 1.0  # all mass inside the ROI
    maps[2] = -1.0  # no positive evidence: a dead map
    roi = torch.zeros(3, 10, 10)
    roi[:, 3:7, 3:7] = 1
    st = map_statistics(maps, roi, border=0.1)
    assert st["off_roi"][0] == 1 and st["off_roi"][1] == 0 and torch.isnan(st["off_roi"][2])
    assert torch.allclose(st["off_roi_chance"], torch.full((3,), 0.84))
    assert st["pointing"][0] == 0 and st["pointing"][1] == 1
    assert st["rank_acc"][1] == 0.25  # 4 of the top-16 pixels are inside the 16-pixel ROI
    assert st["border"][0] == 1 and st["border"][1] == 0
    assert st["border_chance"][0] == pytest.approx(0.36)
    assert st["mass"][2] == 0 and torch.isnan(st["top"][2])
    unknown = roi.clone()
    unknown[0] = float("nan")
    assert torch.isnan(map_statistics(maps, unknown)["off_roi"][0])
    assert border_band((10, 10), 0.1, "cpu").sum() == 36


def test_shifted_null_separates_recurring_from_scattered_peaks() -> None:
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    recurring = torch.zeros(40, 16, 16)
    recurring[:, 2, 3] = 1.0
    scattered = torch.zeros(40, 16, 16)
    for i in range(40):
        scattered[i, rng.integers(16), rng.integers(16)] = 1.0
    for maps, expect_high in ((recurring, True), (scattered, False)):
        obs = float(concentration(maps.mean(0)))
        null = shifted_null(maps, 100, gen).numpy()
        p = (1 + np.sum(null >= obs)) / 101
        assert (p < 0.05) == expect_high, (obs, null.mean())


def test_shifted_null_in_sample_blocks_equals_the_one_block_result() -> None:
    """Blocking over samples (bounded memory) draws the same shifts and sums the same maps."""
    maps = torch.rand(37, 8, 8)
    maps = maps / maps.sum(dim=(1, 2), keepdim=True)
    whole = shifted_null(maps, 20, torch.Generator().manual_seed(3), max_elements=1 << 30)
    blocked = shifted_null(maps, 20, torch.Generator().manual_seed(3), max_elements=16 * 64 * 5)
    assert torch.allclose(whole, blocked, atol=1e-6)
