"""Figures of the ``saliency`` check: overlay grids (most confident positives, highest
off-ROI share), mean maps with the tested hotspot boxes, location histograms by attribute,
the randomisation curve, and cluster exemplars."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmaudit.checks.contract import CheckOutput, ThresholdRule
from mmaudit.checks.saliency.clusters import Clusters
from mmaudit.checks.saliency.control_boxes import control_boxes
from mmaudit.checks.saliency.hotspot import Box, Hotspots
from mmaudit.checks.saliency.maps import Maps
from mmaudit.checks.saliency.sanity import SanityResult
from mmaudit.checks.saliency.scan import Scan
from mmaudit.checks.saliency.setting import Setting, signed_score
from mmaudit.checks.saliency.subgroups import Levels
from mmaudit.methods.region_fill import UnfitPeak

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def figures(
    s: Setting,
    main: Maps,
    hot: Hotspots,
    sanity: SanityResult,
    levels: Levels,
    clusters: Clusters,
    scan: Scan | None = None,
    tested: np.ndarray | None = None,
) -> CheckOutput:
    """Overlay grids, mean maps, histograms, randomisation curve, cluster exemplars, and the
    grid scan's effect map beside the lead method's mean map. ``tested``: the rows the
    hotspot test filled (its control boxes are drawn on those overlays only)."""
    import matplotlib

    matplotlib.use("Agg")
    out = CheckOutput()
    trusted = sanity.trusted
    if main.images is None:
        return out
    shown = [m for m in s.methods if m in main.thumbs and m in hot.mean_maps]
    if not shown:
        return out
    lead = hot.method or shown[0]
    assert main.logits is not None
    score = (
        signed_score(main.logits, np.ones(len(main.rows), dtype=np.int64), s.column, "binary")
        if s.kind != "multiclass"
        else main.logits.max(1)
    )
    positives = (
        np.flatnonzero(s.decision(main.logits) == 1)
        if s.kind != "multiclass"
        else np.arange(len(main.rows))
    )
    conf = positives[np.argsort(-score[positives], kind="stable")][:8]
    # overlays are private (withheld under --redact), so they may name the study
    ids = np.asarray(s.ctx.dataset.ids, dtype=object)[np.asarray(main.rows)]
    stat = main.stats[lead][s.stat_key]
    finite = np.flatnonzero(np.isfinite(stat))
    worst = finite[np.argsort(-stat[finite], kind="stable")][:8]
    shown_rows = np.unique(np.concatenate([conf, worst])).astype(int)
    filled = shown_rows if tested is None else shown_rows[np.isin(main.rows[shown_rows], tested)]
    found = control_boxes(s, hot, np.asarray(main.rows)[filled])
    controls = {int(i): found[int(main.rows[i])] for i in shown_rows if int(main.rows[i]) in found}
    marks = OverlayMarks([str(i) for i in ids], dict(hot.candidates), s.size, controls)
    if len(conf):
        out.figures["overlays_confident_positives"] = _overlay_grid(
            main, shown, conf, "most confident positive predictions", trusted, marks
        )
        out.private.add("overlays_confident_positives")
    else:
        out.notes.append(
            "no image row is decided positive: the overlay of the most confident positive"
            " predictions is not drawn"
        )
    if len(worst):
        word = "off-ROI" if s.has_masks else "border"
        out.figures["overlays_most_off_roi"] = _overlay_grid(
            main, shown, worst, f"highest {word} share ({lead})", trusted, marks
        )
        out.private.add("overlays_most_off_roi")
    out.figures["mean_maps"] = _mean_maps(
        hot.mean_maps, main.roi, dict(hot.candidates), s.size, trusted, hot.unfit
    )
    out.figures["location_histograms"] = _histograms(main, s.stat_key, levels, trusted, shown)
    curve = sanity.curve
    if curve is not None and len(curve):
        out.figures["randomisation_curve"] = _randomisation_curve(curve, s.rules["sanity_failed"])
    if scan is not None:
        out.figures["scan_effect_map"] = _scan_effect_map(
            scan, hot.mean_maps.get(lead), lead, main, s.size, trusted
        )
    if len(clusters.table):
        out.figures["cluster_exemplars"] = _cluster_exemplars(main, clusters, lead)
        out.private.add("cluster_exemplars")
    return out


def _overlay(ax: Any, image: np.ndarray, heat: np.ndarray, roi: np.ndarray | None) -> None:
    """Image, its map scaled to the map's maximum (0..1, the colour bars' scale), ROI."""
    top = float(np.max(heat)) if heat.size else 0.0
    ax.imshow(image, cmap="gray")
    ax.imshow(heat / top if top > 0 else heat, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
    if roi is not None and np.isfinite(roi).all() and roi.max() > 0:
        ax.contour(roi, levels=[0.5], colors="white", linewidths=0.6)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_boxes(
    ax: Any,
    boxes: dict[str, Box],
    method: str,
    shape: tuple[int, ...],
    size: tuple[int, int],
    linewidth: float,
    colour: str = "lime",
    style: str = "-",
) -> list[str]:
    """Draw ``method``'s hotspot boxes (image pixels of an image of ``size``; green, or
    ``colour`` and ``style`` for their controls) on an axis showing a map of ``shape``;
    returns their sides ("10x10") in drawing order."""
    from matplotlib.patches import Rectangle

    fy, fx = shape[0] / size[0], shape[1] / size[1]
    sides = []
    for name, (r0, r1, c0, c1) in boxes.items():
        if name.split("_")[0] != method:
            continue
        ax.add_patch(
            Rectangle(
                (c0 * fx - 0.5, r0 * fy - 0.5),
                (c1 - c0) * fx,
                (r1 - r0) * fy,
                fill=False,
                edgecolor=colour,
                linestyle=style,
                linewidth=linewidth,
            )
        )
        sides.append(f"{r1 - r0}x{c1 - c0}")
    return sides


def _label(method: str, trusted: dict[str, bool]) -> str:
    """The method's name, marked when it failed the sanity check."""
    return method if trusted.get(method, True) else f"{method} (untrusted)"


