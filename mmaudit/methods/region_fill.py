"""Covering an image region, for the "used, not only seen" tests of a saliency hotspot.

Where the box goes: ``peak_boxes`` puts disjoint boxes on the highest peaks of a mean map
away from forbidden pixels; ``free_positions`` lists box corners that miss each image's
ROI (the control boxes). What fills it: ``linear_fill`` (linear in-painting from the
box's surroundings, plus noise drawn per image so a fill does not depend on its batch)
or ``donor_fill`` (the same box of another image). ``box_mask`` is the box as pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def peak_boxes(
    mean_map: torch.Tensor,
    bh: int,
    bw: int,
    forbidden: torch.Tensor | None = None,
    k: int = 1,
) -> list[tuple[int, int, float]]:
    """Up to ``k`` disjoint ``bh x bw`` boxes around the highest peaks of ``mean_map``
    (H, W) that touch no ``forbidden`` pixel: top-left corners and the share of the map's
    mass inside. Each box is centred on its peak as far as the image edge and the forbidden
    pixels allow; later boxes may not overlap earlier ones (non-maximum suppression)."""
    h, w = mean_map.shape
    blocked = torch.zeros(h, w, dtype=torch.bool) if forbidden is None else forbidden.cpu().clone()
    values = mean_map.float().cpu()
    total = float(values.clamp_min(0).sum()) or 1.0
    out: list[tuple[int, int, float]] = []
    rr = torch.arange(h - bh + 1).view(-1, 1).float()
    cc = torch.arange(w - bw + 1).view(1, -1).float()
    for _ in range(k):
        hit = F.max_pool2d(blocked[None, None].float(), (bh, bw), stride=1)[0, 0] > 0
        allowed = ~hit
        if not allowed.any():
            break
        # pixels inside at least one allowed box: where a box may still be centred
        reach = F.conv_transpose2d(allowed[None, None].float(), torch.ones(1, 1, bh, bw))[0, 0] > 0
        masked = values.masked_fill(~reach, float("-inf"))
        pr, pc = divmod(int(masked.argmax()), w)
        contains = (rr <= pr) & (rr + bh > pr) & (cc <= pc) & (cc + bw > pc) & allowed
        dist = (rr + bh / 2 - pr - 0.5).abs() + (cc + bw / 2 - pc - 0.5).abs()
        r0, c0 = divmod(int(dist.masked_fill(~contains, float("inf")).argmin()), w - bw + 1)
        mass = float(values[r0 : r0 + bh, c0 : c0 + bw].clamp_min(0).sum()) / total
        out.append((r0, c0, mass))
        blocked[r0 : r0 + bh, c0 : c0 + bw] = True
    return out


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
