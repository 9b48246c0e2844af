"""Saliency maps of the ``saliency`` check: CAMs for every image row (one forward and one
backward per batch), Integrated Gradients and occlusion maps for a seeded subset, reduced to
per-sample location statistics and ``map_size`` thumbnails.

The maps themselves are never kept at full size: every later stage reads the statistics and
thumbnails of a :class:`Maps` record."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmaudit.checks.saliency.params import CAMS
from mmaudit.checks.saliency.setting import Setting
from mmaudit.methods.cams import compute_cams, upsample
from mmaudit.methods.image_attribution import gaussian_blur, integrated_gradients, occlusion_map
from mmaudit.methods.image_forward import ImageForward
from mmaudit.methods.map_statistics import map_statistics, positive_normalised
from mmaudit.methods.memory_budget import MemoryBudget

if TYPE_CHECKING:
    from mmaudit.engine.adapter import ModelAdapter
    from mmaudit.engine.data import Batch


@dataclass(frozen=True)
class Maps:
    """Per-sample results of one map pass over some rows (row order = ``rows``)."""

    rows: np.ndarray
    stats: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # method -> stat -> (n,)
    thumbs: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (n, s, s) normalised
    logits: np.ndarray | None = None
    images: np.ndarray | None = None  # (n, s, s) thumbnails (first pass only)
    roi: np.ndarray | None = None  # (n, s, s) ROI share per thumbnail pixel, NaN unknown
    ig_delta: np.ndarray | None = None
    ig_gap: np.ndarray | None = None  # |f(x) - f(baseline)|, the scale of the delta
    cam_grid: dict[str, tuple[int, int]] = field(default_factory=dict)  # CAM -> layer grid


def compute_maps(s: Setting) -> Maps:
    """The maps of every image row: CAMs for all, IG / occlusion for ``s.ig_rows``."""
    main = map_pass(s, s.adapter, s.rows, "saliency maps")
    if s.ig_rows is not None:
        main = subset_pass(s, s.adapter, s.ig_rows, main, "IG / occlusion maps")
    return main


def map_pass(
    s: Setting,
    adapter: ModelAdapter,
    rows: np.ndarray,
    desc: str,
    methods: list[str] | None = None,
    keep_images: bool = True,
) -> Maps:
    """CAM maps of ``rows`` (one forward and one backward per batch): per-sample
    statistics and thumbnails; the logits when no CAM runs."""
    methods = [m for m in (s.methods if methods is None else methods) if m in CAMS]
    layers = {m: s.cam_layers[m] for m in methods}
    runner = ImageForward(adapter, s.fixed)
    side = s.params.map_size
    cls_all = torch.from_numpy(s.cls_all)
    cam_grid: dict[str, tuple[int, int]] = {}
    budget = memory_budget(s)

    def fn(batch: Batch) -> dict[str, Any]:
        assert batch.image is not None
        images = batch.image
        cls = cls_all[batch.index.cpu()].to(images.device)

        def forward(x: torch.Tensor) -> torch.Tensor:
            return runner(batch, x)

        maps: dict[str, torch.Tensor] = {}
        if layers:
            cams, logits = compute_cams(
                adapter,
                forward,
                images,
                cls,
                layers,
                s.info,
                s.column,
                budget=budget,
                forward_rows=lambda x, r: runner(batch.select(r), x),
            )
            maps.update({m: upsample(c, s.size) for m, c in cams.items()})
            cam_grid.update({m: (c.shape[-2], c.shape[-1]) for m, c in cams.items()})
        else:
            with torch.no_grad():
                logits = forward(images)
        roi = batch.roi_mask[:, 0] if batch.roi_mask is not None else None
        res: dict[str, Any] = {"logits": logits.float().cpu().numpy()}
        for m, mp in maps.items():
            st = map_statistics(mp, roi, s.params.border)
            res[f"stat.{m}"] = {k: v.float().cpu().numpy() for k, v in st.items()}
            norm, _ = positive_normalised(mp)
            res[f"thumb.{m}"] = pool(norm, side).cpu().numpy() * (side * side)
        if keep_images:
            res["image"] = pool(images.float().mean(1), side).cpu().numpy()
            if roi is not None:
                res["roi"] = pool(roi.float(), side).cpu().numpy()
        return res

    with runner.active():
        parts = s.ctx.cache.map_batches(fn, grad=True, desc=desc, indices=rows)
    return dc_replace(_collect(rows, parts, methods), cam_grid=cam_grid)


def subset_pass(s: Setting, adapter: ModelAdapter, rows: np.ndarray, into: Maps, desc: str) -> Maps:
    """Integrated Gradients and occlusion maps (the methods costing many forwards per
    image) for ``rows``, a subset, merged into a copy of ``into`` (NaN for the other
    rows)."""
    p = s.params
    methods = [m for m in ("ig", "occlusion") if m in s.methods]
    runner = ImageForward(adapter, s.fixed)
    cls_all = torch.from_numpy(s.cls_all)
    mean_img = s.ctx.cache.input_mean("image") if p.ig_baseline == "mean" else None
    side = p.map_size
    window = max(1, round(p.occlusion_window * s.size[0]))
    budget = memory_budget(s)

    def fn(batch: Batch) -> dict[str, Any]:
        assert batch.image is not None
        images = batch.image
        cls = cls_all[batch.index.cpu()].to(images.device)
        roi = batch.roi_mask[:, 0] if batch.roi_mask is not None else None
        blurred = gaussian_blur(images, p.blur_sigma)
        res: dict[str, Any] = {}
        maps: dict[str, torch.Tensor] = {}
        if "ig" in methods:
            if p.ig_baseline == "black":
                base = s.black.to(images.device, images.dtype).expand_as(images)
            elif p.ig_baseline == "mean":
                assert mean_img is not None
                base = mean_img.to(images.device, images.dtype).expand_as(images)
            else:
                base = blurred
            attr, delta = integrated_gradients(
                lambda x: runner(batch, x),
                images,
                base,
                cls,
                p.ig_steps,
                p.ig_steps_per_pass,
                s.column,
                budget=budget,
                forward_rows=lambda x, r: runner(batch.select(r), x),
                module=adapter.module,
            )
            maps["ig"] = attr.sum(1)
            res["delta"] = delta.cpu().numpy()
            res["gap"] = (attr.sum(dim=(1, 2, 3)) - delta).abs().detach().cpu().numpy()
        if "occlusion" in methods:
            maps["occlusion"] = occlusion_map(
                lambda x: runner(batch, x),
                images,
                blurred,
                cls,
                window,
                window,
                column=s.column,
                budget=budget,
                forward_rows=lambda x, r: runner(batch.select(r), x),
                module=adapter.module,
            )
        for m, mp in maps.items():
            st = map_statistics(mp.detach(), roi, p.border)
            res[f"stat.{m}"] = {k: v.float().cpu().numpy() for k, v in st.items()}
            norm, _ = positive_normalised(mp.detach())
            res[f"thumb.{m}"] = pool(norm, side).cpu().numpy() * (side * side)
        return res

    with runner.active():
        parts = s.ctx.cache.map_batches(fn, grad=True, desc=desc, indices=rows)
    got = _collect(rows, parts, methods)
    pos = np.searchsorted(into.rows, rows)
    n = len(into.rows)
    stats, thumbs = dict(into.stats), dict(into.thumbs)
    for m in methods:
        stats[m] = {}
        for k, v in got.stats[m].items():
            full = np.full(n, np.nan)
            full[pos] = v
            stats[m][k] = full
        merged = np.full((n, side, side), np.nan, dtype=np.float32)
        merged[pos] = got.thumbs[m]
        thumbs[m] = merged
    ig_delta, ig_gap = into.ig_delta, into.ig_gap
    if "ig" in methods:
        ig_delta = np.full(n, np.nan)
        ig_delta[pos] = np.concatenate([q["delta"] for q in parts])
        ig_gap = np.full(n, np.nan)
        ig_gap[pos] = np.concatenate([q["gap"] for q in parts])
    return dc_replace(into, stats=stats, thumbs=thumbs, ig_delta=ig_delta, ig_gap=ig_gap)


_BUDGETS: weakref.WeakKeyDictionary[Any, MemoryBudget] = weakref.WeakKeyDictionary()


def memory_budget(s: Setting) -> MemoryBudget:
    """The audit's memory budget (``runtime.memory_budget_mb``) for this check's passes:
    one per audit (keyed by its cache), so a pass shape is measured once and every plan
    is recorded."""
    budget = _BUDGETS.get(s.ctx.cache)
    if budget is None:
        budget = MemoryBudget(s.ctx.memory_budget_mb)
        _BUDGETS[s.ctx.cache] = budget
    return budget


def memory_notes(s: Setting) -> list[str]:
    """What the budget chose for each gradient pass of the check (one line), for the report."""
    return memory_budget(s).notes()


def with_stats(maps: Maps, extra: dict[str, dict[str, np.ndarray]]) -> Maps:
    """A copy of ``maps`` whose per-method statistics gain ``extra`` (method -> stat ->
    per-sample values), appended after the method's own."""
    stats = {m: {**st, **extra.get(m, {})} for m, st in maps.stats.items()}
    return dc_replace(maps, stats=stats)


