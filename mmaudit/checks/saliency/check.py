"""Check ``saliency``: image shortcuts -- where the attribution lies, whether the model uses
that region, and whether the saliency method itself can be trusted.

This module holds the check (its parameters, rules and requirements) and the order of its
stages; each stage is a module of this package that takes the :class:`Setting` and the
records earlier stages returned, and hands back its own part of the output."""

from __future__ import annotations

from typing import ClassVar

from mmaudit.checks.contract import (
    AuditContext,
    Check,
    CheckOutput,
    Requirements,
    ThresholdRule,
    merged_thresholds,
    register,
)
from mmaudit.checks.saliency.clusters import cluster_maps
from mmaudit.checks.saliency.faithfulness import faithfulness
from mmaudit.checks.saliency.figures import figures
from mmaudit.checks.saliency.hotspot import find_hotspots
from mmaudit.checks.saliency.hotspot_verdict import offroi_verdict
from mmaudit.checks.saliency.location import location_metrics
from mmaudit.checks.saliency.map_quality import dead_maps, grid_note
from mmaudit.checks.saliency.maps import compute_maps, memory_notes, with_stats
from mmaudit.checks.saliency.occlusion import occlusion_test
from mmaudit.checks.saliency.params import CAMS, SaliencyParams
from mmaudit.checks.saliency.power import hotspot_power
from mmaudit.checks.saliency.sanity import sanity_check
from mmaudit.checks.saliency.scan import scan_offroi
from mmaudit.checks.saliency.setting import image_rows, prepare
from mmaudit.checks.saliency.subgroups import attribute_levels, subgroup_metrics
from mmaudit.checks.saliency.summary import coverage, headline_first
from mmaudit.checks.saliency.tables import per_sample_outputs


