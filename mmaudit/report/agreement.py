"""Across checks: per attribute, which checks see it, which ran and do not, and what it means.

What: after every check has run, the findings are lined up per configured attribute (site,
sex, ...): the checks that show it is *encoded* (probing's probes, the embedding's
organisation by it), *used* (probing's erasure moves predictions; a report word or lab
column that tells it apart drives text / lab attribution), or that *performance differs*
by it (subgroups); and whether saliency found an image hotspot that changes decisions.
One sentence per flagged attribute says what the pattern means, and the report keeps it.
One more line (``kind`` ``modality``) when saliency judged an image that ablation finds
the model does not use (image share about 0): saliency's verdicts then say nothing about
image shortcuts, and the reader must be told. And one (``kind`` ``modality``, about the
image) when saliency's off-ROI grid scan finds a region that changes decisions where no
trusted map's hotspot box points: the maps are blind to a region the model uses.

Why: each method sees one kind of shortcut. An invisible site signature (a global change
of intensity, noise or sharpness) is decoded by probes and erasing it moves predictions,
yet saliency shows no hotspot; a site phrase in the report is found by text attribution,
not by saliency. A reader who sees "saliency: pass" beside "probing: fail" must be told
that saliency is not the check that would see this shortcut, rather than left to decide
which of the two is wrong.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = ["CrossCheck", "check_ran", "cross_check"]

Evidence = Literal["encoded", "used", "differs"]

# which (check, rule) says what about an attribute named in the finding's metric
_EVIDENCE: dict[tuple[str, str], Evidence] = {
    ("probing", "encoded"): "encoded",
    ("probing", "encoded_r2"): "encoded",
    ("probing", "used"): "used",
    ("embedding", "dataset_identity"): "encoded",
    ("embedding", "dataset_identity_head"): "encoded",
    ("embedding", "nuisance_pure_clusters"): "encoded",
    ("attribution", "site_word"): "used",
    ("attribution", "site_feature"): "used",
    ("subgroups", "auroc_gap"): "differs",
    ("subgroups", "equalised_odds"): "differs",
    ("subgroups", "ece_gap"): "differs",
}
# attribution names no attribute in its metrics: its site rules are about this param
_SITE_RULES = {("attribution", "site_word"), ("attribution", "site_feature")}
_ATTRIBUTE_CHECKS = ("probing", "embedding", "subgroups", "attribution")
_MODALITY_LAYERS = ("image", "text", "tabular")
_IMAGE_HOTSPOT_RULES = ("hotspot_used", "scan_used")
_FLAG = ("warn", "fail")


class CrossCheck(BaseModel):
    """What the checks together say about one attribute (``kind`` ``attribute``), or about
    one input modality (``kind`` ``modality``: ``attribute`` names the modality)."""

    attribute: str
    kind: Literal["attribute", "modality"] = "attribute"
    encoded: dict[str, list[str]] = Field(default_factory=dict)  # check -> ["rule: metric"]
    used: dict[str, list[str]] = Field(default_factory=dict)
    differs: dict[str, list[str]] = Field(default_factory=dict)
    silent: list[str] = Field(default_factory=list)  # ran, can see attributes, said nothing
    decoded_from: list[str] = Field(default_factory=list)  # encoders a probe reads it from
    image_hotspot: bool | None = None  # saliency's decision-changing hotspot; None: not run
    message: str = ""


def check_ran(cr: Any) -> bool:
    """Whether a report's check entry ran to the end: not skipped, and not an ``error``
    that is a raised exception (which has a reason) rather than an error-severity finding."""
    return cr.status != "skipped" and not (cr.status == "error" and cr.reason)


def _about(check: str, rule: str, metric: str | None, attribute: str, site: str) -> bool:
    if (check, rule) in _SITE_RULES:
        return attribute == site
    return attribute in (metric or "").split(".")


def cross_check(checks: dict[str, Any], attributes: list[str]) -> list[CrossCheck]:
    """One :class:`CrossCheck` per attribute some check flags (warn or fail), in config order.

    ``checks`` maps check names to their report entries (``status``, ``reason``,
    ``findings``, ``params``), as in ``Report.checks``.
    """
    site = (
        str(checks["attribution"].params.get("site_attribute", "site"))
        if ("attribution" in checks)
        else "site"
    )
    saliency = checks.get("saliency")
    hotspot = (
        any(f.rule in _IMAGE_HOTSPOT_RULES and f.severity in _FLAG for f in saliency.findings)
        if saliency is not None and check_ran(saliency)
        else None
    )
    out: list[CrossCheck] = []
    for attribute in attributes:
        cc = CrossCheck(attribute=attribute, image_hotspot=hotspot)
        for name, cr in checks.items():
            if not check_ran(cr):
                continue
            for f in cr.findings:
                kind = _EVIDENCE.get((name, f.rule))
                if kind is None or f.severity not in _FLAG:
                    continue
                if not _about(name, f.rule, f.metric, attribute, site):
                    continue
                getattr(cc, kind).setdefault(name, []).append(f"{f.rule}: {f.metric}")
                layer = (f.metric or "").split(".")[-1]
                probed = name == "probing" and layer in _MODALITY_LAYERS
                if probed and layer not in cc.decoded_from:
                    cc.decoded_from.append(layer)
        if not (cc.encoded or cc.used or cc.differs):
            continue
        flagged = set(cc.encoded) | set(cc.used) | set(cc.differs)
        cc.silent = [
            n
            for n in _ATTRIBUTE_CHECKS
            if n in checks
            and check_ran(checks[n])
            and n not in flagged
            and (n != "attribution" or attribute == site)
        ]
        cc.message = _message(cc)
        out.append(cc)
    ignored = _saliency_on_an_unused_image(checks)
    if ignored is not None:
        out.append(ignored)
    blind = _scan_where_no_map_points(checks)
    if blind is not None:
        out.append(blind)
    return out


def _scan_where_no_map_points(checks: dict[str, Any]) -> CrossCheck | None:
    """A line when saliency's grid scan flags a region (rule ``scan_used``, warn or fail)
    that no trusted map's hotspot box overlaps (``scan.maps_pointed`` 0).

    Why: the scan fills boxes without asking the maps, so its verdict and the maps can
    disagree; when they do, the maps (and every map-based verdict: off-ROI share,
    hotspots, clusters) are blind to a region the model uses, and a reader looking at the
    overlays would see nothing there."""
    saliency = checks.get("saliency")
    if saliency is None or not check_ran(saliency):
        return None
    if not any(f.rule == "scan_used" and f.severity in _FLAG for f in saliency.findings):
        return None
    pointed = _estimate(saliency.metrics.get("scan.maps_pointed"))
    if pointed is None or pointed[0] != 0:
        return None
    where = ""
    row = _estimate(saliency.metrics.get("scan.row"))
    col = _estimate(saliency.metrics.get("scan.col"))
    if row is not None and col is not None:
        where = f" (box centred at {row[0]:.0%} down, {col[0]:.0%} across the image)"
    return CrossCheck(
        attribute="image",
        kind="modality",
        image_hotspot=True,
        message="Saliency's scan found a region that changes decisions where no trusted map"
        f" points{where}: the saliency maps are blind to something the model uses there, so"
        " their pass or their hotspots say nothing about it; read the scan's effect map"
        " (scan_effect_map) and look at that region on the films.",
    )


#: ablation's image share within this of 0 (with a CI that includes 0) reads as "not used"
IGNORED_SHARE = 0.02


def _estimate(metric: Any) -> tuple[float, float | None, float | None] | None:
    """(value, ci_low, ci_high) of a report metric: an ``Estimate``, its JSON dict, or a
    bare number; None when absent or not finite."""
    if metric is None:
        return None
    if isinstance(metric, dict):
        v, lo, hi = metric.get("value"), metric.get("ci_low"), metric.get("ci_high")
    elif hasattr(metric, "value"):
        v, lo, hi = metric.value, getattr(metric, "ci_low", None), getattr(metric, "ci_high", None)
    else:
        v, lo, hi = metric, None, None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    if v != v:  # NaN
        return None
    finite = [x if x is None or x == x else None for x in (lo, hi)]
    return v, finite[0], finite[1]


def _saliency_on_an_unused_image(checks: dict[str, Any]) -> CrossCheck | None:
    """A line when saliency ran on an image that ablation finds the model does not use:
    ablation's ``share.image`` within :data:`IGNORED_SHARE` of 0, with a CI that includes 0.

    Why: saliency's maps are gradients of an input; when removing that input does not move
    the predictions, a saliency pass says "the image is not used", not "no image
    shortcut", and its hotspots describe an input the model ignores. Ablation measures
    the image's effect (a Shapley share with a patient-bootstrap CI); saliency cannot see
    it from its maps, so the cross-check layer puts the two side by side."""
    saliency, ablation = checks.get("saliency"), checks.get("ablation")
    if saliency is None or ablation is None or not (check_ran(saliency) and check_ran(ablation)):
        return None
    est = _estimate(ablation.metrics.get("share.image"))
    if est is None:
        return None
    v, lo, hi = est
    includes_zero = (lo is None or lo <= 0) and (hi is None or hi >= 0)
    if not (abs(v) <= IGNORED_SHARE and includes_zero):
        return None
    ci = f", CI {lo:+.1%} to {hi:+.1%}" if lo is not None and hi is not None else ""
    flagged = sorted({f.rule for f in saliency.findings if f.severity in _FLAG})
    reading = (
        f"saliency's findings ({', '.join(flagged)}) describe maps of an input that barely"
        " moves the predictions; weigh them against ablation"
        if flagged
        else "saliency's pass means the image is not used, not that it holds no shortcut"
    )
    return CrossCheck(
        attribute="image",
        kind="modality",
        image_hotspot=any(r in _IMAGE_HOTSPOT_RULES for r in flagged),
        message=f"Saliency judged an image the model does not use: ablation's image share is"
        f" {v:+.1%}{ci} (share.image), so {reading}.",
    )


def _names(by_check: dict[str, list[str]]) -> str:
    return ", ".join(
        f"{c} ({', '.join(sorted({r.split(':')[0] for r in rules}))})"
        for c, rules in by_check.items()
    )


def _message(cc: CrossCheck) -> str:
    a = cc.attribute
    if cc.used:
        parts = [f"'{a}' is used by the model: {_names(cc.used)}"]
        if cc.encoded:
            parts.append(f"and encoded: {_names(cc.encoded)}")
    elif cc.encoded:
        parts = [
            f"'{a}' is encoded ({_names(cc.encoded)}) but no check finds that the"
            " predictions depend on it"
        ]
    else:
        parts = [
            f"performance differs by '{a}' ({_names(cc.differs)}), though no check"
            " finds it encoded or used"
        ]
    if cc.used and cc.differs:
        parts.append(f"performance differs by it: {_names(cc.differs)}")
    text = "; ".join(parts) + "."
    if cc.decoded_from:
        text += f" Probes decode it from the {', '.join(cc.decoded_from)} encoder output."
    if cc.used and cc.image_hotspot is False:
        where = (
            "a report word or lab column carries it (see attribution)"
            if "attribution" in cc.used
            else "it is global in the image (intensity, noise, sharpness) or lies in"
            " another modality"
        )
        text += (
            " Saliency finds no image hotspot that changes decisions, so saliency maps will"
            f" not show this shortcut: {where}."
        )
    elif cc.used and cc.image_hotspot:
        text += (
            " Saliency also finds an image region whose removal changes decisions: its"
            " overlays (overlays_most_off_roi, the tested box drawn on each film) show whether"
            " that region is this attribute's marker."
        )
    if cc.silent:
        text += f" Ran without flagging it: {', '.join(cc.silent)}."
    return text
