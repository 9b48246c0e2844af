"""Check ``subgroups``: who the model fails -- performance per patient / site group and the
gaps between groups, with uncertainty.

The check class and the order of its stages: the operating threshold
(``operating_point``), each attribute's groups and rows (``grouping``), their comparison
(``analysis``), the published metrics with Holm-corrected gaps (``publish``), what the
verdict rests on (``coverage``), then ``tables`` and ``figures``."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, FiniteFloat

from mmaudit.checks.contract import (
    AuditContext,
    Check,
    CheckOutput,
    Requirements,
    ThresholdRule,
    register,
)
from mmaudit.checks.findings import count_judged
from mmaudit.checks.subgroups.analysis import GroupResult, analyse_groups
from mmaudit.checks.subgroups.coverage import coverage
from mmaudit.checks.subgroups.figures import group_metrics_figure, roc_figure
from mmaudit.checks.subgroups.grouping import split_attribute
from mmaudit.checks.subgroups.operating_point import (
    OperatingPoint,
    operating_threshold,
    positive_score,
    probabilities,
)
from mmaudit.checks.subgroups.publish import (
    extrapolation_note,
    gap_metrics,
    holm_corrected,
    publish_groups,
)
from mmaudit.checks.subgroups.tables import gap_table, group_table


def _increasing_edges(edges: list[float]) -> list[float]:
    """``params.bins`` edges as ``data.attributes.*.bins`` takes them: at least one, strictly
    increasing (a typo such as [40, 60, 6] would otherwise sort rows into other groups)."""
    if not edges:
        raise ValueError("give the bin edges, e.g. [40, 60, 75], or leave the attribute out")
    if any(lo >= hi for lo, hi in zip(edges, edges[1:], strict=False)):
        shown = ", ".join(f"{e:g}" for e in edges)
        raise ValueError(f"must be increasing edges, got [{shown}]")
    return edges


@register
class SubgroupsCheck(Check):
    """Performance per attribute group and the gaps between groups, with bootstrap CIs.

    What: for each attribute in ``data.attributes`` (continuous ones binned by
    ``data.attributes.<name>.bins``, ``params.bins`` or quartiles) and each of its groups:
    sample count, prevalence, AUROC, TPR and FPR at one global operating threshold (a target
    FPR, Youden's J, or a fixed probability, chosen on all rows), and calibration (ECE),
    each with a bootstrap CI (resampling patients). Per attribute: the gap between the best
    and worst group for each metric and the equalised-odds difference (the larger of the TPR
    and FPR gaps), with bootstrap CIs and permutation p-values (group labels shuffled by
    patient: the best-minus-worst gap of k groups is positive even when they do not differ)
    Holm-corrected across the judged gaps. Optional
    resampling of each group to the overall prevalence (Glocker et al., 2023), so that gaps
    are not prevalence differences in disguise.
    Why: a model can be good on average and fail a site, a sex or an age band; a gap is
    only a finding when its CI excludes zero and it beats what shuffled groups give, and a
    group of a handful of patients is reported, not judged.
    Metrics: ``group.<attr>.<group>.{n,prevalence,auroc,tpr,fpr,ece}``;
    ``gap.{auroc,tpr,fpr,ece}.<attr>`` and ``eod.<attr>`` (null_p: the Holm-corrected
    permutation p); ``operating_threshold``; ``small_groups.<attr>``.
    Default thresholds (each needs both the CI of the gap above zero, ``ci_low_above: 0``,
    and the Holm-corrected permutation p below 0.05, ``max_p``; an intersection-union
    test): AUROC gap warn > 0.05, fail > 0.10;
    equalised-odds difference warn > 0.10, fail > 0.20; ECE gap warn > 0.05. A group too
    small to judge is a note, not a verdict.
    """

    name = "subgroups"
    description = "per-group AUROC / TPR / FPR / ECE with CIs; gaps and equalised odds"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        attributes: list[str] | None = Field(
            default=None, description="attributes to split by (default: every data.attributes)"
        )
        operating_point: OperatingPoint = Field(
            default="youden", description="global threshold: youden, target_fpr or fixed"
        )
        target_fpr: float = Field(
            default=0.1, gt=0, lt=1, description="FPR of the target_fpr operating point"
        )
        threshold: float = Field(
            default=0.5, gt=0, lt=1, description="probability of the fixed operating point"
        )
        bins: dict[str, Annotated[list[FiniteFloat], AfterValidator(_increasing_edges)]] = Field(
            default={},  # pydantic copies mutable defaults per instance
            description="bin edges per continuous attribute (overrides data.attributes.*.bins)",
        )
        quantile_bins: int = Field(
            default=4, ge=2, description="quantile bins for continuous attributes without edges"
        )
        max_groups: int = Field(
            default=20, ge=2, description="attributes with more groups are skipped (noted)"
        )
        min_group_size: int = Field(
            default=20, ge=2, description="smaller groups are reported, not judged"
        )
        min_class_size: int = Field(
            default=5, ge=1, description="... as are groups with fewer positives or negatives"
        )
        equal_prevalence: bool = Field(
            default=False, description="resample each group to the overall prevalence"
        )
        n_boot: int = Field(default=1000, ge=50, description="bootstrap resamples for CIs")
        n_permutations: int = Field(
            default=1000, ge=50, description="group-label permutations for the gap p-values"
        )
        alpha: float = Field(default=0.05, gt=0, lt=1, description="1 - CI level")
        ece_bins: int = Field(default=10, ge=2, description="bins of the calibration error")

    default_thresholds: ClassVar[dict[str, ThresholdRule]] = {
        "auroc_gap": ThresholdRule(
            metric="gap.auroc.*",
            warn_above=0.05,
            fail_above=0.10,
            max_p=0.05,
            ci_low_above=0.0,
            message="AUROC differs between groups (CI above zero, beyond shuffled groups)",
            found="The model tells positive from negative cases less well for some {0} groups"
            " than for others",
            next_step="see which {0} group is worst in the group metrics; look for a shortcut"
            " tied to {0} (probing, saliency) or too few training cases of that group, fix"
            " it, retrain and re-audit",
            figure="group_metrics",
        ),
        "equalised_odds": ThresholdRule(
            metric="eod.*",
            warn_above=0.10,
            fail_above=0.20,
            max_p=0.05,
            ci_low_above=0.0,
            message="error rates at the operating threshold differ between groups"
            " (equalised-odds difference)",
            found="At its decision threshold the model misses disease or raises false alarms"
            " at different rates in different {0} groups",
            next_step="compare the true- and false-positive rates per {0} group; remove the"
            " cause (a shortcut tied to {0}, too few cases of one group) and retrain, or,"
            " where that is allowed, set a threshold per group; re-audit",
            figure="roc",
        ),
        "ece_gap": ThresholdRule(
            metric="gap.ece.*",
            warn_above=0.05,
            max_p=0.05,
            ci_low_above=0.0,
            message="calibration differs between groups",
            found="The model's probabilities match the observed rates worse for some {0}"
            " groups than for others",
            next_step="recalibrate on held-out data per {0} group (Platt scaling or isotonic"
            " regression), or remove the cause and retrain; re-audit",
            figure="group_metrics",
        ),
    }
    requires: ClassVar[Requirements] = Requirements()
    key_figures: ClassVar[tuple[str, ...]] = ("group_metrics",)

    def run(self, ctx: AuditContext) -> CheckOutput:
        p: SubgroupsCheck.Params = self.params  # type: ignore[assignment]
        out = CheckOutput()
        kind = ctx.config.data.target.kind
        y = ctx.target
        prob = probabilities(ctx.cache.sweep().logits, kind)
        threshold = math.nan
        if kind == "binary":
            threshold = operating_threshold(
                y, positive_score(prob), p.operating_point, p.target_fpr, p.threshold
            )
            out.metrics["operating_threshold"] = threshold
            out.notes.append(
                f"TPR / FPR at one global threshold {threshold:.3f} ({p.operating_point},"
                " chosen on all audited rows)"
            )
        else:
            out.notes.append(f"{kind} target: AUROC and ECE per group; no TPR / FPR / EOD")
        frame = ctx.dataset.attributes
        names = list(frame.columns) if p.attributes is None else list(p.attributes)
        if not names:
            out.notes.append("no data.attributes configured: no groups to compare")
        results: list[GroupResult] = []
        unjudged: dict[str, str] = {}  # attribute -> why no gap, with its counts
        for name in names:
            split = split_attribute(
                name,
                frame,
                ctx.config.data.attributes,
                bins=p.bins,
                quantile_bins=p.quantile_bins,
                max_groups=p.max_groups,
                equal_prevalence=p.equal_prevalence,
                target_kind=kind,
                y=y,
                rng_for=ctx.rng,
            )
            out.notes.extend(split.notes)
            if split.grouping is None:
                unjudged[name] = str(split.skipped)
                continue
            res = analyse_groups(
                split.grouping,
                y,
                prob,
                ctx.groups,
                kind,
                threshold,
                rows=split.rows,
                n_boot=p.n_boot,
                n_permutations=p.n_permutations,
                alpha=p.alpha,
                ece_bins=p.ece_bins,
                min_group_size=p.min_group_size,
                min_class_size=p.min_class_size,
                seed=ctx.seed,
            )
            results.append(res)
            published = publish_groups(res, kind, alpha=p.alpha, n_boot=p.n_boot, check=self.name)
            out.metrics.update(published.metrics)
            out.findings.extend(published.findings)
            out.notes.extend(published.notes)
        results = holm_corrected(results)
        out.metrics.update(gap_metrics(results))
        out.judged = count_judged(out.metrics, self.default_thresholds)
        covered = coverage(
            results,
            unjudged,
            n_rows=len(y),
            kind=kind,
            judged=out.judged,
            min_group_size=p.min_group_size,
            min_class_size=p.min_class_size,
        )
        out.rows_used, out.skip_reason = covered.rows_used, covered.skip_reason
        out.coverage.extend(covered.notes)
        note = extrapolation_note(results, p.n_permutations)
        if note is not None:
            out.notes.append(note)
        if results:
            out.tables["groups"] = group_table(results, p.n_boot, p.alpha)
            if any(r.gaps for r in results):  # an empty table is no table
                out.tables["gaps"] = gap_table(results)
            out.figures["group_metrics"] = group_metrics_figure(
                results, p.n_boot, p.alpha, kind, p.n_permutations
            )
            if kind == "binary":
                out.figures["roc"] = roc_figure(results, y, positive_score(prob), threshold)
        if ctx.groups is not None:
            out.notes.append(
                f"CIs resample {len(np.unique(ctx.groups))} patients, not {len(y)} rows"
            )
        return out
