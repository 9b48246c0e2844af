"""The off-ROI grid scan: a proof of use that does not need a map to point at the region.

What: every box of a grid over the area where no finding belongs (outside the ROI of over
10 % of the images, widened by ``roi_margin``; the border band without masks: box centre in
the band) is in-painted, at ``scan_sizes`` x the default hotspot box side, on a seeded
subset of ``scan_samples`` image rows stratified by label and site. Each box is compared, image by
image, with a same-size random box of the same area (``scan_control_draws`` per image and
size, the one whose fill changes the image closest in L2 to the box's fill, never one that
overlaps the box): decision flips and the loss of evidence for the explained class.
Per box: flip excess (box flip rate - control flip rate, patient-bootstrap CI) and an exact
one-sided sign test over patients, Holm-adjusted over the whole grid.

Why random controls from the scanned area, not the ROI-side ones: the question is whether
one off-ROI patch matters more than a typical off-ROI patch of its size whose fill changes
the image as much. A control inside the ROI would change decisions for the right reason
and hide a real marker; a control from the same area makes the test "this patch, not
off-ROI in-painting in general".

Why at all: maps can be blind to a patch the model reads (a thresholded path has no
gradient), and the hotspot test only fills the boxes the maps propose. Forward passes only:
``rows x (1 + boxes + sizes x scan_control_draws)``, reported as ``scan.forward_passes``.

A flagged box is a shortcut only when its content differs by the label or an attribute
(content.py): the spine of an abdominal slice flips more decisions than any random box
when filled, but looks the same in every study; such a box gets a note, not a fail."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from mmaudit.checks.contract import CheckOutput, Finding, ThresholdRule
from mmaudit.checks.findings import judge
from mmaudit.checks.saliency.content import (
    NOT_A_SHORTCUT_NEXT_STEP,
    Association,
    association_metrics,
    box_associations,
    gated_coverage,
    not_a_shortcut,
)
from mmaudit.checks.saliency.hotspot import Hotspots, forbidden_pixels
from mmaudit.checks.saliency.hotspot_verdict import box_words
from mmaudit.checks.saliency.maps import Maps, memory_budget
from mmaudit.checks.saliency.occlusion import forward_in_chunks
from mmaudit.checks.saliency.power import scan_power_note
from mmaudit.checks.saliency.setting import Setting, signed_score, stratified_positions
from mmaudit.engine.distributed import sample_seeds
from mmaudit.methods.image_forward import ImageForward
from mmaudit.methods.map_statistics import border_band
from mmaudit.methods.region_fill import linear_fill
from mmaudit.methods.region_scan import (
    Box,
    boxes_overlap,
    grid_boxes,
    legal_corners,
    min_detectable_flip,
    patient_means,
    scan_sizes,
    sign_test_p,
)
from mmaudit.methods.stats import Estimate, adjust_pvalues

if TYPE_CHECKING:
    from mmaudit.engine.data import Batch


@dataclass(frozen=True)
class Scan:
    """The scan's result: the grid, each box's effect, and the box the rule judges."""

    boxes: list[Box]
    #: per box: flip excess over its matched controls and Holm-adjusted sign-test p
    excess: np.ndarray
    p_holm: np.ndarray
    significant: np.ndarray
    #: index of the judged box (largest excess among the significant ones, else overall;
    #: with the content gate, among the flagged boxes whose content differs first)
    winner: int | None
    #: trusted maps' hotspot boxes that overlap the judged box (empty: no map points there)
    pointed_by: list[str]
    table: pd.DataFrame
    #: the content gate on the judged box (None: not tested -- the rule flags no box, or
    #: ``params.content_gate`` is off)
    content: Association | None = None


def scan_offroi(
    s: Setting, main: Maps, hot: Hotspots, trusted: dict[str, bool]
) -> tuple[Scan | None, CheckOutput]:
    """Run the grid scan (see the module docstring): ``scan.*`` metrics, the ``scan_grid``
    table, and a ``scan_unmapped`` finding when the ``scan_used`` rule flags a box that no
    trusted map's hotspot box overlaps. None when the scan is off or no box fits.

    The content gate (content.py, ``params.content_gate``): the significant boxes the rule
    flags on their own are tested for content that differs by label or attribute (one Holm
    family); the judged box is the flagged one with the largest excess among those whose
    content does (or could not be tested), else among all flagged ones. When its content
    does not differ, ``scan_used`` is exempted (the runner's note says the model relies on
    the box, likely anatomy) and ``scan_unmapped`` is a note, not a warning."""
    p, out = s.params, CheckOutput()
    met = out.metrics
    met["scan.max_flip_excess"] = Estimate(float("nan"), n=0)
    if not p.scan:
        out.notes.append("the off-ROI grid scan is off (params.scan: false)")
        return None, out
    forbidden, region = _area(s, main)
    # around the default hotspot box, not the tested one: the same grid for every model
    h, w = s.size
    base = (max(1, round(p.hotspot_size * h)), max(1, round(p.hotspot_size * w)))
    sizes = scan_sizes(base, p.scan_sizes)
    boxes, size_of, step_of = _grid(s, sizes, forbidden, region)
    # sizes with room for a box, and kept under the cap: the only ones given controls
    used = sorted(set(size_of))
    steps = [step_of[k] for k in used]
    sizes, size_of = [sizes[k] for k in used], [used.index(k) for k in size_of]
    if not boxes:
        out.notes.append("no scan box fits outside the ROI: the grid scan did not run")
        return None, out
    rows = s.rows[stratified_positions(s, p.scan_samples, "saliency.scan.rows")]
    corners = [legal_corners(s.size, sz, forbidden, region) for sz in sizes]
    res = _fill_and_run(s, rows, boxes, sizes, corners)
    flips, deltas, ctrl_flip, ctrl_delta, n_pass = res
    groups = s.ctx.groups[rows] if s.ctx.groups is not None else None
    pvals, excess, dlog = [], [], []
    for j in range(len(boxes)):
        fc, dc = ctrl_flip[j], ctrl_delta[j]
        diff = flips[j] - fc
        excess.append(float(np.nanmean(diff)) if np.isfinite(diff).any() else float("nan"))
        dlog.append(float(np.nanmean(dc - deltas[j])) if np.isfinite(dc).any() else np.nan)
        pvals.append(sign_test_p(patient_means(diff, groups)))
    exc = np.asarray(excess)
    p_holm = adjust_pvalues(pvals, "holm")
    sig = (p_holm <= p.alpha) & (exc > 0)
    order = np.where(np.isfinite(exc), exc, -np.inf)
    winner = int(np.argmax(np.where(sig, order, -np.inf))) if sig.any() else int(np.argmax(order))
    rule = s.rules.get("scan_used")

    def estimate(j: int) -> Estimate:
        est = s.paired(ctrl_flip[j], flips[j], rows)
        return Estimate(est.value, est.ci_low, est.ci_high, est.n, float(p_holm[j]))

    # the content gate (content.py): the boxes the rule flags on their own, and whether what
    # is in them differs by label or attribute; a box that does is judged first
    content: dict[int, Association] = {}
    if p.content_gate and rule is not None:
        pool = sorted({int(j) for j in np.flatnonzero(sig)} | {winner})
        flagged_j = [j for j in pool if _flags(rule, estimate(j))]
        if flagged_j:
            found = box_associations(s, [boxes[j] for j in flagged_j])
            content = dict(zip(flagged_j, found, strict=True))
            shortcut = [j for j, a in content.items() if a.associated is not False]
            winner = max(shortcut or list(content), key=lambda j: order[j])
    # the boxes the trusted maps propose: the hotspot candidates (above their area share)
    maps_boxes = {n: b for n, b in hot.candidates if trusted.get(n.split("_")[0], False)}
    pointed = [n for n, b in maps_boxes.items() if boxes_overlap(b, boxes[winner])]
    r0, r1, c0, c1 = boxes[winner]
    met["scan.max_flip_excess"] = estimate(winner)
    lg = s.paired(-ctrl_delta[winner], -deltas[winner], rows)
    met["scan.delta_logit_excess"] = Estimate(lg.value, lg.ci_low, lg.ci_high, lg.n)
    met["scan.flip_rate"] = s.boot(flips[winner], rows)
    met["scan.flip_rate_control"] = s.boot(ctrl_flip[winner], rows)
    met["scan.row"] = float((r0 + r1) / 2 / h)
    met["scan.col"] = float((c0 + c1) / 2 / w)
    met["scan.box_rows"], met["scan.box_cols"] = r1 - r0, c1 - c0
    met["scan.where"] = box_words((r0, r1, c0, c1), s.size)
    met["scan.boxes_tested"] = len(boxes)
    met["scan.boxes_significant"] = int(sig.sum())
    met["scan.rows"] = len(rows)
    met["scan.forward_passes"] = n_pass
    met["scan.maps_pointed"] = int(bool(pointed))
    n_pat = len(np.unique(groups.astype(str))) if groups is not None else len(rows)
    rate = float(np.nanmean(ctrl_flip)) if np.isfinite(ctrl_flip).any() else 0.0
    mde = min_detectable_flip(n_pat, rate, p.alpha / len(boxes))
    met["scan.mde_flip"] = mde
    table = _table(s, boxes, size_of, flips, ctrl_flip, exc, dlog, pvals, p_holm, maps_boxes)
    _content_columns(table, content)
    out.tables["scan_grid"] = table
    out.notes.append(scan_power_note(s, len(rows), n_pat, len(boxes), rate, mde, steps, sizes))
    assoc = content.get(winner)
    scan = Scan(boxes, exc, p_holm, sig, winner, pointed, table, assoc)
    flagged = rule is not None and _flags(rule, met["scan.max_flip_excess"])
    if assoc is not None:
        met.update(association_metrics("scan", assoc))
    elif flagged:
        met["scan.content_assoc_words"] = "was not tested (params.content_gate: false)"
    anatomy = assoc is not None and assoc.associated is False
    if flagged and anatomy:
        # the model relies on the box, but nothing in it differs by label or attribute: the
        # rule's premise (a shortcut) is not met, so it is not judged (a note says so)
        how = (
            f"found by the grid scan; the {', '.join(pointed)} hotspot box points there"
            if pointed
            else "found by the grid scan; no trusted saliency map points there"
        )
        out.exempt_rules["scan_used"] = not_a_shortcut(met["scan.where"], how, assoc)
        out.exempt_next_steps["scan_used"] = NOT_A_SHORTCUT_NEXT_STEP
        out.coverage.append(gated_coverage("scan_used", met["scan.where"]))
    if flagged and not pointed:
        out.findings.append(_unmapped(s, scan, met, maps_boxes, anatomy))
    return scan, out


def _flags(rule: ThresholdRule, est: Estimate) -> bool:
    """Whether ``rule`` (``scan_used``) warns or fails on a box's flip excess ``est``."""
    return any(
        f.severity in ("warn", "fail")
        for f in judge("saliency", {"scan.max_flip_excess": est}, {"scan_used": rule})
    )


