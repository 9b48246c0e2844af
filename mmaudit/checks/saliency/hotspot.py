"""Recurring hotspots: each method's dataset-mean normalised map, its concentration against a
shifted-map null, and boxes around its sharpest peaks outside the ROI (the candidates the
occlusion test removes), with every box's share of each map's attribution against its area
share (enrichment)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mmaudit.checks.contract import CheckOutput
from mmaudit.checks.saliency.maps import Maps, live, pool
from mmaudit.checks.saliency.metrics import scaled
from mmaudit.checks.saliency.setting import Setting
from mmaudit.methods.cams import upsample
from mmaudit.methods.map_statistics import border_band, concentration, shifted_null
from mmaudit.methods.region_fill import peak_boxes
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
    #: hotspot / control box side in image pixels (rows, cols)
    box_size: tuple[int, int] = (1, 1)


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
    forbidden = None
    if main.roi is not None and np.isfinite(main.roi).any():
        freq = torch.from_numpy(np.nanmean(main.roi, axis=0)).float()
        forbidden = upsample(freq[None], s.size)[0] > 0.1
        # keep a margin: in-painting right at the ROI edge changes the ROI's own outline
        pad = max(0, round(p.roi_margin * h))
        if pad:
            forbidden = (
                torch.nn.functional.max_pool2d(
                    forbidden[None, None].float(), 2 * pad + 1, stride=1, padding=pad
                )[0, 0]
                > 0
            )
    band = border_band(s.size, p.border, "cpu").numpy()
    hot_method = _hotspot_method(s, main, mean_maps, trusted, out)
    if p.hotspot_method != "auto" and hot_method == p.hotspot_method:
        proposers = [hot_method]
    else:
        proposers = [m for m in HOTSPOT_ORDER if m in mean_maps and trusted[m]]
    if not proposers:
        proposers = [m for m in HOTSPOT_ORDER if m in mean_maps]
        out.notes.append("every method failed the sanity check; hotspots come from them anyway")
    proposed: list[tuple[int, str, Box]] = []
    for m in proposers:
        full = upsample(torch.from_numpy(mean_maps[m])[None].float(), s.size)[0]
        found = peak_boxes(full, bh, bw, forbidden, p.hotspot_peaks)
        if not found:
            found = peak_boxes(full, bh, bw, None, p.hotspot_peaks)
            out.notes.append(f"{m}: no hotspot box fits outside the ROI; boxes may overlap it")
        for rank, (r0, c0, mass) in enumerate(found):
            box = (r0, r0 + bh, c0, c0 + bw)
            cy, cx = r0 + bh / 2, c0 + bw / 2
            name = m if rank == 0 else f"{m}_{rank + 1}"
            boxes[name] = box
            out.metrics[f"hotspot.row.{name}"] = float(cy / h)
            out.metrics[f"hotspot.col.{name}"] = float(cx / w)
            out.metrics[f"hotspot.box_mass.{name}"] = mass
            in_border[name] = int(band[min(h - 1, int(cy)), min(w - 1, int(cx))])
            out.metrics[f"hotspot.in_border.{name}"] = in_border[name]
            if mass > bh * bw / (h * w):  # more than its area share
                proposed.append((rank, name, box))
    # round robin over methods (every method's best peak first), distinct boxes, capped
    for _, name, box in sorted(proposed, key=lambda t: t[0]):
        if len(candidates) < p.hotspot_max and all(_iou(box, b) <= 0.5 for _, b in candidates):
            candidates.append((name, box))
    out.metrics["hotspot.box_area"] = float(bh * bw / (h * w))
    out.metrics["hotspot.candidates"] = len(candidates)
    tested = {name for name, _ in candidates}
    for name in [n for n in boxes if "_" not in n or n in tested]:
        method = name.split("_")[0]
        share, area = _box_enrichment(s, main, name, boxes[name], out)
        box_chance[name] = area
        if name == method:  # the top box: broken down by attribute in the subgroups stage
            top_share[method] = share
    if not candidates:
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
        box_size=(bh, bw),
    )
    return hot, out


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