@register
class SaliencyCheck(Check):
    """Image saliency at dataset scale: shortcuts found, shown to be used, and sanity-checked.

    What: for the image input (other modalities held at their observed values; their
    encoders replaced by cached outputs) it computes Grad-CAM, HiResCAM and LayerCAM (one
    forward and one backward per batch; LayerCAM on a finer, earlier layer by default),
    and on a seeded subset Integrated Gradients (black / blurred / mean baseline, the
    completeness delta reported) and optionally occlusion maps. Per method: the share of
    positive attribution outside the ROI mask against its chance level (the outside area)
    and against a weight-randomised copy of the model; pointing game and relevance-rank
    accuracy; the share in the image border band (usable without masks); all broken down
    by every attribute, with a permutation test of the gap between levels. Recurring
    hotspots: each method's dataset-mean map, its top-1 % concentration against a shifted-
    map null, and boxes around its sharpest peaks outside the ROI, with each box's share of
    every map's attribution against its area share (enrichment; per attribute level for
    each method's top box; blank maps left out). Each candidate box is
    occluded (linear in-painting with noise, or a donor patch) and compared with a same-
    size random box outside the ROI whose fill changes the image as much: decision flip
    rate, change of the explained logit and AUROC change, paired bootstrap CIs by patient,
    Holm across candidates. SpRAy-style spectral clustering of the maps (cluster count by
    eigengap) gives each cluster's size, label purity and attribute purity. Deletion /
    insertion AUCs on a subset measure faithfulness against a random order. The Adebayo et
    al. (2018) cascading model-parameter randomisation of the image encoder (every method,
    IG included, at every stage; ``sanity_stages: all`` for one layer per stage; Spearman and
    SSIM between trained and randomised maps) says whether a method's maps depend on the
    learned weights at all. The ``sanity_failed`` rule, judged on the CI lower bound of the
    per-map smaller of the two, decides trust: a method it flags loses its p-values and its
    hotspots (the same rule raises the warning, so the two cannot disagree).
    Why: chest X-ray models have learned hospital markers and image edges instead of
    lungs. A saliency map that shows it is a hint; a decision that changes when the region
    is removed, and not when a comparable region is, is evidence; and a map that does not
    change when the weights are scrambled is no evidence at all.
    Metrics (``<m>`` a method; ``<c>`` a candidate: a method, or ``<m>_2``, ``<m>_3`` for
    its next peaks): ``n_images``; ``off_roi.<m>``, ``off_roi_chance``,
    ``off_roi_excess.<m>``, ``off_roi_random.<m>``, ``off_roi_vs_random.<m>``,
    ``pointing.<m>``, ``rank_acc.<m>``; ``border.<m>``, ``border_chance``,
    ``border_excess.<m>``, ``border_random.<m>``, ``concentration.<m>``,
    ``dead_maps.<m>`` (share of blank maps), ``cam_grid.<m>``;
    ``by_attr.<attr>.<level>.<s>.<m>`` and ``subgroup_gap.<attr>.<s>.<m>`` for ``<s>`` in
    off_roi, pointing, rank_acc, border, hotspot_share (p-values Holm-adjusted per ``<s>``
    over attributes x methods), ``by_attr.<attr>.<level>.hotspot_enrichment.<m>``;
    ``ig.delta_abs``, ``ig.delta_rel``;
    ``cam_layer``, ``cam_layer_rule`` (the CAM layer and the rule that chose it: the feature
    map that feeds the global pool, or a token model's last-block norm), ``layercam_layer``;
    ``hotspot.concentration.<m>``, ``hotspot.{row,col,box_mass,in_border,roi_overlap}.<c>``
    (row, col: box centre as a fraction of the side), ``hotspot.{box_rows,box_cols}.<c>``
    (the box actually tested: smaller than the default where the default does not fit) and
    ``hotspot.unfit_peaks.<m>`` (off-ROI peaks no box fits; a note says why; table
    ``hotspot_boxes``), ``hotspot.share.<c>`` and
    ``hotspot.enrichment.<c>`` (share / ``hotspot.box_area``; top boxes and tested
    candidates), ``hotspot.candidates``; ``occlusion.{flip_rate,flip_rate_control,flip_excess,
    delta_logit,delta_logit_excess,delta_auroc,delta_auroc_excess,change_ratio}.<c>``;
    ``offroi_hotspot.flip_excess`` (the worst off-ROI candidate: at most 5 % of the box in
    the ROI) and ``offroi_hotspot.{method,row,col,roi_overlap}``;
    ``scan.{max_flip_excess,delta_logit_excess,flip_rate,flip_rate_control,row,col,box_rows,
    box_cols,boxes_tested,boxes_significant,rows,forward_passes,mde_flip,maps_pointed}`` (the
    off-ROI grid scan: every box filled beside matched random off-ROI boxes, no map needed;
    table ``scan_grid``; see scan.py); ``<u>.{content_associated,content_assoc_with,
    content_assoc_effect,content_assoc_p,content_assoc_tests,content_assoc_words}`` for
    ``<u>`` in offroi_hotspot, scan (the content gate on a flagged box: its pixel mean and
    std per study against the label and every attribute, Kruskal-Wallis with a level-vs-rest
    AUROC or Spearman's rho, Holm over every test of the flagged boxes; see content.py);
    ``clusters.{n,eigengap,candidates}``;
    ``deletion_auc.<m|random>``, ``insertion_auc.<m|random>``,
    ``deletion_gain.<m>``, ``insertion_gain.<m>``; ``sanity.{spearman,ssim,similarity,
    trusted}.<m>``, ``sanity.layers``, ``sanity.stages``.
    Default thresholds: fail when occluding an off-ROI hotspot (the border band without
    masks) flips over 5 % more decisions than its control (Holm-adjusted p < 0.05), or when
    a box of the grid scan does (Holm over the grid), and the box's content differs by the
    label or an audited attribute (content gate, params ``content_max_p`` 0.05 Holm,
    ``content_min_auroc_gap`` 0.1 = AUROC outside 0.4-0.6, ``content_min_rho`` 0.1); a
    flagged box whose content does not differ (anatomy that looks alike in every study) is
    not judged, and a note says the model relies on it; warn
    when the off-ROI share exceeds chance by over 0.05, or the border share by over 0.10
    (Holm-adjusted p < 0.05); warn when the CI lower bound of a method's similarity to the
    fully randomised model's maps (per map the smaller of Spearman and SSIM) is over 0.5
    (failed sanity check; the method is then untrusted).
    """

    name = "saliency"
    description = (
        "Grad-CAM/HiResCAM/LayerCAM/IG: off-ROI and border mass, hotspot occlusion, SpRAy"
        " clusters, deletion/insertion, model-randomisation sanity check"
    )

    class Params(SaliencyParams):
        # the fields, their defaults and limits: params.py (the stages read them from there)
        pass

    default_thresholds: ClassVar[dict[str, ThresholdRule]] = {
        "hotspot_used": ThresholdRule(
            metric="offroi_hotspot.flip_excess",
            fail_above=0.05,
            max_p=0.05,
            message="occluding the off-ROI hotspot flips decisions beyond a same-size control"
            " region: the model uses it (which box: the offroi_hotspot note;"
            " offroi_hotspot.method, .row, .col); judged only when the box's content differs"
            " by label or an attribute (params.content_gate; offroi_hotspot.content_*),"
            " else a note",
            found="Covering the box at {m[offroi_hotspot.where]}, outside the region of"
            " interest, where the {m[offroi_hotspot.method]} maps concentrate, changes the"
            " model's decisions more than covering a same-size control box: the model relies"
            " on what is in that box",
            next_step="open the overlays (the box is drawn on each film, its control beside it)"
            " to see what sits there: a corner marker, burnt-in text, a tube; if it is not"
            " anatomy, crop or in-paint it in the training images, retrain, re-audit and"
            " compare the two reports with `mmaudit diff`",
            evidence="covering the box flips a share {m[offroi_hotspot.flip_rate]} of"
            " decisions, its control box {m[offroi_hotspot.flip_rate_control]}; the box's"
            " content {m[offroi_hotspot.content_assoc_words]}",
            figure="overlays_most_off_roi",
        ),
        "off_roi_above_chance": ThresholdRule(
            metric="off_roi_excess.*",
            warn_above=0.05,
            max_p=0.05,
            message="saliency lies outside the ROI more than chance",
            found="The {0} saliency maps put more of the model's attention outside the region"
            " of interest than chance would",
            next_step="look at the overlays for what the maps point at outside the region; if"
            " it is a marker or text, crop or in-paint it in the training images, retrain and"
            " re-audit",
            figure="overlays_most_off_roi",
        ),
        "border_above_chance": ThresholdRule(
            metric="border_excess.*",
            warn_above=0.10,
            max_p=0.05,
            message="saliency lies in the image border band more than chance",
            found="The {0} saliency maps put more of the model's attention on the image border,"
            " where markers and labels sit, than chance would",
            next_step="look at the mean maps for which edge or corner; crop the border or"
            " in-paint what is there in the training images, retrain and re-audit",
            figure="mean_maps",
        ),
        "sanity_failed": ThresholdRule(
            metric="sanity.similarity.*",
            warn_above=0.5,
            statistic="ci_low",
            message="maps barely change when the model's weights are randomised: this"
            " method's saliency findings cannot be trusted",
            found="The {0} saliency maps barely change when the model's weights are"
            " randomised, so they do not show what the model learned",
            next_step="do not read the {0} maps or their findings; rely on the methods that"
            " pass this test",
            figure="randomisation_curve",
        ),
        "scan_used": ThresholdRule(
            metric="scan.max_flip_excess",
            fail_above=0.05,
            max_p=0.05,
            message="filling the strongest box of the off-ROI grid scan flips decisions"
            " beyond matched random off-ROI boxes (Holm over the grid): the model uses it,"
            " whether or not a map points there (scan.row, .col, .box_rows, .box_cols);"
            " judged only when the box's content differs by label or an attribute"
            " (params.content_gate; scan.content_*), else a note",
            found="Covering the box at {m[scan.where]}, outside the region of interest"
            " (found by scanning a grid of boxes, not by the saliency maps), changes the"
            " model's decisions more than covering random boxes of the same size there: the"
            " model relies on what is in it",
            next_step="open the scan's effect map (the box outlined beside the mean saliency"
            " map) and look at that place on a few films; if it is not anatomy, crop or"
            " in-paint it in the training images, retrain, re-audit and compare the two"
            " reports with `mmaudit diff`",
            evidence="covering the box flips a share {m[scan.flip_rate]} of decisions, random"
            " boxes of its size {m[scan.flip_rate_control]}; {m[scan.boxes_tested]} boxes"
            " tested; the box's content {m[scan.content_assoc_words]}",
            figure="scan_effect_map",
        ),
    }
    requires: ClassVar[Requirements] = Requirements(any_modality=["image"])
    key_figures: ClassVar[tuple[str, ...]] = (
        "overlays_most_off_roi",
        "mean_maps",
        "scan_effect_map",
    )

    # ------------------------------------------------------------------ requirements
    def missing_requirements(self, ctx: AuditContext) -> str | None:
        reason = super().missing_requirements(ctx)
        if reason is not None:
            return reason
        p: SaliencyCheck.Params = self.params  # type: ignore[assignment]
        if not p.methods:
            return "params.methods is empty"
        if not set(p.methods) - set(CAMS):
            if not ctx.adapter.supports_hooks:
                return "CAM methods need layer hooks, which a TorchScript model does not allow"
            if (p.layer or ctx.adapter.layers.get("gradcam")) is None:
                return (
                    "no conv / token layer to hook for CAM methods (set model.layers.gradcam, or"
                    " add 'ig' to params.methods)"
                )
        if not ctx.dataset.present[:, ctx.dataset.modalities.index("image")].any():
            return "no audited row has an image"
        return None

    # ------------------------------------------------------------------ run
    def run(self, ctx: AuditContext) -> CheckOutput:
        """The stages in order -- maps, their quality, sanity and trust, location, hotspots,
        subgroups, the occlusion proof, clusters, faithfulness, per-sample outputs, figures
        -- each returning its part of the output, merged here in that order (metric, note,
        finding and table order is part of the report); then the headline metrics first and
        what the verdict rests on."""
        p: SaliencyParams = self.params  # type: ignore[assignment]
        out = CheckOutput()
        rows = image_rows(ctx)
        out.metrics["n_images"] = len(rows)
        out.judged, out.rows_used = 0, 0
        if len(rows) < 2:
            out.notes.append("fewer than 2 rows have an image: nothing to attribute")
            out.skip_reason = (
                f"fewer than 2 rows have an image ({len(rows)} of {len(ctx.dataset)}):"
                " nothing to attribute"
            )
            return out
        cc = ctx.config.checks.get("saliency")
        rules = merged_thresholds(SaliencyCheck, cc.thresholds if cc else {}, "checks.saliency")
        s, layer_choice = prepare(ctx, p, rows, rules)
        out.extend(layer_choice)
        if not s.methods:
            out.notes.append("no saliency method could run (see the notes above)")
            out.skip_reason = "no saliency method could run (see the notes)"
            return out
        main = compute_maps(s)
        out.extend(dead_maps(s, main))
        out.extend(grid_note(s, main))
        sanity, part = sanity_check(s, main)
        out.extend(part)
        trusted = sanity.trusted
        out.extend(location_metrics(s, main, sanity))
        hot, part = find_hotspots(s, main, trusted)
        out.extend(part)
        # each method's share in its top hotspot box is a location statistic from here on
        main = with_stats(main, {m: {"hotspot_share": v} for m, v in hot.top_share.items()})
        levels = attribute_levels(s, main)
        out.extend(subgroup_metrics(s, main, levels, trusted, hot.box_chance))
        occ, part = occlusion_test(s, main, hot, trusted)
        out.extend(part)
        if occ is not None:
            out.extend(offroi_verdict(s, hot, occ, out.metrics, levels, trusted))
            out.extend(hotspot_power(s, out.metrics, occ.rows))
        scan, part = scan_offroi(s, main, hot, trusted)
        out.extend(part)
        clusters, part = cluster_maps(s, main, hot.method, levels)
        out.extend(part)
        out.extend(faithfulness(s, main))
        out.extend(per_sample_outputs(s, main, levels, occ, clusters))
        tested = occ.rows if occ is not None else None
        out.extend(figures(s, main, hot, sanity, levels, clusters, scan, tested))
        out.notes.extend(memory_notes(s))
        lead = hot.method or s.methods[0]
        worst = out.metrics.get("offroi_hotspot.method")
        out.metrics = headline_first(out.metrics, lead, worst, s.stat_key)
        cov = coverage(s, main, out.metrics, self.default_thresholds)
        out.judged, out.rows_used, out.skip_reason = cov.judged, cov.rows_used, cov.skip_reason
        out.coverage.extend(cov.coverage)
        return out
