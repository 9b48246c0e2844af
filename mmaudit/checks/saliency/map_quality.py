"""What the maps themselves say before any statistic is read from them: the share of blank
maps per method, the completeness of Integrated Gradients, and CAM grids too coarse for the
hotspot box."""

from __future__ import annotations

import numpy as np

from mmaudit.checks.contract import CheckOutput, Finding
from mmaudit.checks.saliency.maps import Maps
from mmaudit.checks.saliency.setting import Setting


def dead_maps(s: Setting, main: Maps) -> CheckOutput:
    """``dead_maps.<m>``: the share of blank maps (no positive value: a CAM all zero
    after its ReLU, no positive evidence for the explained class at that layer). Blank
    maps have no location, so every location statistic, mean map, hotspot share and
    cluster leaves them out; a note says how many and for which explained class. Then
    ``ig.delta_abs`` / ``ig.delta_rel`` / ``ig.n``: the IG completeness gap."""
    out = CheckOutput()
    for m in s.methods:
        mass = main.stats[m]["mass"]
        have = np.isfinite(mass)
        if not have.any():
            continue
        dead = float(np.mean(mass[have] <= 0))
        out.metrics[f"dead_maps.{m}"] = dead
        if 0 < dead < 1:
            blank = have & (mass <= 0)
            cls = s.cls_all[main.rows]
            names = list(s.ctx.dataset.class_names)
            by_cls = ", ".join(
                f"{int((blank & (cls == c)).sum())} of {int((have & (cls == c)).sum())}"
                f" explaining class {names[int(c)] if int(c) < len(names) else c}"
                for c in np.unique(cls[have])
            )
            out.notes.append(
                f"{dead:.1%} of {m} maps are blank (zero everywhere: no positive evidence"
                f" for the explained class; {by_cls}); location statistics, mean maps,"
                " hotspot shares and clusters leave them out"
            )
        if dead == 1.0:
            out.findings.append(
                Finding(
                    check="saliency",
                    rule="dead_maps",
                    severity="warn",
                    message=f"Every {m} saliency map is blank, so {m} cannot say where the"
                    " model looks",
                    evidence=f"{dead:.0%} of the {m} maps are zero everywhere",
                    next_step=f"the layer {m} reads has no gradient (a frozen or"
                    " non-differentiable part, or a ReLU that cuts every signal); pick another"
                    " layer for it, or read the other methods",
                    detail=f"every {m} map is zero (dead gradients at its layer): its"
                    " location statistics cannot be computed",
                    metric=f"dead_maps.{m}",
                    value=dead,
                )
            )
    if main.ig_delta is not None:
        d, gap = main.ig_delta, main.ig_gap
        assert gap is not None
        ok = np.isfinite(d)
        if ok.any():
            rel = np.abs(d[ok]) / np.maximum(gap[ok], 1e-6)
            out.metrics["ig.delta_abs"] = float(np.median(np.abs(d[ok])))
            out.metrics["ig.delta_rel"] = float(np.median(rel))
            out.metrics["ig.n"] = int(ok.sum())
            if float(np.median(rel)) > 0.05:
                out.notes.append(
                    f"IG completeness: median |delta| is {np.median(rel):.1%} of"
                    f" |f(x) - f(baseline)|; raise params.ig_steps for tighter maps"
                )
    return out


def grid_note(s: Setting, main: Maps) -> CheckOutput:
    """``cam_grid.<m>`` (rows x cols of the CAM layer) and a note for CAM methods whose
    grid cell is larger than the hotspot box: their maps are a bilinear blur of a few
    cells, so their hotspot boxes cannot single out a region smaller than a cell (on a
    small image they settle on the border next to the ROI)."""
    out = CheckOutput()
    h, w = s.size
    bh = max(1, round(s.params.hotspot_size * h))
    bw = max(1, round(s.params.hotspot_size * w))
    coarse: dict[tuple[int, int], list[str]] = {}
    for m, (gh, gw) in main.cam_grid.items():
        out.metrics[f"cam_grid.{m}"] = f"{gh}x{gw}"
        if h / gh > bh or w / gw > bw:
            coarse.setdefault((gh, gw), []).append(m)
    for (gh, gw), names in coarse.items():
        out.notes.append(
            f"{', '.join(names)}: maps from a {gh}x{gw} grid (cells of"
            f" {h / gh:.0f}x{w / gw:.0f} px), coarser than the {bh}x{bw} px hotspot box:"
            " their hotspot boxes cannot single out a region smaller than a cell; read"
            " hotspots from the finer methods (ig, occlusion, layercam)"
        )
    return out
