"""Where the hotspot test's control boxes were, for the overlays (issue 17: a figure that
shows a tested box must show its control too).

The occlusion stage draws each image's control among ``control_draws`` random boxes outside
the ROI and the candidates, and keeps the one whose fill changes the image closest to the
candidate's fill. Its draws are seeded per image (``saliency.control``, ``saliency.infill``
and the dataset index), so the same control is found again here, for the few images an
overlay shows, by repeating the draw and the fills (no model run)."""

from __future__ import annotations

import numpy as np
import torch

from mmaudit.checks.saliency.hotspot import Box, Hotspots
from mmaudit.checks.saliency.setting import Setting
from mmaudit.engine.distributed import sample_seeds
from mmaudit.methods.region_fill import free_positions, linear_fill, pick_free_corners


def control_boxes(s: Setting, hot: Hotspots, rows: np.ndarray) -> dict[int, dict[str, Box]]:
    """Dataset row -> candidate name -> its matched control box (image pixels), for
    ``rows``. Empty with donor fills (the control is then matched on donor patches) or
    without candidates."""
    p = s.params
    if not hot.candidates or p.infill != "linear" or not len(rows):
        return {}
    boxes = [b for _, b in hot.candidates]
    names = [n for n, _ in hot.candidates]
    k, (bh, bw), draws = len(boxes), hot.box_size, p.control_draws
    u = s.ctx.rng("saliency.control").random((len(s.ds), draws))
    seed = int(s.ctx.rng("saliency.infill").integers(2**31))
    batch = s.ds.collate([s.ds[int(r)] for r in rows])
    images = batch.image
    assert images is not None
    b = len(rows)
    roi = batch.roi_mask[:, 0] if batch.roi_mask is not None else None
    free = free_positions(roi, s.size, bh, bw, boxes)
    free = free.expand(b, -1, -1) if free.shape[0] == 1 else free
    n_free = free.reshape(b, -1).sum(1)
    corners = [(torch.full((b,), r0), torch.full((b,), c0)) for r0, _, c0, _ in boxes]
    corners += pick_free_corners(free, u[rows, :draws])
    change = torch.stack(
        [
            (
                linear_fill(
                    images,
                    r,
                    c,
                    bh,
                    bw,
                    p.infill_noise,
                    seeds=sample_seeds(seed, f"saliency.infill.{j}", rows),
                )
                - images
            )
            .float()
            .flatten(1)
            .norm(dim=1)
            for j, (r, c) in enumerate(corners)
        ]
    )
    gap = (change[:k, None].clamp_min(1e-6).log() - change[None, k:].clamp_min(1e-6).log()).abs()
    match = gap.argmin(1)  # (k, b)
    out: dict[int, dict[str, Box]] = {}
    for i, row in enumerate(rows):
        if int(n_free[i]) == 0:
            continue
        mine: dict[str, Box] = {}
        for j, name in enumerate(names):
            r, c = corners[k + int(match[j, i])]
            r0, c0 = int(r[i]), int(c[i])
            mine[name] = (r0, r0 + bh, c0, c0 + bw)
        out[int(row)] = mine
    return out