@dataclass(frozen=True)
class OverlayMarks:
    """What the overlay grids label: each map row's study id, the hotspot boxes the
    occlusion test filled (image pixels, by candidate name) on images of ``size``, and per
    shown row the control box each candidate was compared with."""

    ids: list[str]
    boxes: dict[str, Box]
    size: tuple[int, int]
    #: map row -> candidate name -> the control box the occlusion test filled for it
    controls: dict[int, dict[str, Box]] = field(default_factory=dict)


def _overlay_grid(
    main: Maps,
    methods: list[str],
    picks: np.ndarray,
    title: str,
    trusted: dict[str, bool],
    marks: OverlayMarks,
) -> Figure:
    """Rows: methods (untrusted ones marked); columns: the picked samples, titled with their
    study id; image, map, ROI contour and the method's tested hotspot boxes; one colour bar
    for the maps' shared scale."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    assert main.images is not None
    fig, axes = plt.subplots(
        len(methods),
        len(picks),
        figsize=(1.4 * len(picks) + 1.4, 1.4 * len(methods) + 0.7),
        squeeze=False,
    )
    for r, m in enumerate(methods):
        for c, i in enumerate(picks):
            ax = axes[r, c]
            heat = main.thumbs[m][i]
            if not np.isfinite(heat).all():
                heat = np.zeros_like(heat)
            roi = main.roi[i] if main.roi is not None else None
            _overlay(ax, main.images[i], heat, roi)
            _draw_boxes(ax, marks.boxes, m, heat.shape, marks.size, linewidth=0.9)
            _draw_boxes(
                ax,
                marks.controls.get(int(i), {}),
                m,
                heat.shape,
                marks.size,
                linewidth=0.9,
                colour="cyan",
                style="--",
            )
            if r == 0:
                ax.set_title(marks.ids[i][:14], fontsize=7)
            if c == 0:
                ax.set_ylabel(_label(m, trusted), fontsize=8)
    fig.colorbar(
        ScalarMappable(Normalize(0, 1), "jet"),
        ax=axes,
        fraction=0.025,
        pad=0.02,
        label="attribution (each map scaled to its maximum)",
    )
    fig.suptitle(
        title + " (white: ROI; green: hotspot boxes tested; dashed cyan: their controls)",
        fontsize=9,
    )
    return fig


def _mean_maps(
    maps: dict[str, np.ndarray],
    roi: np.ndarray | None,
    boxes: dict[str, Box],
    size: tuple[int, int],
    trusted: dict[str, bool],
    unfit: dict[str, list[UnfitPeak]] | None = None,
) -> Figure:
    """The dataset-mean normalised map per method, mean ROI contour, every hotspot box the
    occlusion test fills (labelled with its size in image pixels), and a cross on each
    off-ROI peak that no box fits."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps), figsize=(2.4 * len(maps), 2.6), squeeze=False)
    for ax, (m, mean) in zip(axes[0], maps.items(), strict=True):
        ax.imshow(mean, cmap="magma")
        if roi is not None and np.isfinite(roi).any():
            ax.contour(np.nanmean(roi, axis=0), levels=[0.5], colors="cyan", linewidths=0.8)
        fy, fx = mean.shape[0] / size[0], mean.shape[1] / size[1]
        sides = _draw_boxes(ax, boxes, m, mean.shape, size, linewidth=1.2)
        for up in (unfit or {}).get(m, []):
            ax.plot(up.col * fx - 0.5, up.row * fy - 0.5, "x", color="red", markersize=6)
        boxed = f"\nbox {', '.join(dict.fromkeys(sides))} px" if sides else ""
        ax.set_title(_label(m, trusted) + boxed, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "mean normalised map (cyan: mean ROI, green: hotspot boxes tested,"
        " red x: off-ROI peak no box fits)",
        fontsize=9,
    )
    return fig