def _content_columns(table: pd.DataFrame, content: dict[int, Association]) -> None:
    """The content gate's verdict per box of the ``scan_grid`` table (empty for the boxes
    it did not test: those the rule does not flag)."""
    table["content_associated"] = pd.array([pd.NA] * len(table), dtype="boolean")
    table["content_assoc_with"] = ""
    table["content_assoc_p"] = np.nan
    for j, a in content.items():
        if a.associated is None or a.lead is None:
            continue
        table.loc[j, "content_associated"] = a.associated
        table.loc[j, "content_assoc_with"] = a.lead.target
        table.loc[j, "content_assoc_p"] = a.lead.p_holm


def _area(s: Setting, main: Maps) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The pixels no scan box may touch (the hotspot boxes' rule: the ROI of over 10 % of
    the images, widened by ``roi_margin``) and, without masks, the border band a box centre
    must lie in."""
    forbidden, _ = forbidden_pixels(s, main)
    if forbidden is not None:
        return forbidden, None
    return None, border_band(s.size, s.params.border, "cpu").bool()


def _grid(
    s: Setting,
    sizes: list[tuple[int, int]],
    forbidden: torch.Tensor | None,
    region: torch.Tensor | None,
) -> tuple[list[Box], list[int], dict[int, float]]:
    """The grid boxes (every size, in size order), each box's size index, and the step of
    each size kept (by size index). Over ``scan_max_boxes``, the step of the size with the
    most boxes widens (by a quarter, up to the box side: no gaps) until the grid fits; when
    every step is the side, the smallest size is dropped (a larger box covers its area)."""
    p = s.params
    strides = [p.scan_stride] * len(sizes)
    keep = list(range(len(sizes)))

    def place(k: int) -> list[Box]:
        return grid_boxes(s.size, sizes[k], strides[k], forbidden, region)

    found = {k: place(k) for k in keep}
    while sum(len(found[k]) for k in keep) > p.scan_max_boxes:
        wide = [k for k in keep if strides[k] < 1.0]
        if wide:
            k = max(wide, key=lambda q: len(found[q]))
            strides[k] = min(1.0, strides[k] * 1.25)
            found[k] = place(k)
        elif len(keep) > 1:
            keep.remove(min(keep, key=lambda q: sizes[q][0] * sizes[q][1]))
        else:
            found[keep[0]] = found[keep[0]][:: -(-len(found[keep[0]]) // p.scan_max_boxes)]
            break
    boxes = [b for k in keep for b in found[k]]
    size_of = [k for k in keep for _ in found[k]]
    return boxes, size_of, {k: strides[k] for k in keep}


def _fill_and_run(
    s: Setting,
    rows: np.ndarray,
    boxes: list[Box],
    sizes: list[tuple[int, int]],
    corners: list[torch.Tensor],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Fill every grid box and every control draw of ``rows`` and run the model (forward
    only, batched through the cache): per box ``(J, n)`` flips and explained-score changes,
    and those of its matched control; the number of forward passes (images)."""
    p = s.params
    draws = p.scan_control_draws
    u = s.ctx.rng("saliency.scan.control").random((len(s.ds), len(sizes), draws))
    seed = int(s.ctx.rng("saliency.scan.infill").integers(2**31))
    runner = ImageForward(s.adapter, s.fixed)
    budget = memory_budget(s)
    legal = [torch.nonzero(c.flatten()).flatten() for c in corners]
    widths = [c.shape[1] for c in corners]
    # jobs: (box side, per-image corners) -- the original image, grid boxes, control draws
    k_of = {sz: k for k, sz in enumerate(sizes)}

    def fn(batch: Batch) -> dict[str, np.ndarray]:
        assert batch.image is not None
        images = batch.image
        b, dev = len(batch), images.device
        idx = batch.index.cpu().numpy()
        jobs: list[tuple[tuple[int, int], torch.Tensor, torch.Tensor, str]] = []
        for j, (r0, r1, c0, c1) in enumerate(boxes):
            jobs.append(((r1 - r0, c1 - c0), torch.full((b,), r0), torch.full((b,), c0), f"g{j}"))
        ctrl_pos = np.zeros((len(sizes), draws, b, 2), dtype=np.int64)
        for k, sz in enumerate(sizes):
            for d in range(draws):
                pick = np.floor(u[idx, k, d] * len(legal[k])).astype(np.int64)
                flat = legal[k][torch.from_numpy(np.minimum(pick, len(legal[k]) - 1))]
                r, c = flat // widths[k], flat % widths[k]
                ctrl_pos[k, d, :, 0], ctrl_pos[k, d, :, 1] = r.numpy(), c.numpy()
                jobs.append((sz, r, c, f"c{k}.{d}"))
        # filled copies held at once (each with its difference from the image) fit half the
        # budget; their forwards get the other half
        per_image = images[0].numel() * images.element_size()
        group = max(1, budget.rows_held("saliency scan fills", 2 * per_image, 0.5) // b)
        logits, change = [runner(batch, images).float().cpu()], []
        for lo in range(0, len(jobs), group):
            filled = [
                linear_fill(
                    images,
                    r.to(dev),
                    c.to(dev),
                    sz[0],
                    sz[1],
                    p.infill_noise,
                    seeds=sample_seeds(seed, f"saliency.scan.{tag}", idx),
                )
                for sz, r, c, tag in jobs[lo : lo + group]
            ]
            change += [(f - images).float().flatten(1).norm(dim=1).cpu() for f in filled]
            logits.append(
                forward_in_chunks(runner, batch, torch.cat(filled), budget, "saliency scan")
                .float()
                .cpu()
            )
        z = torch.cat(logits).numpy().reshape(1 + len(jobs), b, -1)
        return {"logits": z, "change": torch.stack(change).numpy(), "ctrl_pos": ctrl_pos}

    with runner.active(), torch.no_grad():
        parts = s.ctx.cache.map_batches(fn, desc="saliency scan", indices=rows)
    z = np.concatenate([q["logits"] for q in parts], axis=1)  # (1 + jobs, n, out)
    change = np.concatenate([q["change"] for q in parts], axis=1)  # (jobs, n)
    pos = np.concatenate([q["ctrl_pos"] for q in parts], axis=2)  # (K, D, n, 2)
    cls = s.cls_all[rows]
    s0 = signed_score(z[0], cls, s.column, s.kind)
    dec0 = s.decision(z[0])
    n_j = len(boxes)
    score = np.stack(
        [signed_score(z[1 + i], cls, s.column, s.kind) - s0 for i in range(len(z) - 1)]
    )
    flip = np.stack([(s.decision(z[1 + i]) != dec0).astype(float) for i in range(len(z) - 1)])
    n = len(rows)
    ctrl_flip = np.full((n_j, n), np.nan)
    ctrl_delta = np.full((n_j, n), np.nan)
    cols = np.arange(n)
    for j, (r0, r1, c0, c1) in enumerate(boxes):
        k = k_of[(r1 - r0, c1 - c0)]
        bh, bw = sizes[k]
        lo = n_j + k * draws
        pr, pc = pos[k, :, :, 0], pos[k, :, :, 1]  # (D, n)
        hit = (pr < r1) & (pr + bh > r0) & (pc < c1) & (pc + bw > c0)
        gap = np.abs(
            np.log(np.maximum(change[j], 1e-6))[None]
            - np.log(np.maximum(change[lo : lo + draws], 1e-6))
        )
        gap[hit] = np.inf
        best = gap.argmin(0)
        ok = np.isfinite(gap[best, cols])
        ctrl_flip[j] = np.where(ok, flip[lo + best, cols], np.nan)
        ctrl_delta[j] = np.where(ok, score[lo + best, cols], np.nan)
    return flip[:n_j], score[:n_j], ctrl_flip, ctrl_delta, int(len(z) * n)


def _table(
    s: Setting,
    boxes: list[Box],
    size_of: list[int],
    flips: np.ndarray,
    ctrl_flip: np.ndarray,
    exc: np.ndarray,
    dlog: list[float],
    pvals: list[float],
    p_holm: np.ndarray,
    maps_boxes: dict[str, Box],
) -> pd.DataFrame:
    """The ``scan_grid`` table: one row per box, its place, effect and test."""
    h, w = s.size
    rows = []
    for j, (r0, r1, c0, c1) in enumerate(boxes):
        rows.append(
            {
                "box": j,
                "size": size_of[j],
                "r0": r0,
                "r1": r1 - 1,
                "c0": c0,
                "c1": c1 - 1,
                "row": (r0 + r1) / 2 / h,
                "col": (c0 + c1) / 2 / w,
                "flip_rate": float(np.nanmean(flips[j])),
                "flip_rate_control": float(np.nanmean(ctrl_flip[j]))
                if np.isfinite(ctrl_flip[j]).any()
                else np.nan,
                "flip_excess": exc[j],
                "delta_logit_excess": dlog[j],
                "p": pvals[j],
                "p_holm": float(p_holm[j]),
                "significant": bool(p_holm[j] <= s.params.alpha and exc[j] > 0),
                "maps_box": ", ".join(
                    n for n, b in maps_boxes.items() if boxes_overlap(b, boxes[j])
                ),
            }
        )
    return pd.DataFrame(rows)


def _unmapped(
    s: Setting, scan: Scan, met: dict, maps_boxes: dict[str, Box], anatomy: bool = False
) -> Finding:
    """The finding for a used region no trusted map proposes: a warning, or a note when
    the region's content does not differ by label or attribute (``anatomy``: no shortcut
    hides there, the maps only miss something the model reads)."""
    assert scan.winner is not None
    r0, r1, c0, c1 = scan.boxes[scan.winner]
    h, w = s.size
    est = met["scan.max_flip_excess"]
    which = ", ".join(sorted(maps_boxes)) or "none (no trusted map)"
    return Finding(
        check="saliency",
        rule="scan_unmapped",
        severity="note" if anatomy else "warn",
        message=(
            f"filling the image region at rows {r0}-{r1 - 1}, cols {c0}-{c1 - 1} of the"
            f" {h}x{w} px input changes decisions, and no trusted saliency map points there:"
            " the maps are blind to something the model uses"
            + (
                " (its content does not differ by label or any attribute: likely anatomy)"
                if anatomy
                else ""
            )
        ),
        evidence=(
            f"scan.max_flip_excess = {est.value:.2f} (95% CI {est.ci_low:.2f} to"
            f" {est.ci_high:.2f}), Holm p = {est.null_p:.2g} over {len(scan.boxes)} boxes;"
            f" trusted hotspot boxes: {which}"
            if est.ci_low is not None and est.null_p is not None
            else f"scan.max_flip_excess = {est.value:.2f}"
        ),
        next_step=(
            "look at that region on the films (a marker, text, a device?); do not rely on"
            " the saliency maps to find this shortcut; retrain without it or mask it"
        ),
        detail="the scan_used box overlaps no hotspot box of a method passing the sanity check",
        figure="scan_effect_map",
        metric="scan.maps_pointed",
        value=0.0,
    )
