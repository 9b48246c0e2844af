"""Recurring hotspots: each method's dataset-mean normalised map, its concentration against a
shifted-map null, and boxes around its sharpest peaks outside the ROI (the candidates the
occlusion test removes), with every box's share of each map's attribution against its area
share (enrichment)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from mmaudit.checks.contract import CheckOutput
from mmaudit.checks.saliency.maps import Maps, live, pool
from mmaudit.checks.saliency.metrics import scaled
from mmaudit.checks.saliency.setting import Setting
from mmaudit.methods.cams import upsample
from mmaudit.methods.map_statistics import border_band, concentration, shifted_null
from mmaudit.methods.region_fill import (
    PeakBox,
    UnfitPeak,
    box_ladder,
    fitted_peak_boxes,
    largest_fit,
)
from mmaudit.methods.stats import Estimate, permutation_pvalue

#: preference order for the hotspot map: the finest, most faithful trusted map first
HOTSPOT_ORDER = ("ig", "occlusion", "layercam", "hirescam", "gradcam")

Box = tuple[int, int, int, int]  # image pixels (r0, r1, c0, c1), end-exclusive


@dataclass(frozen=True)
class Hotspots:
    """The hotspot stage's result: mean maps, boxes and the candidates to occlude."""

    #: method -> its dataset-mean normalised map (live maps only), ``(s, s)``
    mean_maps: dict[str, np.ndarray] = field(default_factory=dict)
    #: the boxes the occlusion test removes, in proposal order: (box name, box)
    candidates: list[tuple[str, Box]] = field(default_factory=list)
    #: every proposed box by name (``<m>``, ``<m>_2`` ...)
    boxes: dict[str, Box] = field(default_factory=dict)
    #: box name -> its area share on the thumbnails (the enrichment's chance level)
    box_chance: dict[str, float] = field(default_factory=dict)
    #: box name -> whether its centre lies in the border band
    in_border: dict[str, int] = field(default_factory=dict)
    #: method -> each map's share in the method's top box (NaN for blank maps)
    top_share: dict[str, np.ndarray] = field(default_factory=dict)
    #: the lead method (hotspot map, clusters, figures); None without a live map
    method: str | None = None
    #: side of the tested hotspot boxes and their controls in image pixels (rows, cols): the
    #: default (``hotspot_size``) unless a candidate only fits a smaller one
    box_size: tuple[int, int] = (1, 1)
    #: method -> its off-ROI peaks that no box of any tried size can hold (not tested)
    unfit: dict[str, list[UnfitPeak]] = field(default_factory=dict)


