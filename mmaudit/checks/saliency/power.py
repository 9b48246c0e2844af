"""What a saliency pass rules out: the smallest flip excess the hotspot test and the grid
scan detect with power 0.8 at the audited n (``offroi_hotspot.mde_flip``, ``scan.mde_flip``),
and the notes that say so ("a pass means no flip excess larger than X at this n")."""

from __future__ import annotations

import numpy as np

from mmaudit.checks.contract import CheckOutput
from mmaudit.checks.saliency.setting import Setting, has_site
from mmaudit.methods.region_scan import min_detectable_flip


def scan_power_note(
    s: Setting,
    n_rows: int,
    n_pat: int,
    n_boxes: int,
    rate: float,
    mde: float,
    steps: list[float],
    sizes: list[tuple[int, int]],
) -> str:
    """What the scan tested and the smallest effect it can see at this n."""
    p = s.params
    sides = ", ".join(f"{a}x{b} px step {t:.2g}" for (a, b), t in zip(sizes, steps, strict=True))
    power = (
        f"no flip excess larger than {mde:.2f} at this n (power 0.8, one-sided sign test at"
        f" alpha {p.alpha:g} / {n_boxes} boxes; control flip rate {rate:.3f})"
        if np.isfinite(mde)
        else "little: too few patients for any flip excess to reach significance after Holm"
    )
    area = "outside the ROI" if s.has_masks else "in the border band"
    return (
        f"scan: {n_boxes} boxes {area} ({sides} x the side) filled on"
        f" {n_rows} image rows ({n_pat} patients; stratified by label"
        f"{' and site' if has_site(s) else ''}); a pass means {power}"
    )


def hotspot_power(s: Setting, metrics: dict, rows: np.ndarray) -> CheckOutput:
    """``offroi_hotspot.mde_flip``: the smallest flip excess the hotspot test detects with
    power 0.8 at its n (patients among the image ``rows`` it filled), at Holm's first level over its
    candidates (alpha / candidates) and its mean control flip rate, with a note that says
    what a pass rules out. Computed for the exact paired sign test (:func:`min_detectable_flip`),
    which the rule's paired bootstrap matches closely at these sizes. Nothing without
    candidates (there was no test)."""
    out = CheckOutput()
    k = int(metrics.get("hotspot.candidates", 0) or 0)
    rates = [
        metrics[key].value
        for key in metrics
        if key.startswith("occlusion.flip_rate_control.") and np.isfinite(metrics[key].value)
    ]
    if k == 0 or not rates:
        return out
    groups = s.ctx.groups
    n = len(np.unique(groups[rows].astype(str))) if groups is not None else len(rows)
    rate = float(np.mean(rates))
    mde = min_detectable_flip(n, rate, s.params.alpha / k)
    out.metrics["offroi_hotspot.mde_flip"] = mde
    if np.isfinite(mde):
        out.notes.append(
            f"hotspot test: a pass means no hotspot flip excess larger than {mde:.2f} at this n"
            f" ({n} patients; power 0.8 at alpha {s.params.alpha:g} / {k} candidates; control"
            f" flip rate {rate:.3f})"
        )
    return out
