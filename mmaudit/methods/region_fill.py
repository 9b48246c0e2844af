"""Covering an image region, for the "used, not only seen" tests of a saliency hotspot.

Where the box goes: ``fitted_peak_boxes`` puts disjoint boxes on the highest peaks of a mean
map away from forbidden pixels, each as large as the free space around its peak allows (sizes
from ``box_ladder``), and names the peaks no box can hold; ``free_positions`` lists box
corners that miss each image's ROI (the control boxes). What fills it: ``linear_fill``
(linear in-painting from the box's surroundings, plus noise drawn per image so a fill does
not depend on its batch) or ``donor_fill`` (the same box of another image). ``box_mask`` is
the box as pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def box_ladder(bh: int, bw: int, floor: float = 0.5, min_px: int = 3) -> list[tuple[int, int]]:
    """Box sizes from ``bh x bw`` down to the floor, largest first: each side shrinks by
    one pixel per step (by about 10 % on large images, at most eight steps) down to
    ``floor`` times the default side, but never below ``min_px`` (nor above the default).

    Why a ladder rather than one size: on a small film whose lungs reach close to the edge,
    the default box plus the ROI margin may have no legal position near a corner, and a
    marker there would go untested; a smaller box still fits."""
    lo_h = min(bh, max(min_px, round(bh * floor)))
    lo_w = min(bw, max(min_px, round(bw * floor)))
    steps = max(bh - lo_h, bw - lo_w)
    if steps == 0:
        return [(bh, bw)]
    n = min(steps, 8)
    out: list[tuple[int, int]] = []
    for i in range(n + 1):
        size = (round(bh - (bh - lo_h) * i / n), round(bw - (bw - lo_w) * i / n))
        if size not in out:
            out.append(size)
    return out


@dataclass(frozen=True)
class PeakBox:
    """A box placed on a peak of a mean map: top-left corner, size, the peak it holds
    (image pixels) and the share of the map's positive mass inside it."""

    r0: int
    c0: int
    bh: int
    bw: int
    peak: tuple[int, int]
    mass: float

    @property
    def area(self) -> int:
        return self.bh * self.bw


@dataclass(frozen=True)
class UnfitPeak:
    """A local maximum of the map outside the forbidden pixels that no box of any tried size
    can hold: where it is, its value against the map's mean pixel, and the free run of
    pixels through it (``free_rows`` down its column, ``free_cols`` along its row), which
    is narrower than the smallest box."""

    row: int
    col: int
    ratio: float
    free_rows: int
    free_cols: int