def find_hotspots(s: Setting, main: Maps, trusted: dict[str, bool]) -> tuple[Hotspots, CheckOutput]:
    """Recurring hotspots: each method's dataset-mean normalised map, its concentration
    against a shifted-map null, and the box around its sharpest peak outside the ROI
    (a candidate for the occlusion test), with the box's enrichment (see
    :func:`_box_enrichment`)."""
    p, out = s.params, CheckOutput()
    mean_maps: dict[str, np.ndarray] = {}
    candidates: list[tuple[str, Box]] = []
    boxes: dict[str, Box] = {}
    box_chance: dict[str, float] = {}
    in_border: dict[str, int] = {}
    top_share: dict[str, np.ndarray] = {}
    gen = torch.Generator().manual_seed(int(s.ctx.rng("saliency.null").integers(2**31)))
    for m in s.methods:
        alive = live(main, m)
        if alive.sum() < 2:
            continue
        t = torch.from_numpy(main.thumbs[m][alive]).float()
        t = t / t.sum(dim=(1, 2), keepdim=True)
        mean = t.mean(0)
        mean_maps[m] = mean.numpy()
        obs = float(concentration(mean))
        null = shifted_null(t, p.hotspot_null, gen).numpy()
        pval = permutation_pvalue(obs, null, "greater")
        out.metrics[f"hotspot.concentration.{m}"] = Estimate(
            obs, n=int(alive.sum()), null_p=pval if trusted[m] else None
        )
        out.metrics[f"hotspot.null_concentration.{m}"] = float(np.mean(null))
    h, w = s.size
    bh = max(1, round(p.hotspot_size * h))
    bw = max(1, round(p.hotspot_size * w))
    if not mean_maps:
        out.notes.append("no live saliency map: no hotspot and no occlusion test")
        out.metrics["offroi_hotspot.flip_excess"] = Estimate(float("nan"), n=0)
        return Hotspots(box_size=(bh, bw)), out
    forbidden, pad = forbidden_pixels(s, main)
    band = border_band(s.size, p.border, "cpu").numpy()
    hot_method = _hotspot_method(s, main, mean_maps, trusted, out)
    if p.hotspot_method != "auto" and hot_method == p.hotspot_method:
        proposers = [hot_method]
    else:
        proposers = [m for m in HOTSPOT_ORDER if m in mean_maps and trusted[m]]
    if not proposers:
        proposers = [m for m in HOTSPOT_ORDER if m in mean_maps]
        out.notes.append("every method failed the sanity check; hotspots come from them anyway")
    ladder = box_ladder(bh, bw)
    fulls = {
        m: upsample(torch.from_numpy(mean_maps[m])[None].float(), s.size)[0] for m in proposers
    }
    placed, unfit, overlapping, tested = _propose(fulls, ladder, forbidden, p.hotspot_peaks, s)
    for m in overlapping:
        out.notes.append(f"{m}: no hotspot box fits outside the ROI; boxes may overlap it")
    if tested != (bh, bw):
        out.notes.append(
            f"hotspot boxes are {tested[0]}x{tested[1]} px, not the default {bh}x{bw} px"
            f" (hotspot_size {p.hotspot_size:g}): a peak with more than its area share of"
            f" the mean attribution has no room for a larger box between the"
            f" {pad}-px ROI margin and the image edge; every candidate, and its control,"
            " is tested at that size"
        )
    proposed: list[tuple[int, str, Box]] = []
    rows_out: list[dict[str, object]] = []
    for m in proposers:
        for rank, pb in enumerate(placed[m]):
            box = (pb.r0, pb.r0 + pb.bh, pb.c0, pb.c0 + pb.bw)
            cy, cx = pb.r0 + pb.bh / 2, pb.c0 + pb.bw / 2
            name = m if rank == 0 else f"{m}_{rank + 1}"
            boxes[name] = box
            out.metrics[f"hotspot.row.{name}"] = float(cy / h)
            out.metrics[f"hotspot.col.{name}"] = float(cx / w)
            out.metrics[f"hotspot.box_rows.{name}"] = pb.bh
            out.metrics[f"hotspot.box_cols.{name}"] = pb.bw
            out.metrics[f"hotspot.box_mass.{name}"] = pb.mass
            in_border[name] = int(band[min(h - 1, int(cy)), min(w - 1, int(cx))])
            out.metrics[f"hotspot.in_border.{name}"] = in_border[name]
            above = pb.mass > pb.area / (h * w)  # more than its area share
            squeezed = (pb.bh, pb.bw) != tested  # smaller: pressed against an earlier box
            if above and not squeezed:
                proposed.append((rank, name, box))
            rows_out.append(_box_row(name, m, rank, pb, above, squeezed, h * w))
        for up in unfit[m]:
            out.notes.append(_unfit_note(m, up, ladder[-1], pad, s.size))
            rows_out.append(_unfit_row(m, up))
        out.metrics[f"hotspot.unfit_peaks.{m}"] = len(unfit[m])
    # round robin over methods (every method's best peak first), distinct boxes, capped
    for _, name, box in sorted(proposed, key=lambda t: t[0]):
        if len(candidates) < p.hotspot_max and all(_iou(box, b) <= 0.5 for _, b in candidates):
            candidates.append((name, box))
    out.metrics["hotspot.box_area"] = float(tested[0] * tested[1] / (h * w))
    out.metrics["hotspot.candidates"] = len(candidates)
    chosen = {name for name, _ in candidates}
    for row in rows_out:
        row["tested"] = row["box"] in chosen
    out.tables["hotspot_boxes"] = pd.DataFrame(rows_out)
    for name in [n for n in boxes if "_" not in n or n in chosen]:
        method = name.split("_")[0]
        share, area = _box_enrichment(s, main, name, boxes[name], out)
        box_chance[name] = area
        if name == method:  # the top box: broken down by attribute in the subgroups stage
            top_share[method] = share
    if not candidates:
        if any(unfit.values()):
            out.notes.append(
                "no box fits around the off-ROI peaks named above, and no region where a box"
                " fits holds more than its area share of the mean attribution: nothing is"
                " occluded, so the hotspot_used rule cannot judge those peaks"
            )
        else:
            out.notes.append(
                "no region outside the ROI holds more than its area share of the mean"
                " attribution: there is no hotspot to occlude"
            )
        out.metrics["offroi_hotspot.flip_excess"] = Estimate(float("nan"), n=0)
    hot = Hotspots(
        mean_maps=mean_maps,
        candidates=candidates,
        boxes=boxes,
        box_chance=box_chance,
        in_border=in_border,
        top_share=top_share,
        method=hot_method,
        box_size=tested,
        unfit=unfit,
    )
    return hot, out


