"""Where a saliency map puts its mass, per sample and across the dataset.

Per-sample location statistics of ``(B, H, W)`` maps (positive part, normalised): share
off the region of interest, share in the border band, pointing game, relevance-rank
accuracy and top-1 % concentration, each next to its chance level. For the dataset,
``concentration`` of the mean map and its ``shifted_null``: what the mean map would give
if every sample's map were shifted by its own random offset, the null against which a
recurring hotspot is tested.
"""

from __future__ import annotations

import torch


def positive_normalised(
    maps: torch.Tensor, eps: float = 1e-12
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive part of ``(B, H, W)`` maps divided by its sum, and the sums (0 = dead map)."""
    pos = maps.float().clamp_min(0)
    mass = pos.sum(dim=(1, 2))
    norm = pos / mass.clamp_min(eps).view(-1, 1, 1)
    return norm, mass


def border_band(size: tuple[int, int], fraction: float, device: torch.device | str) -> torch.Tensor:
    """Boolean ``(H, W)`` band of width ``fraction`` of each side along the image edge."""
    h, w = size
    bh, bw = max(1, round(fraction * h)), max(1, round(fraction * w))
    band = torch.ones(h, w, dtype=torch.bool, device=device)
    band[bh : h - bh, bw : w - bw] = False
    return band


def map_statistics(
    maps: torch.Tensor,
    roi: torch.Tensor | None = None,
    border: float = 0.1,
    top_fraction: float = 0.01,
) -> dict[str, torch.Tensor]:
    """Per-sample location statistics of ``(B, H, W)`` maps (positive part), all ``(B,)``.

    mass: total positive attribution (0: a dead map; its other statistics are NaN).
    border / border_chance: share of the mass in the edge band, and the band's area share.
    top: share of the mass in the top ``top_fraction`` of pixels (concentration).
    With ``roi`` (``(B, H, W)`` in {0, 1}, NaN where unknown): off_roi / off_roi_chance
    (share of mass outside, and the outside area share), pointing (the peak lies in the
    ROI) and rank_acc (share of the top-K pixels inside the ROI, K = ROI size).
    """
    b, h, w = maps.shape
    norm, mass = positive_normalised(maps)
    dead = mass <= 0
    nan = torch.tensor(float("nan"), device=maps.device)
    band = border_band((h, w), border, maps.device)
    flat = norm.reshape(b, -1)
    k_top = max(1, round(top_fraction * h * w))
    out = {
        "mass": mass,
        "border": torch.where(dead, nan, (norm * band).sum(dim=(1, 2))),
        "border_chance": band.float().mean().expand(b),
        "top": torch.where(dead, nan, flat.topk(k_top, dim=1).values.sum(1)),
    }
    if roi is not None:
        valid_roi = ~torch.isnan(roi).any(dim=(1, 2))
        inside = torch.nan_to_num(roi, nan=0.0) > 0.5
        area = inside.float().mean(dim=(1, 2))
        valid_roi &= (area > 0) & (area < 1)
        ok = valid_roi & ~dead
        off = (norm * (~inside)).sum(dim=(1, 2))
        peak = flat.argmax(dim=1)
        pointing = inside.reshape(b, -1).gather(1, peak[:, None])[:, 0].float()
        k = inside.reshape(b, -1).sum(1)
        order = flat.argsort(dim=1, descending=True, stable=True)
        hits = inside.reshape(b, -1).gather(1, order).float().cumsum(1)
        rank_acc = hits.gather(1, (k - 1).clamp_min(0)[:, None])[:, 0] / k.clamp_min(1)
        out["off_roi"] = torch.where(ok, off, nan)
        out["off_roi_chance"] = torch.where(valid_roi, 1.0 - area, nan)
        out["pointing"] = torch.where(ok, pointing, nan)
        out["rank_acc"] = torch.where(ok, rank_acc, nan)
    return out


def concentration(mean_map: torch.Tensor, top_fraction: float = 0.01) -> torch.Tensor:
    """Share of a map's mass in its top ``top_fraction`` pixels; works on ``(..., H, W)``."""
    flat = mean_map.reshape(*mean_map.shape[:-2], -1).clamp_min(0)
    k = max(1, round(top_fraction * flat.shape[-1]))
    return flat.topk(k, dim=-1).values.sum(-1) / flat.sum(-1).clamp_min(1e-12)


def shifted_null(
    maps: torch.Tensor,
    n_null: int,
    generator: torch.Generator,
    top_fraction: float = 0.01,
    chunk: int = 16,
    max_elements: int = 1 << 22,
) -> torch.Tensor:
    """Null distribution of the mean map's concentration when every sample's map is shifted
    circularly by its own random offset: what a dataset without a recurring location (but
    with the same per-map shapes) would give. ``maps`` (N, H, W), normalised; returns
    (n_null,). ``chunk`` replicates are gathered at once from the flattened maps, in blocks
    of samples of at most ``max_elements`` gathered pixels."""
    n, h, w = maps.shape
    flat = maps.reshape(1, n, h * w)
    rows0 = torch.arange(h).view(1, 1, h, 1)
    cols0 = torch.arange(w).view(1, 1, 1, w)
    # the shifted maps of ``block`` samples at a time: memory stays flat as N grows (the
    # gather indices are int64, 8 bytes per pixel per replicate per sample)
    block = max(1, max_elements // (chunk * h * w))
    out = []
    for start in range(0, n_null, chunk):
        r = min(chunk, n_null - start)
        dy = torch.randint(0, h, (r, n, 1, 1), generator=generator)
        dx = torch.randint(0, w, (r, n, 1, 1), generator=generator)
        total = torch.zeros(r, h * w, dtype=maps.dtype, device=maps.device)
        for b in range(0, n, block):
            e = min(n, b + block)
            idx = (((rows0 - dy[:, b:e]) % h) * w + (cols0 - dx[:, b:e]) % w).reshape(
                r, e - b, h * w
            )
            shifted = flat[:, b:e].expand(r, -1, -1).gather(2, idx.to(maps.device))
            total += shifted.sum(1)
        out.append(concentration((total / n).view(r, h, w), top_fraction))
    return torch.cat(out)
