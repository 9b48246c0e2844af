"""How the ``saliency`` check's output reads at a glance: the metrics a reader needs first,
and what its verdict rests on (judged metrics, rows used, coverage notes with counts)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmaudit.checks.contract import ThresholdRule
from mmaudit.checks.findings import count_judged
from mmaudit.checks.saliency.maps import Maps
from mmaudit.checks.saliency.setting import Setting


@dataclass(frozen=True)
class Coverage:
    """What the verdict rests on (the ``CheckOutput`` fields of the same names)."""

    judged: int
    rows_used: int
    skip_reason: str
    coverage: list[str] = field(default_factory=list)


def headline_first(metrics: dict[str, Any], lead: str, worst: Any, stat_key: str) -> dict[str, Any]:
    """``metrics`` with the ones a reader needs first in front (report summaries show the
    first few): the occlusion verdict, how strongly the maps concentrate on the judged
    (``worst``) or the ``lead`` method's hotspot box, the grid scan's verdict, then the
    off-ROI / border share against chance. The area-share excess alone misleads: a marker
    of 1 % of the image cannot move it."""
    first = [
        "offroi_hotspot.flip_excess",
        f"hotspot.enrichment.{worst or lead}",
        "scan.max_flip_excess",
        f"{stat_key}_excess.{lead}",
        f"occlusion.delta_auroc_excess.{worst}",
        f"sanity.similarity.{lead}",
        "n_images",
    ]
    head = {k: metrics[k] for k in first if k in metrics}
    return {**head, **{k: v for k, v in metrics.items() if k not in head}}


def coverage(
    s: Setting, main: Maps, metrics: dict[str, Any], thresholds: dict[str, ThresholdRule]
) -> Coverage:
    """What the verdict rests on: ``judged`` (the excess, hotspot and sanity metrics the
    rules can judge), ``rows_used`` (image rows with maps), and coverage notes with
    counts: rows without an image, and image rows without a usable ROI mask (missing,
    empty, or covering the whole image), which the off-ROI statistics leave out."""
    rows = main.rows
    n = len(s.ds)
    lines = []
    if len(rows) < n:
        lines.append(f"saliency maps for {len(rows)} of {n} rows (the others have no image)")
    masks = _mask_coverage(main) if s.has_masks else None
    if masks is not None:
        lines.append(masks)
    return Coverage(
        judged=count_judged(metrics, thresholds),
        rows_used=len(rows),
        skip_reason="no saliency statistic could be judged (see the notes)",
        coverage=lines,
    )


def _mask_coverage(main: Maps) -> str | None:
    """The coverage note on image rows without a usable ROI mask; None when every mapped
    row has one."""
    rows = main.rows
    # the method whose maps cover the most rows (IG / occlusion run on a subset: NaN
    # elsewhere, which says nothing about the masks)
    with_roi = [st for st in main.stats.values() if "off_roi_chance" in st]
    if not with_roi:
        return None
    st = max(with_roi, key=lambda t: int(np.isfinite(t["mass"]).sum()))
    mapped = np.isfinite(st["mass"])
    valid = mapped & np.isfinite(st["off_roi_chance"])
    if valid.sum() == mapped.sum():
        return None
    why = []
    if main.roi is not None:
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no mask
            area = np.nanmean(main.roi.reshape(len(rows), -1), axis=1)
        bad = mapped & ~valid
        missing = int((bad & ~np.isfinite(area)).sum())
        empty = int((bad & np.isfinite(area) & (area < 0.5)).sum())
        full = int(bad.sum()) - missing - empty
        why = [
            f"{k} {what}"
            for k, what in (
                (empty, "empty"),
                (full, "covering the whole image"),
                (missing, "without a mask"),
            )
            if k
        ]
    k = int(valid.sum())
    return (
        f"{k} of {int(mapped.sum())} image rows have a usable (non-empty) ROI mask"
        + (f" (the others: {', '.join(why)})" if why else "")
        + f"; off-ROI statistics, pointing and rank accuracy use those {k}"
    )