def forbidden_pixels(s: Setting, main: Maps) -> tuple[torch.Tensor | None, int]:
    """Pixels no hotspot box may touch: those in the ROI of over 10 % of the images, widened
    by ``roi_margin`` (in-painting right at the ROI edge changes the ROI's own outline);
    and the margin in pixels. None without masks."""
    p = s.params
    pad = max(0, round(p.roi_margin * s.size[0]))
    if main.roi is None or not np.isfinite(main.roi).any():
        return None, pad
    freq = torch.from_numpy(np.nanmean(main.roi, axis=0)).float()
    forbidden = upsample(freq[None], s.size)[0] > 0.1
    if pad:
        forbidden = (
            torch.nn.functional.max_pool2d(
                forbidden[None, None].float(), 2 * pad + 1, stride=1, padding=pad
            )[0, 0]
            > 0
        )
    return forbidden, pad


def _propose(
    fulls: dict[str, torch.Tensor],
    ladder: list[tuple[int, int]],
    forbidden: torch.Tensor | None,
    k: int,
    s: Setting,
) -> tuple[dict[str, list[PeakBox]], dict[str, list[UnfitPeak]], list[str], tuple[int, int]]:
    """Each method's peak boxes, its peaks no box can hold, the methods whose boxes had to
    overlap the ROI, and the size the candidates are tested at.

    Each peak gets the largest box of ``ladder`` the free space around it allows. The
    occlusion test fills every candidate and its control at one size, so when a box
    holding more than its area share (a candidate) is smaller than the default, every
    method's boxes are placed again with the ladder starting at that size, until the
    candidates agree on one: the largest size at which every candidate peak fits."""
    h, w = s.size
    sizes = ladder
    while True:
        placed: dict[str, list[PeakBox]] = {}
        unfit: dict[str, list[UnfitPeak]] = {}
        overlapping: list[str] = []
        for m, full in fulls.items():
            found, unfit[m] = fitted_peak_boxes(full, sizes, forbidden, k)
            if not found and forbidden is not None:
                found, _ = fitted_peak_boxes(full, sizes[:1], None, k)
                overlapping.append(m)
            placed[m] = found
        # the room each candidate's peak has, the other boxes aside: a box squeezed only by
        # an earlier box (the shoulder of a hotspot already boxed) does not shrink the rest
        needed = [
            largest_fit(None if m in overlapping else forbidden, sizes, (h, w), pb.peak)
            or sizes[-1]
            for m, found in placed.items()
            for pb in found
            if pb.mass > pb.area / (h * w)
        ]
        smallest = min(needed, key=lambda t: t[0] * t[1], default=sizes[0])
        if smallest == sizes[0] or smallest not in sizes:
            return placed, unfit, overlapping, sizes[0]
        sizes = sizes[sizes.index(smallest) :]


def _box_row(
    name: str, m: str, rank: int, pb: PeakBox, above: bool, squeezed: bool, n_px: int
) -> dict:
    """One row of the ``hotspot_boxes`` table: a placed box."""
    return {
        "box": name,
        "method": m,
        "peak": rank + 1,
        "peak_row": pb.peak[0],
        "peak_col": pb.peak[1],
        "r0": pb.r0,
        "r1": pb.r0 + pb.bh - 1,
        "c0": pb.c0,
        "c1": pb.c0 + pb.bw - 1,
        "rows_px": pb.bh,
        "cols_px": pb.bw,
        "box_mass": pb.mass,
        "area_share": pb.area / n_px,
        "above_area_share": above,
        "why_not_tested": (
            "holds no more than its area share"
            if not above
            else "smaller than the tested size: pressed against an earlier box"
            if squeezed
            else ""
        ),
    }


