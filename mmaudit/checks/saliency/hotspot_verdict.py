"""Which occluded hotspot the ``hotspot_used`` rule judges (``offroi_hotspot.*``), the
content gate on it (content.py: a flagged box whose content does not differ by label or any
attribute is reported in a note, not failed), and the note that says where that box is, how
much of the attribution it holds and how often occluding it flips a decision."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

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
from mmaudit.checks.saliency.hotspot import Hotspots
from mmaudit.checks.saliency.metrics import slug, value
from mmaudit.checks.saliency.occlusion import OFF_ROI_MAX_OVERLAP, Occlusion
from mmaudit.checks.saliency.setting import Setting
from mmaudit.checks.saliency.subgroups import Levels
from mmaudit.methods.stats import Estimate


def offroi_verdict(
    s: Setting,
    hot: Hotspots,
    occ: Occlusion,
    metrics: Mapping[str, Any],
    levels: Levels,
    trusted: dict[str, bool],
) -> CheckOutput:
    """``offroi_hotspot.flip_excess`` (and ``.method``, ``.row``, ``.col``,
    ``.roi_overlap``) from the off-ROI candidate :func:`judged_box` picks, with the
    ``offroi_hotspot`` note; a NaN excess and a note when every candidate lies on the ROI.
    When the rule flags candidates, their content is tested against the label and the
    attributes (``params.content_gate``; ``offroi_hotspot.content_*``): a judged box whose
    content is not associated exempts the rule, and the runner's note says why.
    ``metrics``: everything measured so far (the occlusion effects included)."""
    out = CheckOutput()
    met = out.metrics
    names = [m for m, _ in hot.candidates]
    judged = [m for m in names if occ.off_roi[m]]
    if not judged:
        met["offroi_hotspot.flip_excess"] = Estimate(float("nan"), n=len(occ.rows))
        where = (
            f"on the ROI (over {OFF_ROI_MAX_OVERLAP:.0%} of the box on average)"
            if s.has_masks
            else "away from the border band"
        )
        out.notes.append(
            f"every hotspot lies {where}: occlusion effects are reported (occlusion.*) but"
            " not judged as a shortcut"
        )
        return out
    rule = s.rules["hotspot_used"]
    flagged = flagged_boxes(metrics, judged, rule)
    content: dict[str, Association] = {}
    if s.params.content_gate and flagged:
        found = box_associations(s, [hot.boxes[m] for m in flagged])
        content = dict(zip(flagged, found, strict=True))
    worst = judged_box(metrics, judged, rule, {m: a.associated for m, a in content.items()})
    met["offroi_hotspot.flip_excess"] = metrics[f"occlusion.flip_excess.{worst}"]
    met["offroi_hotspot.method"] = worst
    met["offroi_hotspot.flip_rate"] = metrics[f"occlusion.flip_rate.{worst}"]
    met["offroi_hotspot.flip_rate_control"] = metrics[f"occlusion.flip_rate_control.{worst}"]
    met["offroi_hotspot.row"] = metrics[f"hotspot.row.{worst}"]
    met["offroi_hotspot.col"] = metrics[f"hotspot.col.{worst}"]
    if f"hotspot.roi_overlap.{worst}" in metrics:
        met["offroi_hotspot.roi_overlap"] = metrics[f"hotspot.roi_overlap.{worst}"]
    # the box in words, for the hotspot_used finding's sentence ({m[offroi_hotspot.where]})
    met["offroi_hotspot.where"] = box_words(hot.boxes[worst], s.size)
    if worst in content:
        met.update(association_metrics("offroi_hotspot", content[worst]))
        if content[worst].associated is False:
            # the model relies on the box, but nothing in it differs by label or attribute:
            # the rule's premise (a shortcut) is not met, so it is not judged (a note says so)
            how = f"the {worst.split('_')[0]} maps point there"
            out.exempt_next_steps["hotspot_used"] = NOT_A_SHORTCUT_NEXT_STEP
            out.exempt_rules["hotspot_used"] = not_a_shortcut(
                met["offroi_hotspot.where"], how, content[worst]
            )
            out.coverage.append(gated_coverage("hotspot_used", met["offroi_hotspot.where"]))
    elif flagged:
        met["offroi_hotspot.content_assoc_words"] = "was not tested (params.content_gate: false)"
    out.findings.append(_hotspot_note(s, hot, metrics, levels, trusted, worst))
    return out


def flagged_boxes(metrics: Mapping[str, Any], names: list[str], rule: ThresholdRule) -> list[str]:
    """The candidates whose flip excess ``rule`` (``hotspot_used``) flags on its own."""
    excess = {m: metrics[f"occlusion.flip_excess.{m}"] for m in names}
    as_judged = {"hotspot_used": rule.model_copy(update={"metric": "*"})}
    hit = {f.metric for f in judge("saliency", excess, as_judged)}
    return [m for m in names if m in hit]


def judged_box(
    metrics: Mapping[str, Any],
    names: list[str],
    rule: ThresholdRule,
    associated: Mapping[str, bool | None] | None = None,
) -> str:
    """The off-ROI candidate the ``hotspot_used`` rule judges (``offroi_hotspot.*``).

    Boxes whose flip excess the effective rule flags come first: among them, those whose
    content differs by label or attribute, or could not be tested (``associated``: box ->
    True / None; a box missing from it counts as None), before those whose content does not
    (False); then the most severe and the largest judged statistic, so the verdict is the
    worst over the Holm family. When the rule flags none, their excesses differ by noise
    alone (on a few hundred rows, one control flip more or less), and picking the largest
    would let that noise choose the box the report names: the verdict is a pass whichever
    is judged, so the box judged is the one the maps concentrate on most (largest
    enrichment, its share of the attribution over its area share), ties in proposal order
    (each method's top peak first, finest trusted method first)."""
    excess = {m: metrics[f"occlusion.flip_excess.{m}"] for m in names}
    as_judged = {"hotspot_used": rule.model_copy(update={"metric": "*"})}
    flagged = {f.metric: f for f in judge("saliency", excess, as_judged)}
    severity = {"fail": 2, "warn": 1}

    def enrichment(m: str) -> float:
        return value(metrics.get(f"hotspot.enrichment.{m}"))

    shortcut = associated or {}
    if flagged:
        return max(
            (m for m in names if m in flagged),
            key=lambda m: (
                shortcut.get(m) is not False,
                severity.get(flagged[m].severity, 0),
                value(flagged[m].value),
                enrichment(m),
            ),
        )
    return max(names, key=enrichment)


def _hotspot_note(
    s: Setting,
    hot: Hotspots,
    met: Mapping[str, Any],
    levels: Levels,
    trusted: dict[str, bool],
    name: str,
) -> Finding:
    """Which box the ``hotspot_used`` rule judges: proposing method, place (image pixels,
    end-inclusive), ROI overlap, its share of the attribution against its area share
    (per level where the attribute's gap is significant), and its flip rates against
    the control (the rule's own message names neither)."""
    r0, r1, c0, c1 = hot.boxes[name]
    h, w = s.size
    method = name.split("_")[0]
    peak = "" if name == method else f" (peak {name.rsplit('_', 1)[-1]})"
    untrusted = "" if trusted.get(method, True) else " (untrusted)"
    overlap = met.get(f"hotspot.roi_overlap.{name}")
    where = (
        f"ROI overlap {value(overlap):.1%}"
        if overlap is not None
        else ("in the border band" if met.get(f"hotspot.in_border.{name}") else "no masks")
    )
    region = "outside the region of interest" if overlap is not None else "in the border band"
    flips = met[f"occlusion.flip_rate.{name}"]
    ctrl = met[f"occlusion.flip_rate_control.{name}"]
    excess = met[f"occlusion.flip_excess.{name}"]
    area = hot.box_chance.get(name, value(met["hotspot.box_area"]))
    share = met.get(f"hotspot.share.{name}")
    held = ""
    if share is not None and np.isfinite(value(share)):
        ratio = value(share) / area
        held = (
            f"; it holds {value(share):.1%} of the positive {method} attribution per map"
            f" ({ratio:.1f}x its {area:.1%} area share{_level_shares(s, met, levels, name)})"
        )
    return Finding(
        check="saliency",
        rule="offroi_hotspot",
        severity="note",
        message=f"The image region tested as a possible shortcut is the box of"
        f" {r1 - r0}x{c1 - c0} px at rows {r0}-{r1 - 1}, cols {c0}-{c1 - 1} of the {h}x{w}"
        f" px image ({_corner(r0, r1, c0, c1, h, w)}, {region}), where the"
        f" {method}{untrusted} maps concentrate{peak}",
        evidence=f"covering it flips {value(flips):.1%} of decisions vs {value(ctrl):.1%} for a"
        f" same-size control box (excess {value(excess):+.3f}); {where}{held}",
        next_step="look at the box in the overlays (a corner marker, burnt-in text, a"
        " tube?); if it is not anatomy, crop or in-paint it in the training images, retrain,"
        " re-audit and compare the two reports with `mmaudit diff`",
        detail=f"off-ROI hotspot judged (hotspot_used): {method}{untrusted}{peak} box of"
        f" {r1 - r0}x{c1 - c0} px at rows {r0}-{r1 - 1}, cols {c0}-{c1 - 1} of the"
        f" {h}x{w} px image; the hotspot_used rule judges its flip excess",
        figure="overlays_most_off_roi",
        metric="offroi_hotspot.flip_excess",
        value=value(excess) if np.isfinite(value(excess)) else None,
    )


def box_words(box: tuple[int, int, int, int], size: tuple[int, int]) -> str:
    """A box as a reader finds it on the film: "rows 0-9, cols 0-9 of the 64x64 px image
    (top-left corner)" (end-inclusive pixel rows and columns)."""
    r0, r1, c0, c1 = box
    h, w = size
    return (
        f"rows {r0}-{r1 - 1}, cols {c0}-{c1 - 1} of the {h}x{w} px image"
        f" ({_corner(r0, r1, c0, c1, h, w)})"
    )


def _corner(r0: int, r1: int, c0: int, c1: int, h: int, w: int) -> str:
    """Where a box lies in the image, as a reader would say it ("top-left corner",
    "right edge", "centre"), from its centre's third of the height and width."""
    rows = ("top", "middle", "bottom")[min(2, 3 * (r0 + r1) // (2 * h))]
    cols = ("left", "middle", "right")[min(2, 3 * (c0 + c1) // (2 * w))]
    if rows == "middle" and cols == "middle":
        return "centre"
    if rows == "middle" or cols == "middle":
        return f"{cols if rows == 'middle' else rows} edge"
    return f"{rows}-{cols} corner"


def _level_shares(s: Setting, met: Mapping[str, Any], levels: Levels, name: str) -> str:
    """The box's share per level of every attribute whose hotspot-share gap is
    significant (Holm), as "; site B 31% / A 2%"; empty for secondary peaks or no gap."""
    parts = []
    for attr in levels.labels:
        gap = met.get(f"subgroup_gap.{slug(attr)}.hotspot_share.{name}")
        if not isinstance(gap, Estimate) or gap.null_p is None or gap.null_p >= s.params.alpha:
            continue
        shares = []
        for lev in levels.order[attr]:
            est = met.get(f"by_attr.{slug(attr)}.{slug(lev)}.hotspot_share.{name}")
            if est is not None and np.isfinite(value(est)):
                shares.append((value(est), lev))
        shares.sort(reverse=True)
        parts.append(f"{attr} " + " / ".join(f"{lev} {v:.0%}" for v, lev in shares))
    return "".join(f"; {p}" for p in parts)
