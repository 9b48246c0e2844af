"""Stage 3 of ``subgroups``: the analysed groups published as flat metrics -- every group's
metrics with their CIs (a group too small to judge is a note-level finding), and every
gap with its Holm-corrected permutation p."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from mmaudit.checks.contract import Finding, MetricValue
from mmaudit.checks.subgroups.analysis import GroupResult
from mmaudit.checks.subgroups.group_metrics import GAP_METRICS
from mmaudit.methods.stats import Estimate, adjust_pvalues, percentile_interval

# the gaps the default rules judge: the family Holm corrects across
HOLM_FAMILY: tuple[str, ...] = ("auroc", "eod", "ece")


@dataclass(frozen=True)
class PublishedGroups:
    """One attribute's per-group metrics, its small-group findings and its notes, in the
    order the check writes them."""

    metrics: dict[str, MetricValue] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def publish_groups(
    res: GroupResult, kind: str, *, alpha: float, n_boot: int, check: str
) -> PublishedGroups:
    """``group.<attr>.<group>.{n,prevalence,auroc,tpr,fpr,ece}`` (each metric with its
    percentile CI; left out when neither the value nor any resample is finite) and
    ``small_groups.<attr>``; a note-level finding for every group too small to judge, and a
    note when fewer than two groups can be compared."""
    out = PublishedGroups()
    name = res.grouping.attribute
    small = 0
    for g, key in enumerate(res.grouping.keys):
        base = f"group.{name}.{key}"
        out.metrics[f"{base}.n"] = res.n[g]
        if kind == "binary":
            out.metrics[f"{base}.prevalence"] = res.n_pos[g] / res.n[g] if res.n[g] else None
        for m in GAP_METRICS:
            if not np.isfinite(res.values[m][g]) and not np.isfinite(res.boot[m][:, g]).any():
                continue
            lo, hi = percentile_interval(res.boot[m][:, g], alpha, n_boot / 2) or (
                None,
                None,
            )
            out.metrics[f"{base}.{m}"] = Estimate(float(res.values[m][g]), lo, hi, res.n[g])
        if not res.judged[g]:
            small += 1
            out.findings.append(
                Finding(
                    check=check,
                    rule="small_group",
                    severity="note",
                    message=(
                        f"The {name} = {res.grouping.labels[g]} group is too small to judge"
                        " fairly, so it is shown but left out of the group comparisons"
                    ),
                    evidence=f"{res.n[g]} rows: {res.reasons[g]}",
                    next_step=(
                        f"add audit cases of {name} = {res.grouping.labels[g]}, or lower"
                        " checks.subgroups.params.min_group_size / min_class_size knowing"
                        " the comparison gets noisier"
                    ),
                    detail=(
                        f"{name} = {res.grouping.labels[g]}: too small to judge"
                        f" ({res.reasons[g]}); shown, left out of the gaps"
                    ),
                    figure="group_metrics",
                    metric=f"{base}.n",
                    value=float(res.n[g]),
                )
            )
    out.metrics[f"small_groups.{name}"] = small
    if sum(res.judged) < 2:
        out.notes.append(f"{name}: fewer than two groups large enough to judge; no gaps computed")
    return out


def holm_corrected(results: list[GroupResult]) -> list[GroupResult]:
    """The results with every gap's ``null_p`` replaced by its Holm-corrected permutation p.

    The default rules ask for that p below 0.05 *and* the gap's CI above zero
    (``max_p`` and ``ci_low_above``): the gap beats what shuffled groups give, and it is
    not a resampling accident. Holm runs across the gaps the default rules judge -- the
    AUROC gap, the equalised-odds difference and the ECE gap of every attribute. The
    TPR and FPR gaps are the two parts of the equalised-odds difference: they carry its
    corrected permutation p rather than adding two more tests to the family.
    """
    keys = [(i, m) for i, r in enumerate(results) for m in HOLM_FAMILY if m in r.gaps]
    adjusted = adjust_pvalues(
        [
            math.nan if results[i].gaps[m].null_p is None else results[i].gaps[m].null_p
            for i, m in keys
        ],
        "holm",
    )
    holm = [dict(r.holm_p) for r in results]
    for (i, m), p_adj in zip(keys, adjusted, strict=True):
        holm[i][m] = None if math.isnan(p_adj) else float(p_adj)
    corrected: list[GroupResult] = []
    for res, holm_p in zip(results, holm, strict=True):
        gaps: dict[str, Estimate] = {}
        for m, e in res.gaps.items():
            if m in ("tpr", "fpr"):
                holm_p[m] = holm_p.get("eod")
            gaps[m] = Estimate(e.value, e.ci_low, e.ci_high, e.n, holm_p.get(m))
        corrected.append(replace(res, gaps=gaps, holm_p=holm_p))
    return corrected


def gap_metrics(results: list[GroupResult]) -> dict[str, MetricValue]:
    """``gap.{auroc,tpr,fpr,ece}.<attr>`` and ``eod.<attr>``, attribute by attribute."""
    metrics: dict[str, MetricValue] = {}
    for res in results:
        name = res.grouping.attribute
        for m, e in res.gaps.items():
            metrics[f"eod.{name}" if m == "eod" else f"gap.{m}.{name}"] = e
    return metrics


def extrapolation_note(results: list[GroupResult], n_permutations: int) -> str | None:
    """The note that gap p-values below what ``n_permutations`` shuffles resolve are
    extrapolated, when any is; else None."""
    floor = 1 / (n_permutations + 1)
    if any(e.null_p is not None and e.null_p < floor for r in results for e in r.gaps.values()):
        return (
            f"gap p-values below 1/(B+1) = {floor:.2g} (no shuffled gap reached the"
            " observed one) are extrapolated from a normal fit to the permutation null so"
            " that Holm can reach 0.05; read them as"
            f" 'p < {floor:.1g}', not as their digits"
        )
    return None