def _unfit_row(m: str, up: UnfitPeak) -> dict:
    """One row of the ``hotspot_boxes`` table: a peak no box can hold."""
    return {
        "box": "",
        "method": m,
        "peak_row": up.row,
        "peak_col": up.col,
        "why_not_tested": f"no box fits: free run {up.free_rows}x{up.free_cols} px",
    }


def _unfit_note(
    m: str, up: UnfitPeak, floor: tuple[int, int], pad: int, size: tuple[int, int]
) -> str:
    """Why an off-ROI peak gets no box: where it is, and the room there."""
    return (
        f"{m}: the off-ROI peak at row {up.row}, col {up.col} of the {size[0]}x{size[1]} px"
        f" image ({up.ratio:.1f}x the mean map's average pixel) gets no box: the free"
        f" space through it is {up.free_rows} px down and {up.free_cols} px across between"
        f" the {pad}-px ROI margin (roi_margin) and the image edge, less than the smallest"
        f" box tried ({floor[0]}x{floor[1]} px); it is not tested by occlusion"
    )


def _hotspot_method(
    s: Setting,
    main: Maps,
    mean_maps: dict[str, np.ndarray],
    trusted: dict[str, bool],
    out: CheckOutput,
) -> str | None:
    """The lead method: ``params.hotspot_method`` when it ran, else the first trusted one in
    :data:`HOTSPOT_ORDER` with a mean map (an untrusted one when none is trusted)."""
    have = [m for m in s.methods if m in main.thumbs]
    wanted = s.params.hotspot_method
    if wanted != "auto":
        if wanted in have:
            return wanted
        out.notes.append(f"params.hotspot_method {wanted!r} did not run; using auto")
    for pref in (True, False):
        for m in HOTSPOT_ORDER:
            if m in have and trusted.get(m, True) == pref and m in mean_maps:
                return m
    return None


def _box_enrichment(
    s: Setting, main: Maps, name: str, box: Box, out: CheckOutput
) -> tuple[np.ndarray, float]:
    """Share of each live map's positive attribution inside hotspot box ``name`` against
    the box's area share: ``hotspot.share.<name>`` and ``hotspot.enrichment.<name>``
    (mean share / area share; patient-bootstrap CI), added to ``out``. Blank maps are left
    out. Returns the per-map share and the area share.

    Why: the off-ROI share is judged against the whole outside area (about 80 % of a
    chest film), so a marker of 1 % of the image moves it by at most that much; the
    share in the box the maps point at shows such a marker directly. The box is the peak
    of these same maps, so the pooled enrichment is optimistic (above 1 even for maps
    with no recurring hotspot); the contrast between attribute levels
    (``by_attr.<attr>.<level>.hotspot_share.<m>`` and its gap test, for each method's
    top box) is what says whether a subgroup concentrates on the box."""
    method = name.split("_")[0]
    share, area = box_share(main.thumbs[method], box, s.size)
    est = s.boot(share, main.rows)
    out.metrics[f"hotspot.share.{name}"] = est
    out.metrics[f"hotspot.enrichment.{name}"] = scaled(est, 1.0 / area)
    return share, area


def box_share(thumbs: np.ndarray, box: Box, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Per map ``(n, s, s)``: the share of its (non-negative) mass inside ``box`` (image
    pixels ``(r0, r1, c0, c1)`` of an image of ``size``), NaN for blank or missing maps;
    and the box's area share. The box is pooled to the thumbnail grid like the maps were,
    so a thumbnail pixel half inside the box counts half."""
    r0, r1, c0, c1 = box
    inside = torch.zeros(1, *size)
    inside[0, r0:r1, c0:c1] = 1.0
    cover = pool(inside, thumbs.shape[1])[0].numpy().astype(np.float64)
    t = thumbs.astype(np.float64)
    total = t.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, (t * cover).sum(axis=(1, 2)) / total, np.nan)
    return share, float(cover.mean())


def _iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes ``(r0, r1, c0, c1)``."""
    ih = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    iw = max(0, min(a[3], b[3]) - max(a[2], b[2]))
    inter = ih * iw
    union = (a[1] - a[0]) * (a[3] - a[2]) + (b[1] - b[0]) * (b[3] - b[2]) - inter
    return inter / union if union else 0.0