def live(maps: Maps, method: str) -> np.ndarray:
    """Per sample: whether ``method``'s map exists and has positive mass (not blank)."""
    t = maps.thumbs[method]
    return np.isfinite(t).all(axis=(1, 2)) & (np.nan_to_num(t).sum(axis=(1, 2)) > 0)


def pool(maps: torch.Tensor, s: int) -> torch.Tensor:
    """``(B, H, W)`` averaged down (or bilinearly up) to ``(B, s, s)``."""
    x = maps[:, None].float()
    if maps.shape[-1] >= s and maps.shape[-2] >= s:
        return torch.nn.functional.adaptive_avg_pool2d(x, s)[:, 0]
    return torch.nn.functional.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)[
        :, 0
    ]


def downsample(t: np.ndarray, s: int) -> np.ndarray:
    """Thumbnails ``(n, h, w)`` pooled to ``(n, s, s)``, NaN read as 0."""
    return pool(torch.from_numpy(np.nan_to_num(t)).float(), s).numpy()


def _collect(rows: np.ndarray, parts: list[dict[str, Any]], methods: list[str]) -> Maps:
    stats: dict[str, dict[str, np.ndarray]] = {}
    thumbs: dict[str, np.ndarray] = {}
    logits = images = roi = None
    if parts and "logits" in parts[0]:
        logits = np.concatenate([q["logits"] for q in parts])
    for m in methods:
        key = f"stat.{m}"
        if not parts or key not in parts[0]:
            continue
        stats[m] = {k: np.concatenate([q[key][k] for q in parts]) for k in parts[0][key]}
        thumbs[m] = np.concatenate([q[f"thumb.{m}"] for q in parts]).astype(np.float32)
    if parts and "image" in parts[0]:
        images = np.concatenate([q["image"] for q in parts])
        if "roi" in parts[0]:
            roi = np.concatenate([q["roi"] for q in parts])
    return Maps(rows=rows, stats=stats, thumbs=thumbs, logits=logits, images=images, roi=roi)