def _histograms(
    main: Maps, key: str, levels: Levels, trusted: dict[str, bool], methods: list[str]
) -> Figure:
    """Histograms of the per-sample off-ROI (or border) share ``key``: one panel per method
    (top row, with chance), and one per method x attribute with a step histogram per
    level."""
    import matplotlib.pyplot as plt

    attrs = list(levels.labels.items())
    fig, axes = plt.subplots(
        1 + len(attrs),
        len(methods),
        figsize=(2.6 * len(methods), 2.3 * (1 + len(attrs))),
        squeeze=False,
    )
    chance = main.stats[methods[0]].get(f"{key}_chance")
    bins = np.linspace(0.0, 1.0, 21)
    for c, m in enumerate(methods):
        v = main.stats[m][key]
        name = _label(m, trusted)
        ax = axes[0, c]
        ax.hist(v[np.isfinite(v)], bins=bins, color="tab:blue", alpha=0.8)
        if chance is not None and np.isfinite(chance).any():
            ax.axvline(float(np.nanmean(chance)), color="k", linestyle="--", linewidth=1)
        ax.set_title(f"{name}: {key} share", fontsize=8)
        for r, (attr, lab) in enumerate(attrs, start=1):
            ax = axes[r, c]
            present = {x for x in lab if x is not None}
            for lev in [x for x in levels.order.get(attr, sorted(present)) if x in present]:
                sel = (lab == lev) & np.isfinite(v)
                if sel.any():
                    ax.hist(v[sel], bins=bins, histtype="step", density=True, label=str(lev))
            ax.set_title(f"{name}: {key} by {attr}", fontsize=8)
            if ax.has_data():
                ax.legend(fontsize=6)
    for ax in axes.ravel():
        ax.tick_params(labelsize=7)
        if not ax.has_data():
            ax.set_visible(False)
    fig.tight_layout()
    return fig


