"""The probing check's probes of the audited model: every attribute on every layer, with a
bootstrap CI, a permutation p-value Holm-corrected across the attribute x layer family and
a control task -- beyond the target when the target allows -- and the plain (marginal)
probe beside each one beyond the target. Also the rule that calls an attribute encoded."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from mmaudit.checks.contract import CheckOutput
from mmaudit.checks.probing.records import Attribute, ProbeRow, layer_key
from mmaudit.methods.probe_bootstrap import score_estimate
from mmaudit.methods.probe_result import ProbeError, ProbeResult
from mmaudit.methods.probes import run_probe
from mmaudit.methods.stats import Estimate, adjust_pvalues

if TYPE_CHECKING:
    from mmaudit.checks.contract import AuditContext
    from mmaudit.checks.probing.check import ProbingCheck


def probe_attribute(
    ctx: AuditContext,
    p: ProbingCheck.Params,
    x: np.ndarray,
    attr: Attribute,
    permutations: int = 0,
    control: bool = True,
    marginal: bool = False,
    rows: np.ndarray | None = None,
) -> ProbeResult:
    """One probe; ``permutations`` 0 skips the null and the control task, ``control``
    False only the control task (the random-weights baseline). Beyond the target (within
    target classes) when ``target_classes`` gives classes, unless ``marginal``. ``rows``:
    the dataset rows ``x`` and ``attr`` stand for (a subset; default every row)."""
    groups = _rows_of(ctx.groups, rows)
    groups = groups[attr.known] if groups is not None else None
    classes = None if marginal or not attr.beyond_target else target_classes(ctx, p)
    classes = _rows_of(classes, rows)
    return run_probe(
        x[attr.known],
        attr.values,
        attr.kind,  # type: ignore[arg-type]
        groups=groups,
        n_folds=p.n_folds,
        inner_folds=p.inner_folds,
        n_permutations=permutations,
        n_control=p.n_control if permutations and control else 0,
        seed=ctx.seed,
        within=classes[attr.known] if classes is not None else None,
    )


def target_classes(ctx: AuditContext, p: ProbingCheck.Params) -> np.ndarray | None:
    """The target class per row when probes go beyond the target (``within_target`` and a
    binary / multiclass target), else None (plain probes)."""
    if not p.within_target or ctx.config.data.target.kind not in ("binary", "multiclass"):
        return None
    return np.asarray(ctx.target)


def probe_estimate(
    ctx: AuditContext,
    p: ProbingCheck.Params,
    result: ProbeResult,
    attr: Attribute,
    rows: np.ndarray | None = None,
) -> Estimate:
    """The probe score with its bootstrap CI, patients drawn whole (``rows``: as in
    :func:`probe_attribute`)."""
    groups = _rows_of(ctx.groups, rows)
    groups = groups[attr.known] if groups is not None else None
    return score_estimate(result, groups, p.n_boot, p.alpha, ctx.seed)


def _rows_of(values: np.ndarray | None, rows: np.ndarray | None) -> np.ndarray | None:
    """``values`` (one per dataset row) at ``rows``; all of them when ``rows`` is None."""
    if values is None or rows is None:
        return values
    return np.asarray(values)[rows]


def is_encoded(row: ProbeRow, p: ProbingCheck.Params) -> bool:
    """Verdict rule "encoded": Holm p < alpha and the probe score at the floor or above --
    the score beyond the target when the probe is (``row.result.conditional``)."""
    return row.p_holm < p.alpha and row.result.score >= verdict_floor(row, p)


def verdict_floor(row: ProbeRow, p: ProbingCheck.Params) -> float:
    """The score an encoded attribute must reach: ``min_auroc`` or ``min_r2``."""
    return p.min_auroc if row.result.metric == "auroc" else p.min_r2


def run_probes(
    ctx: AuditContext,
    p: ProbingCheck.Params,
    attributes: list[Attribute],
    embeddings: dict[str, np.ndarray],
) -> tuple[list[ProbeRow], CheckOutput]:
    """Every attribute on every layer (a probe that fails leaves a note), Holm-corrected
    across the family; the metrics give the judged scores first, then the marginal ones."""
    found = CheckOutput()
    # Holm's first step needs p <= alpha / m and a permutation p is at least 1 / (P + 1):
    # with many tests, more permutations (they are cheap) so a real effect can be flagged
    tests = len(attributes) * len(embeddings)
    permutations = max(p.n_permutations, math.ceil(4 * tests / p.alpha))
    if permutations > p.n_permutations:
        found.notes.append(
            f"{permutations} permutations (not {p.n_permutations}) so that Holm over"
            f" {tests} tests can reach p < {p.alpha:g}"
        )
    found.metrics["n_permutations"] = permutations
    rows: list[ProbeRow] = []
    for attr in attributes:
        for layer, x in embeddings.items():
            try:
                result = probe_attribute(ctx, p, x, attr, permutations)
            except ProbeError as exc:
                found.notes.append(f"probe {attr.name} on {layer}: {exc}")
                continue
            row = ProbeRow(attr.name, layer, result, probe_estimate(ctx, p, result, attr))
            if result.conditional:
                row.marginal = _marginal(ctx, p, x, attr, found, layer)
            rows.append(row)
    adjusted = adjust_pvalues([r.result.p_value for r in rows], "holm")
    for row, p_adj in zip(rows, adjusted, strict=True):
        row.p_holm = float(p_adj)
        e = row.estimate
        row.estimate = Estimate(e.value, e.ci_low, e.ci_high, e.n, row.p_holm)
        key = f"{row.attribute}.{layer_key(row.layer)}"
        found.metrics[f"probe_{row.result.metric}.{key}"] = row.estimate
        found.metrics[f"probe_control.{key}"] = row.result.control
        found.metrics[f"probe_selectivity.{key}"] = row.result.selectivity
    for row in rows:  # after the judged scores, which lead the report's key metrics
        if row.marginal is not None:
            key = f"{row.attribute}.{layer_key(row.layer)}"
            found.metrics[f"probe_{row.result.metric}_marginal.{key}"] = row.marginal
    if any(r.result.conditional for r in rows):
        found.notes.append(
            "probe scores are beyond the target: probe_auroc / probe_r2 (and the"
            " 'encoded' rule, the verdicts, control and random-weights baseline) score"
            " the attribute within target classes -- AUROC over pairs from the same"
            " class, R² of deviations from the class mean -- against a null that"
            " shuffles it within target classes; an attribute tied to the target is not"
            " called encoded only because a layer encodes the target. The plain probe"
            " is reported as probe_auroc_marginal / probe_r2_marginal"
        )
    elif rows and p.within_target and ctx.config.data.target.kind == "multilabel":
        found.notes.append(
            "multilabel target: probes are marginal (not conditioned on the labels), so"
            " an attribute tied to a label can be decoded through it"
        )
    return rows, found


def _marginal(
    ctx: AuditContext,
    p: ProbingCheck.Params,
    x: np.ndarray,
    attr: Attribute,
    found: CheckOutput,
    layer: str,
) -> Estimate | None:
    """The plain (marginal) probe score with its bootstrap CI, reported beside the one
    beyond the target; no null (nothing judges it). A failed probe leaves a note in
    ``found``."""
    try:
        result = probe_attribute(ctx, p, x, attr, marginal=True)
    except ProbeError as exc:
        found.notes.append(f"marginal probe {attr.name} on {layer}: {exc}")
        return None
    return probe_estimate(ctx, p, result, attr)