def _reach(blocked: torch.Tensor, bh: int, bw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Legal top-left corners of ``bh x bw`` boxes that touch no ``blocked`` pixel, and the
    pixels inside at least one such box."""
    hit = F.max_pool2d(blocked[None, None].float(), (bh, bw), stride=1)[0, 0] > 0
    allowed = ~hit
    # the dilation of the legal corners by the box: max-pool over the padded corner grid
    grid = F.pad(allowed.float()[None, None], (bw - 1, bw - 1, bh - 1, bh - 1))
    reach = F.max_pool2d(grid, (bh, bw), stride=1)[0, 0] > 0
    return allowed, reach


def _place(
    values: torch.Tensor, allowed: torch.Tensor, pr: int, pc: int, bh: int, bw: int
) -> tuple[int, int]:
    """The legal ``bh x bw`` box holding pixel ``(pr, pc)`` with the most positive mass of
    ``values`` (ties: the one whose centre is closest to the pixel), so that a box smaller
    than the hotspot it sits on covers as much of it as it can."""
    nr, nc = allowed.shape
    rr = torch.arange(nr).view(-1, 1).float()
    cc = torch.arange(nc).view(1, -1).float()
    contains = (rr <= pr) & (rr + bh > pr) & (cc <= pc) & (cc + bw > pc) & allowed
    sums = F.avg_pool2d(values.clamp_min(0)[None, None].double(), (bh, bw), stride=1)[0, 0]
    best = sums.masked_fill(~contains, float("-inf")).max()
    top = contains & (sums >= best - 1e-9 * abs(float(best)))
    dist = (rr + bh / 2 - pr - 0.5).abs() + (cc + bw / 2 - pc - 0.5).abs()
    r0, c0 = divmod(int(dist.masked_fill(~top, float("inf")).argmin()), nc)
    return r0, c0


def largest_fit(
    forbidden: torch.Tensor | None,
    sizes: Sequence[tuple[int, int]],
    size: tuple[int, int],
    pixel: tuple[int, int],
) -> tuple[int, int] | None:
    """The first of ``sizes`` (largest first) with a box position on an image of ``size``
    that holds ``pixel`` and touches no ``forbidden`` pixel; None if none does. Other boxes
    are not in the way here: this is the room the image and the ROI leave."""
    h, w = size
    forbid = torch.zeros(h, w, dtype=torch.bool) if forbidden is None else forbidden.cpu().bool()
    for bh, bw in sizes:
        _, reach = _reach(forbid, min(bh, h), min(bw, w))
        if reach[pixel]:
            return bh, bw
    return None


def fitted_peak_boxes(
    mean_map: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    forbidden: torch.Tensor | None = None,
    k: int = 1,
) -> tuple[list[PeakBox], list[UnfitPeak]]:
    """Up to ``k`` disjoint boxes on the highest peaks of ``mean_map`` (H, W) that touch no
    ``forbidden`` pixel, each as large as the free space around its peak allows: the first
    of ``sizes`` (largest first, see :func:`box_ladder`) with a legal position holding the
    peak. Boxes may touch the image edge; of the legal placements holding the peak (clear of
    the forbidden pixels and the earlier boxes) each takes the one with the most mass, the
    one centred closest to the peak among equals.

    A peak is the highest pixel that some box of the smallest size can still hold, so a
    peak squeezed between the ROI and the image edge gets a smaller box instead of none.
    Peaks that no box can hold are returned too, as :class:`UnfitPeak`: local maxima
    (over a window of the smallest box) among the pixels no box can reach, higher than
    the lowest boxed peak (than the map's mean pixel when no box fits), at most ``k``,
    each at least a default box away from the others. A local maximum, so that the
    blur of an attribution on the ROI leaking into a sliver by the edge is not one.
    """
    h, w = mean_map.shape
    forbid = torch.zeros(h, w, dtype=torch.bool) if forbidden is None else forbidden.cpu().bool()
    blocked = forbid.clone()
    values = mean_map.float().cpu()
    total = float(values.clamp_min(0).sum()) or 1.0
    sizes = [(min(bh, h), min(bw, w)) for bh, bw in sizes]
    boxes: list[PeakBox] = []
    for _ in range(k):
        fits = [(bh, bw, *_reach(blocked, bh, bw)) for bh, bw in sizes]
        widest = fits[-1][3]
        if not widest.any():
            break
        masked = values.masked_fill(~widest, float("-inf"))
        pr, pc = divmod(int(masked.argmax()), w)
        for bh, bw, allowed, reach in fits:
            if reach[pr, pc]:
                r0, c0 = _place(values, allowed, pr, pc, bh, bw)
                mass = float(values[r0 : r0 + bh, c0 : c0 + bw].clamp_min(0).sum()) / total
                boxes.append(PeakBox(r0, c0, bh, bw, (pr, pc), mass))
                blocked[r0 : r0 + bh, c0 : c0 + bw] = True
                break
    return boxes, _unfit(values, forbid, sizes, boxes, k)


def _unfit(
    values: torch.Tensor,
    forbid: torch.Tensor,
    sizes: list[tuple[int, int]],
    boxes: list[PeakBox],
    k: int,
) -> list[UnfitPeak]:
    """The peaks outside the ROI that no box of the smallest size can hold (see
    :func:`fitted_peak_boxes`)."""
    h, w = values.shape
    fh, fw = sizes[-1]
    _, reach = _reach(forbid, fh, fw)
    rad_h, rad_w = max(1, fh // 2), max(1, fw // 2)
    local = F.max_pool2d(
        values[None, None], (2 * rad_h + 1, 2 * rad_w + 1), stride=1, padding=(rad_h, rad_w)
    )[0, 0]
    region = ~forbid & ~reach & (values >= local)
    for b in boxes:
        region[b.r0 : b.r0 + b.bh, b.c0 : b.c0 + b.bw] = False
    mean = float(values.clamp_min(0).mean()) or 1.0
    floor_value = min((float(values[b.peak]) for b in boxes), default=mean)
    dh, dw = sizes[0]
    out: list[UnfitPeak] = []
    while len(out) < k and region.any():
        masked = values.masked_fill(~region, float("-inf"))
        pr, pc = divmod(int(masked.argmax()), w)
        v = float(values[pr, pc])
        if not v > floor_value:
            break
        out.append(
            UnfitPeak(
                pr,
                pc,
                v / mean,
                _run(~forbid[:, pc], pr),
                _run(~forbid[pr, :], pc),
            )
        )
        region[max(0, pr - dh) : pr + dh + 1, max(0, pc - dw) : pc + dw + 1] = False
    return out


def _run(free: torch.Tensor, at: int) -> int:
    """Length of the run of ``True`` in the 1-D ``free`` through index ``at`` (0 if it is
    ``False`` there)."""
    if not bool(free[at]):
        return 0
    lo = at
    while lo > 0 and bool(free[lo - 1]):
        lo -= 1
    hi = at
    while hi + 1 < len(free) and bool(free[hi + 1]):
        hi += 1
    return hi - lo + 1


def peak_boxes(
    mean_map: torch.Tensor,
    bh: int,
    bw: int,
    forbidden: torch.Tensor | None = None,
    k: int = 1,
) -> list[tuple[int, int, float]]:
    """Up to ``k`` disjoint ``bh x bw`` boxes around the highest peaks of ``mean_map``
    (H, W) that touch no ``forbidden`` pixel: top-left corners and the share of the map's
    mass inside (:func:`fitted_peak_boxes` with one size)."""
    boxes, _ = fitted_peak_boxes(mean_map, [(bh, bw)], forbidden, k)
    return [(b.r0, b.c0, b.mass) for b in boxes]


# --------------------------------------------------------------------------- fills


def box_mask(
    size: tuple[int, int], r0: torch.Tensor, c0: torch.Tensor, bh: int, bw: int
) -> torch.Tensor:
    """``(B, H, W)`` boolean boxes with top-left corners ``(r0, c0)`` and size ``(bh, bw)``."""
    h, w = size
    rr = torch.arange(h, device=r0.device).view(1, h, 1)
    cc = torch.arange(w, device=r0.device).view(1, 1, w)
    r0, c0 = r0.view(-1, 1, 1), c0.view(-1, 1, 1)
    return (rr >= r0) & (rr < r0 + bh) & (cc >= c0) & (cc < c0 + bw)


def linear_fill(
    images: torch.Tensor,
    r0: torch.Tensor,
    c0: torch.Tensor,
    bh: int,
    bw: int,
    noise: float = 1.0,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | None = None,
) -> torch.Tensor:
    """Replace a box per image by linear in-painting from its surroundings, plus noise.

    The fill is the transfinite (Coons) interpolation of the one-pixel ring around the box:
    linear between the rows above and below and between the columns left and right. A side
    on the image edge has no ring; the opposite side stands in for it. Gaussian noise with
    ``noise`` times the ring's standard deviation is added, so the patch carries texture
    rather than a smooth, out-of-distribution surface (in the spirit of ROAD's noisy
    linear imputation, Rong et al. 2022).

    ``seeds`` (one per image) draws each image's noise from its own generator, so an
    image's fill does not depend on the images batched with it (the same report at any
    batch size or world size); otherwise the noise of the whole batch comes from
    ``generator`` (or torch's global one).
    """
    b, c, h, w = images.shape
    dev = images.device
    idx = torch.arange(b, device=dev)
    r0 = r0.to(dev).long()
    c0 = c0.to(dev).long()
    cols = (c0[:, None] + torch.arange(bw, device=dev)[None]).clamp(0, w - 1)  # (B, bw)
    rows = (r0[:, None] + torch.arange(bh, device=dev)[None]).clamp(0, h - 1)  # (B, bh)

    def row_at(r: torch.Tensor) -> torch.Tensor:  # (B, C, bw)
        return images[idx[:, None], :, r.clamp(0, h - 1)[:, None], cols].permute(0, 2, 1)

    def col_at(cc: torch.Tensor) -> torch.Tensor:  # (B, C, bh)
        return images[idx[:, None], :, rows, cc.clamp(0, w - 1)[:, None]].permute(0, 2, 1)

    has_top, has_bot = r0 > 0, r0 + bh < h
    has_left, has_right = c0 > 0, c0 + bw < w
    top, bot = row_at(r0 - 1), row_at(r0 + bh)
    left, right = col_at(c0 - 1), col_at(c0 + bw)

    def pick(
        a: torch.Tensor,
        ok_a: torch.Tensor,
        other: torch.Tensor,
        ok_o: torch.Tensor,
        fallback: torch.Tensor,
    ) -> torch.Tensor:
        both = ok_a.view(-1, 1, 1)
        alt = torch.where(ok_o.view(-1, 1, 1), other, fallback)
        return torch.where(both, a, alt)

    ring_vals = []
    for side, ok in ((top, has_top), (bot, has_bot), (left, has_left), (right, has_right)):
        ring_vals.append((side * ok.view(-1, 1, 1), ok.float().view(-1, 1, 1) * side.shape[-1]))
    ring_sum = sum(v.sum(-1, keepdim=True) for v, _ in ring_vals)
    ring_n = sum(n for _, n in ring_vals).clamp_min(1)
    ring_mean = ring_sum / ring_n  # (B, C, 1)
    ring_sq = sum((v**2).sum(-1, keepdim=True) for v, _ in ring_vals) / ring_n
    ring_sd = (ring_sq - ring_mean**2).clamp_min(0).sqrt()
    fb_row = ring_mean.expand(-1, -1, bw)
    fb_col = ring_mean.expand(-1, -1, bh)
    top_v = pick(top, has_top, bot, has_bot, fb_row)
    bot_v = pick(bot, has_bot, top, has_top, fb_row)
    left_v = pick(left, has_left, right, has_right, fb_col)
    right_v = pick(right, has_right, left, has_left, fb_col)
    ty = ((torch.arange(bh, device=dev, dtype=images.dtype) + 1) / (bh + 1)).view(1, 1, bh, 1)
    tx = ((torch.arange(bw, device=dev, dtype=images.dtype) + 1) / (bw + 1)).view(1, 1, 1, bw)
    vert = (1 - ty) * top_v[:, :, None, :] + ty * bot_v[:, :, None, :]
    horiz = (1 - tx) * left_v[:, :, :, None] + tx * right_v[:, :, :, None]
    # corner values: the ring's diagonal pixels, taken from the same (possibly substituted)
    # sides as the edges, so that a bilinear surface is reproduced exactly
    top_r = torch.where(has_top, r0 - 1, r0 + bh)
    bot_r = torch.where(has_bot, r0 + bh, r0 - 1)
    left_c = torch.where(has_left, c0 - 1, c0 + bw)
    right_c = torch.where(has_right, c0 + bw, c0 - 1)
    rows_ok = has_top | has_bot
    cols_ok = has_left | has_right

    def corner(r: torch.Tensor, cc: torch.Tensor) -> torch.Tensor:  # (B, C, 1, 1)
        v = images[idx, :, r.clamp(0, h - 1), cc.clamp(0, w - 1)]
        v = torch.where((rows_ok & cols_ok).view(-1, 1), v, ring_mean[..., 0])
        return v[:, :, None, None]

    corners = (
        (1 - ty) * (1 - tx) * corner(top_r, left_c)
        + (1 - ty) * tx * corner(top_r, right_c)
        + ty * (1 - tx) * corner(bot_r, left_c)
        + ty * tx * corner(bot_r, right_c)
    )
    patch = vert + horiz - corners
    if noise > 0:
        if seeds is not None:
            if len(seeds) != b:
                raise ValueError(f"linear_fill: {len(seeds)} seeds for {b} images")
            eps = torch.stack(
                [
                    torch.randn(
                        patch.shape[1:],
                        generator=torch.Generator().manual_seed(int(s)),
                        dtype=torch.float32,
                    )
                    for s in seeds
                ]
            ).to(dev)
        else:
            eps = torch.randn(patch.shape, generator=generator, dtype=torch.float32).to(dev)
        patch = patch + noise * ring_sd[..., None] * eps.to(patch.dtype)
    out = images.clone()
    mask = box_mask((h, w), r0, c0, bh, bw)[:, None].expand(-1, c, -1, -1)
    full = torch.zeros_like(images)
    rr = rows[:, None, :, None].expand(-1, c, -1, bw)
    cc = cols[:, None, None, :].expand(-1, c, bh, -1)
    full[idx.view(-1, 1, 1, 1), torch.arange(c, device=dev).view(1, -1, 1, 1), rr, cc] = patch
    return torch.where(mask, full, out)


def donor_fill(
    images: torch.Tensor,
    donors: torch.Tensor,
    r0: torch.Tensor,
    c0: torch.Tensor,
    bh: int,
    bw: int,
) -> torch.Tensor:
    """Replace a box per image by the same box of a donor image ``(B, C, H, W)``."""
    _, c, h, w = images.shape
    mask = box_mask((h, w), r0.to(images.device), c0.to(images.device), bh, bw)[:, None]
    return torch.where(mask.expand(-1, c, -1, -1), donors, images)


def free_positions(
    roi: torch.Tensor | None,
    size: tuple[int, int],
    bh: int,
    bw: int,
    exclude: list[tuple[int, int, int, int]] | None = None,
) -> torch.Tensor:
    """``(B, H-bh+1, W-bw+1)`` boolean: top-left corners of boxes that miss the ROI
    (``(B, H, W)``, NaN = unknown: every position allowed) and every ``exclude`` box
    ``(r0, r1, c0, c1)``. ``roi=None`` gives one row of positions missing ``exclude``."""
    h, w = size
    if roi is None:
        ok = torch.ones(1, h - bh + 1, w - bw + 1, dtype=torch.bool)
    else:
        inside = (torch.nan_to_num(roi.float(), nan=0.0) > 0.5).float()[:, None]
        hit = F.max_pool2d(inside, (bh, bw), stride=1)[:, 0]
        ok = hit < 0.5
    rr = torch.arange(h - bh + 1, device=ok.device).view(-1, 1)
    cc = torch.arange(w - bw + 1, device=ok.device).view(1, -1)
    for r0, r1, c0, c1 in exclude or []:
        ok = ok & ~((rr < r1) & (rr + bh > r0) & (cc < c1) & (cc + bw > c0))
    return ok


def pick_free_corners(free: torch.Tensor, u: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random box corners among the allowed ones: for each draw ``d`` (a column of ``u``,
    uniforms in [0, 1), one row per image) the ``floor(u * n_free)``-th allowed position of
    each image's ``free`` map ``(B, H', W')``, as (rows, cols). An image with no allowed
    position gets corner (0, 0); callers skip it by its ``free.sum() == 0``."""
    b = free.shape[0]
    flat = free.reshape(b, -1)
    n_free = flat.sum(1)
    counts = torch.cumsum(flat.long(), 1)
    corners = []
    for d in range(u.shape[1]):
        pick = torch.from_numpy(np.floor(u[:, d] * np.maximum(n_free.numpy(), 1))).long()
        # the pick-th allowed position (0-based) is preceded by exactly the positions whose
        # running count of allowed ones is at most pick
        pos = (counts <= pick[:, None]).sum(1).clamp(max=flat.shape[1] - 1)
        corners.append((pos // free.shape[2], pos % free.shape[2]))
    return corners