def _randomisation_curve(curve: pd.DataFrame, rule: ThresholdRule) -> Figure:
    """Spearman, SSIM and their per-map minimum (the similarity the trust rule judges)
    between trained and randomised maps as more layers (top first) are randomised."""
    import matplotlib.pyplot as plt

    cols = [("spearman", "Spearman"), ("ssim", "SSIM"), ("similarity", "min(Spearman, SSIM)")]
    fig, axes = plt.subplots(1, 3, figsize=(10.0, 2.8))
    for m, part in curve.groupby("method", sort=False):
        x = [0.0, *part["fraction"]]  # the trained model: identical maps
        for ax, (col, _) in zip(axes, cols, strict=True):
            ax.plot(x, [1.0, *part[col]], marker="o", label=str(m))
    low = min(-0.2, float(curve[[c for c, _ in cols]].min().min()) - 0.05)
    limit = rule.fail_above if rule.warn_above is None else rule.warn_above
    for ax, (col, name) in zip(axes, cols, strict=True):
        ax.set_xlabel("share of image-encoder layers randomised (top first)", fontsize=8)
        ax.set_ylabel(name, fontsize=8)
        ax.set_ylim(low, 1.05)
        ax.axhline(0.0, color="grey", linewidth=0.5)
        if limit is not None and rule.metric.startswith(f"sanity.{col}."):
            ax.axhline(limit, color="red", linestyle="--", linewidth=0.8)
            ax.set_title(f"trust limit {limit:g} on the {rule.statistic}", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.suptitle("model-parameter randomisation (maps should change)", fontsize=9)
    fig.tight_layout()
    return fig


def _cluster_exemplars(main: Maps, clusters: Clusters, method: str) -> Figure:
    """One row per cluster: its mean map and up to four member overlays."""
    import matplotlib.pyplot as plt

    table = clusters.table
    assert main.images is not None
    k = len(table)
    fig, axes = plt.subplots(k, 5, figsize=(7.0, 1.5 * k + 0.4), squeeze=False)
    for r, row in table.iterrows():
        members = np.flatnonzero(clusters.of == row["cluster"])
        mean = np.nanmean(main.thumbs[method][members], axis=0)
        axes[r, 0].imshow(mean, cmap="magma")
        axes[r, 0].set_ylabel(f"c{row['cluster']} ({row['share']:.0%})", fontsize=8)
        for c, i in enumerate(members[:4]):
            roi = main.roi[i] if main.roi is not None else None
            _overlay(axes[r, c + 1], main.images[i], main.thumbs[method][i], roi)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            if not ax.has_data():
                ax.set_visible(False)
    fig.suptitle(f"{method} map clusters (SpRAy): mean map and members", fontsize=9)
    return fig


def scan_effect(scan: Scan, size: tuple[int, int]) -> np.ndarray:
    """Per image pixel, the largest flip excess of the scan boxes covering it (NaN where no
    box does): where filling the image changes decisions beyond random off-ROI fills."""
    effect = np.full(size, -np.inf)
    for (r0, r1, c0, c1), e in zip(scan.boxes, scan.excess, strict=True):
        if np.isfinite(e):
            effect[r0:r1, c0:c1] = np.maximum(effect[r0:r1, c0:c1], e)
    return np.where(np.isfinite(effect), effect, np.nan)


def _scan_effect_map(
    scan: Scan,
    mean: np.ndarray | None,
    method: str,
    main: Maps,
    size: tuple[int, int],
    trusted: dict[str, bool],
) -> Figure:
    """Left: the scan's effect map (per pixel the largest flip excess of a box covering it,
    over the mean image), Holm-significant boxes outlined in red, the judged box thicker.
    Right: the lead method's mean normalised map with the same boxes, so a reader sees
    whether the maps point at what the scan found."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    effect = scan_effect(scan, size)
    panels = 2 if mean is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(3.0 * panels + 0.8, 3.1), squeeze=False)
    ax = axes[0, 0]
    if main.images is not None and len(main.images):
        ax.imshow(np.mean(main.images, axis=0), cmap="gray", extent=(0, size[1], size[0], 0))
    top = max(0.05, float(np.nanmax(np.abs(effect)))) if np.isfinite(effect).any() else 0.05
    im = ax.imshow(
        effect, cmap="RdBu_r", vmin=-top, vmax=top, alpha=0.8, extent=(0, size[1], size[0], 0)
    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="flip excess")
    ax.set_title(
        f"scan: {len(scan.boxes)} boxes, {int(scan.significant.sum())} significant", fontsize=8
    )
    shown = [ax]
    if mean is not None:
        ax2 = axes[0, 1]
        ax2.imshow(mean, cmap="magma", extent=(0, size[1], size[0], 0))
        ax2.set_title(f"mean map: {_label(method, trusted)}", fontsize=8)
        shown.append(ax2)
    for a in shown:
        for j, (r0, r1, c0, c1) in enumerate(scan.boxes):
            if not scan.significant[j] and j != scan.winner:
                continue
            a.add_patch(
                Rectangle(
                    (c0, r0),
                    c1 - c0,
                    r1 - r0,
                    fill=False,
                    edgecolor="red" if scan.significant[j] else "orange",
                    linewidth=2.0 if j == scan.winner else 0.8,
                )
            )
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(
        "off-ROI grid scan (red: Holm-significant boxes, thick: the judged box;"
        " orange: the largest effect, not significant)",
        fontsize=8,
    )
    return fig
