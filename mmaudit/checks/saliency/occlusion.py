"""The occlusion proof: every candidate hotspot box is filled in, and so is a same-size
control box outside the ROI whose fill changes the image as much; decision flips, the change
of the explained logit and the AUROC change are compared, paired by sample and resampled by
patient, Holm across candidates."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from mmaudit.checks.contract import CheckOutput
from mmaudit.checks.saliency.hotspot import Hotspots
from mmaudit.checks.saliency.maps import Maps, memory_budget
from mmaudit.checks.saliency.metrics import holm_adjusted
from mmaudit.checks.saliency.setting import (
    Setting,
    has_site,
    signed_score,
    stratified_positions,
)
from mmaudit.engine.distributed import sample_seeds
from mmaudit.methods.image_forward import ImageForward
from mmaudit.methods.region_fill import (
    donor_fill,
    free_positions,
    linear_fill,
    pick_free_corners,
)
from mmaudit.methods.stats import Estimate

if TYPE_CHECKING:
    from mmaudit.engine.data import Batch
    from mmaudit.methods.memory_budget import MemoryBudget

#: a hotspot box counts as off-ROI when at most this share of it lies in the image's ROI
OFF_ROI_MAX_OVERLAP = 0.05


@dataclass(frozen=True)
class Occlusion:
    """Per-sample effects of occluding each candidate, and which candidates lie off the ROI."""

    #: ``delta.<c>``, ``delta_control.<c>``, ``flip.<c>``, ``flip_control.<c>`` per mapped row
    #: (NaN for the rows outside the tested subset)
    per_sample: pd.DataFrame
    #: candidate -> off the ROI (at most ``OFF_ROI_MAX_OVERLAP`` of the box in it on average;
    #: in the border band without masks): what the ``hotspot_used`` rule may judge
    off_roi: dict[str, bool]
    #: the dataset rows filled: ``params.hotspot_samples`` of the mapped rows, stratified by
    #: label and site (all of them below the cap)
    rows: np.ndarray


def occlusion_test(
    s: Setting, main: Maps, hot: Hotspots, trusted: dict[str, bool]
) -> tuple[Occlusion | None, CheckOutput]:
    """Occlude every candidate hotspot box and, as its control, a same-size random box
    outside the ROI and the candidates whose fill changes the image about as much (the
    closest L2 change among ``control_draws`` random boxes); compare decisions, logits
    and AUROC, paired by sample and resampled by patient. The rows filled are at most
    ``hotspot_samples`` of the mapped rows, stratified by label and site, so that the test
    costs 2 x candidates forwards on a fixed subset at any N (with a coverage note when
    capped). None without candidates."""
    p, out = s.params, CheckOutput()
    if not hot.candidates:
        return None, out
    boxes = [b for _, b in hot.candidates]
    names = [m for m, _ in hot.candidates]
    k = len(boxes)
    bh, bw = hot.box_size
    pos = stratified_positions(s, p.hotspot_samples, "saliency.hotspot.rows")
    rows = main.rows[pos]
    if len(rows) < len(main.rows):
        out.notes.append(
            f"hotspot test: boxes filled on {len(rows)} of {len(main.rows)} image rows"
            f" (hotspot_samples={p.hotspot_samples}, a seeded draw stratified by label"
            f"{' and site' if has_site(s) else ''}; 0 fills every row)"
        )
    draws = p.control_draws
    u = s.ctx.rng("saliency.control").random((len(s.ds), draws))
    donors = _donors(s, main, hot) if p.infill == "donor" else None
    runner = ImageForward(s.adapter, s.fixed)
    budget = memory_budget(s)
    seed = int(s.ctx.rng("saliency.infill").integers(2**31))
    ds, size = s.ds, s.size

    def fn(batch: Batch) -> dict[str, np.ndarray]:
        """``occlude`` on as many rows at once as their filled copies fit half the budget
        (the forwards of the copies get the other half): the fills are per image, so the
        result is that of the whole batch at once."""
        assert batch.image is not None
        b = len(batch)
        # per row, alive at once: the image, its k + draws fills, the draws stacked, the k
        # controls picked from them, the 2k copies stacked for the forward, a donor image
        copies = 4 * k + 2 * draws + 2
        step = budget.rows_held(
            "hotspot in-fills", copies * batch.image[0].numel() * batch.image.element_size(), 0.5
        )
        if step >= b:
            return occlude(batch)
        parts = [occlude(batch.select(slice(lo, lo + step))) for lo in range(0, b, step)]
        return {
            "logits": np.concatenate([q["logits"] for q in parts], axis=1),
            "ctrl_ok": np.concatenate([q["ctrl_ok"] for q in parts]),
            "overlap": np.concatenate([q["overlap"] for q in parts], axis=1),
            "change": np.concatenate([q["change"] for q in parts], axis=2),
        }

    def occlude(batch: Batch) -> dict[str, np.ndarray]:
        assert batch.image is not None
        images = batch.image
        b = len(batch)
        dev = images.device
        idx = batch.index.cpu().numpy()
        roi = batch.roi_mask[:, 0] if batch.roi_mask is not None else None
        free = free_positions(roi.cpu() if roi is not None else None, size, bh, bw, boxes)
        free = free.expand(b, -1, -1) if free.shape[0] == 1 else free
        n_free = free.reshape(b, -1).sum(1)
        corners = [(torch.full((b,), r0), torch.full((b,), c0)) for r0, _, c0, _ in boxes]
        corners += pick_free_corners(free, u[idx, :draws])
        if donors is not None:
            donor_imgs = ds.collate([ds[int(j)] for j in donors[idx]]).image
            assert donor_imgs is not None
            donor_imgs = donor_imgs.to(dev, images.dtype)
            filled = [
                donor_fill(images, donor_imgs, r.to(dev), c.to(dev), bh, bw) for r, c in corners
            ]
        else:
            # each image's noise from its own generator, one per fill: the same fill
            # whichever batch or rank the image lands in
            filled = [
                linear_fill(
                    images,
                    r.to(dev),
                    c.to(dev),
                    bh,
                    bw,
                    p.infill_noise,
                    seeds=sample_seeds(seed, f"saliency.infill.{j}", idx),
                )
                for j, (r, c) in enumerate(corners)
            ]
        change = torch.stack([(f - images).float().flatten(1).norm(dim=1) for f in filled])
        hot_change, ctrl_change = change[:k], change[k:]  # (k, b), (draws, b)
        gap = (
            hot_change[:, None].clamp_min(1e-6).log() - ctrl_change[None].clamp_min(1e-6).log()
        ).abs()
        match = gap.argmin(1)  # (k, b): the control draw whose change is closest
        ctrl_stack = torch.stack(filled[k:])  # (draws, b, C, H, W)
        cols = torch.arange(b, device=dev)
        controls = [ctrl_stack[match[j].to(dev), cols] for j in range(k)]
        stacked = torch.cat([*filled[:k], *controls])  # row j * b + i: sample i
        logits = forward_in_chunks(runner, batch, stacked, budget).float().cpu().numpy()
        overlap = np.full((k, b), np.nan)
        if roi is not None:
            for j, (r0, r1, c0, c1) in enumerate(boxes):
                inside = torch.nan_to_num(roi[:, r0:r1, c0:c1].float(), nan=-1.0)
                valid = (inside >= 0).all(dim=(1, 2))
                share = (inside > 0.5).float().mean(dim=(1, 2))
                overlap[j] = torch.where(valid, share, torch.nan).cpu().numpy()
        return {
            "logits": logits.reshape(2 * k, b, -1),
            "ctrl_ok": (n_free > 0).numpy(),
            "overlap": overlap,
            "change": torch.stack([hot_change, ctrl_change.gather(0, match)]).cpu().numpy(),
        }

    with runner.active(), torch.no_grad():
        parts = s.ctx.cache.map_batches(fn, desc="hotspot occlusion", indices=rows)
    occ = np.concatenate([q["logits"] for q in parts], axis=1)  # (2k, n, outputs)
    ctrl_ok = np.concatenate([q["ctrl_ok"] for q in parts])
    overlap = np.concatenate([q["overlap"] for q in parts], axis=1)
    change = np.concatenate([q["change"] for q in parts], axis=2)  # (2, k, n)
    if (~ctrl_ok).any():
        out.notes.append(
            f"{int((~ctrl_ok).sum())} images have no room for a control box outside the ROI"
            " and the hotspots; they are left out of the paired comparisons"
        )
    assert main.logits is not None
    base = main.logits[pos]
    cls = s.cls_all[rows]
    s0 = signed_score(base, cls, s.column, s.kind)
    dec0 = s.decision(base)
    two_classes = len(np.unique(s.labels(rows))) >= 2
    if not two_classes:
        out.notes.append("the image rows hold one class: AUROC changes are undefined")
    met = out.metrics
    columns: dict[str, np.ndarray] = {}
    excess_keys = []
    off_roi: dict[str, bool] = {}
    for j, m in enumerate(names):
        d_hot = signed_score(occ[j], cls, s.column, s.kind) - s0
        d_ctrl = signed_score(occ[k + j], cls, s.column, s.kind) - s0
        f_hot = (s.decision(occ[j]) != dec0).astype(float)
        f_ctrl = (s.decision(occ[k + j]) != dec0).astype(float)
        d_ctrl[~ctrl_ok] = np.nan
        f_ctrl[~ctrl_ok] = np.nan
        met[f"occlusion.flip_rate.{m}"] = s.boot(f_hot, rows)
        met[f"occlusion.flip_rate_control.{m}"] = s.boot(f_ctrl, rows)
        met[f"occlusion.flip_excess.{m}"] = s.paired(f_ctrl, f_hot, rows)
        met[f"occlusion.delta_logit.{m}"] = s.boot(d_hot, rows)
        # positive: the hotspot removes more evidence for the decision than its control
        met[f"occlusion.delta_logit_excess.{m}"] = s.paired(-d_ctrl, -d_hot, rows)
        if two_classes:
            met[f"occlusion.delta_auroc.{m}"] = _auroc_diff(s, rows, base, occ[j], None)
            # positive: occluding the hotspot costs more AUROC than its control
            met[f"occlusion.delta_auroc_excess.{m}"] = _auroc_diff(
                s, rows, occ[j], occ[k + j], ctrl_ok
            )
        met[f"occlusion.change_ratio.{m}"] = (
            float(np.median(change[1, j][ctrl_ok] / np.maximum(change[0, j][ctrl_ok], 1e-9)))
            if ctrl_ok.any()
            else float("nan")
        )
        excess_keys.append(f"occlusion.flip_excess.{m}")
        if s.has_masks and np.isfinite(overlap[j]).any():
            met[f"hotspot.roi_overlap.{m}"] = float(np.nanmean(overlap[j]))
            off_roi[m] = float(np.nanmean(overlap[j])) <= OFF_ROI_MAX_OVERLAP
        else:
            off_roi[m] = bool(hot.in_border[m])
        columns.update(
            {
                f"delta.{m}": d_hot,
                f"delta_control.{m}": d_ctrl,
                f"flip.{m}": f_hot,
                f"flip_control.{m}": f_ctrl,
            }
        )
    met.update(holm_adjusted(met, excess_keys, trusted))
    per_sample = pd.DataFrame({c: _spread(v, pos, len(main.rows)) for c, v in columns.items()})
    return Occlusion(per_sample, off_roi, rows), out


def _spread(values: np.ndarray, pos: np.ndarray, n: int) -> np.ndarray:
    """``values`` of the tested positions ``pos`` in an array over all ``n`` mapped rows."""
    full = np.full(n, np.nan)
    full[pos] = values
    return full


def forward_in_chunks(
    runner: ImageForward,
    batch: Batch,
    stacked: torch.Tensor,
    budget: MemoryBudget,
    label: str = "hotspot occlusion",
) -> torch.Tensor:
    """Logits of ``stacked`` (copies of ``batch``'s images, chunk-major), as many images per
    forward as fit half the memory budget (measured once per image shape, recorded as
    ``label``); the other half holds the filled copies. The hotspot test and the grid scan
    both run their in-filled copies through it."""
    b = len(batch)
    idx = torch.arange(b, device=stacked.device).repeat(stacked.shape[0] // b)

    def probe(k: int) -> torch.Tensor:
        rows = torch.zeros(k, dtype=torch.long, device=stacked.device)
        x = stacked[rows]
        runner(batch.select(rows), x)
        return x

    step = budget.rows_per_chunk(
        label,
        tuple(stacked.shape[1:]),
        probe,
        runner.adapter.module,
        grad=False,
        share=0.5,  # the other half holds the filled copies (``rows_held``)
    )
    if step >= stacked.shape[0]:
        return runner(batch, stacked)
    return torch.cat(
        [
            runner(batch.select(idx[lo : lo + step]), stacked[lo : lo + step])
            for lo in range(0, stacked.shape[0], step)
        ]
    )


def _auroc_diff(
    s: Setting, rows: np.ndarray, before: np.ndarray, after: np.ndarray, keep: np.ndarray | None
) -> Estimate:
    """AUROC(after) - AUROC(before) on the image ``rows`` (``keep``), paired by patient."""
    keep = np.ones(len(rows), dtype=bool) if keep is None else keep
    y = s.labels(rows)[keep]
    a = s.positive_score(before)[keep]
    b = s.positive_score(after)[keep]
    return s.bs.auroc_diff(y, a, b, rows[keep])


def _donors(s: Setting, main: Maps, hot: Hotspots) -> np.ndarray:
    """Donor row per dataset row: a hotspot-free image (lowest quartile of the proposing
    maps' mass inside the candidate boxes), drawn with a seeded generator."""
    side = s.params.map_size
    h, w = s.size
    mass = np.zeros(len(main.rows))
    for m, (r0, r1, c0, c1) in hot.candidates:
        t = np.nan_to_num(main.thumbs[m])
        rs = slice(int(r0 * side / h), max(int(r0 * side / h) + 1, math.ceil(r1 * side / h)))
        cs = slice(int(c0 * side / w), max(int(c0 * side / w) + 1, math.ceil(c1 * side / w)))
        mass += t[:, rs, cs].sum(axis=(1, 2)) / np.maximum(t.sum(axis=(1, 2)), 1e-9)
    pool = main.rows[mass <= np.quantile(mass, 0.25)]
    pick = s.ctx.rng("saliency.donor").integers(0, len(pool), len(s.ds))
    return pool[pick]
