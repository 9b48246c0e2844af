"""Does a layer's neighbourhood follow the label, or an attribute? kNN agreement as a lift
over chance and silhouettes by factor, each with a permutation null, and the multiplicity
control that turns their p-values into the ``knn_lift.*`` / ``silhouette.*`` metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmaudit.checks.embedding.budget import stratified_subsample
from mmaudit.checks.embedding.canvas import new_figure
from mmaudit.checks.embedding.factors import Factor, known_codes
from mmaudit.methods import neighbours as nb
from mmaudit.methods.stats import Estimate, adjust_pvalues, bootstrap_ci, permutation_pvalue

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mmaudit.checks.contract import MetricValue
    from mmaudit.checks.embedding.check import EmbeddingCheck
    from mmaudit.checks.embedding.inputs import EmbeddingInputs
    from mmaudit.checks.embedding.layer import LayerResult


@dataclass(frozen=True)
class FactorTests:
    """One row per (layer, factor) test for the agreement table, the per-row kNN agreement
    of each factor tested (kept for the identity margins) and the notes."""

    rows: list[dict[str, Any]]
    agreement: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AdjustedTests:
    """The test rows with their adjusted p (``p_adjusted``) and the metrics they give."""

    rows: list[dict[str, Any]]
    metrics: dict[str, MetricValue]


def lift(agree: np.ndarray, codes: np.ndarray) -> float:
    """Mean kNN agreement over the chance agreement (sum p^2)."""
    chance = nb.chance_agreement(codes)
    ok = (codes >= 0) & ~np.isnan(agree)
    if not ok.any() or not chance > 0:
        return math.nan
    return float(agree[ok].mean() / chance)


def kappa(agree: np.ndarray, codes: np.ndarray) -> float:
    """Chance-corrected agreement: (agreement - sum p^2) / (1 - sum p^2)."""
    chance = nb.chance_agreement(codes)
    ok = (codes >= 0) & ~np.isnan(agree)
    if not ok.any() or not chance < 1:
        return math.nan
    return float((agree[ok].mean() - chance) / (1 - chance))


def _nanmean(v: np.ndarray) -> float:
    ok = ~np.isnan(v)
    return float(v[ok].mean()) if ok.any() else math.nan


def enough_permutations(
    p: EmbeddingCheck.Params, tests: int
) -> tuple[EmbeddingCheck.Params, list[str]]:
    """``p`` with the kNN and silhouette permutation counts raised to ``ceil(2 m / alpha) -
    1`` for a family of ``m`` tests (layers x factors), and a note per count raised.

    Why: a permutation p is at least 1 / (B + 1), so Holm over m tests cannot go below
    m / (B + 1); with 100 shuffles and 16 tests that is 0.158 and no silhouette, however
    clear, could ever be significant. The raised count lets the smallest adjusted p reach
    alpha / 2."""
    notes: list[str] = []
    if p.p_adjust == "none" or tests <= 0:
        return p, notes
    needed = math.ceil(2 * tests / p.alpha) - 1
    changes: dict[str, int] = {}
    for name in ("n_permutations", "silhouette_permutations"):
        asked = getattr(p, name)
        if 0 < asked < needed:  # 0 silhouette permutations: no p-value asked for
            changes[name] = needed
            notes.append(
                f"{name}: {needed} (not {asked}) so that {p.p_adjust} over the {tests}"
                f" layer x factor tests can reach alpha = {p.alpha}"
            )
    return (p.model_copy(update=changes) if changes else p), notes


def knn_agreement(
    res: LayerResult,
    factors: list[Factor],
    groups: np.ndarray,
    inp: EmbeddingInputs,
    p: EmbeddingCheck.Params,
) -> FactorTests:
    """Per factor: the share of each row's neighbours sharing its level, as a lift over
    chance with a bootstrap CI by patient and a permutation p (labels shuffled, graph fixed)."""
    rows: list[dict[str, Any]] = []
    per_factor: dict[str, np.ndarray] = {}
    notes: list[str] = []
    g = groups[res.rows]
    for f in factors:
        codes = f.codes[res.rows]
        if np.unique(known_codes(codes)).size < 2:
            notes.append(f"layer {res.name}: '{f.name}' has one level among its rows; skipped")
            continue
        agree = nb.agreement(res.neighbours.indices, codes)
        per_factor[f.name] = agree
        observed = _nanmean(agree)
        null = nb.agreement_null(
            res.neighbours.indices,
            codes,
            p.n_permutations,
            inp.rng(f"knn:{res.name}:{f.name}"),
            device=inp.device,
            memory_budget_mb=p.memory_budget_mb,
        )
        est = bootstrap_ci(
            lift, agree, codes, groups=g, n_boot=p.n_boot, alpha=p.alpha, seed=inp.seed
        )
        chance = nb.chance_agreement(codes)
        rows.append(
            {
                "test": "knn_lift",
                "layer": res.name,
                "factor": f.name,
                "role": f.role,
                "levels": len(np.unique(known_codes(codes))),
                "k": res.k,
                "n": int((codes >= 0).sum()),
                "agreement": observed,
                "chance": chance,
                "value": est.value,
                "kappa": kappa(agree, codes),
                "ci_low": est.ci_low,
                "ci_high": est.ci_high,
                "p_raw": permutation_pvalue(observed, null),
                "null_mean": float(np.nanmean(null)),
            }
        )
    return FactorTests(rows, per_factor, notes)


def silhouettes(
    res: LayerResult,
    factors: list[Factor],
    groups: np.ndarray,
    strata: np.ndarray,
    inp: EmbeddingInputs,
    p: EmbeddingCheck.Params,
) -> FactorTests:
    """Silhouette of the rows by each factor (on a stratified subsample), with its
    permutation null and a bootstrap CI by patient."""
    rng = inp.rng(f"silhouette:{res.name}")
    sub = (
        stratified_subsample(strata[res.rows], p.silhouette_max_samples, rng)
        if strata.size
        else np.arange(min(len(res.rows), p.silhouette_max_samples))
    )
    usable = []
    for f in factors:
        codes = f.codes[res.rows][sub]
        counts = np.bincount(known_codes(codes)) if (codes >= 0).any() else np.zeros(0)
        if (counts > 0).sum() >= 2 and (counts > 1).any():
            usable.append((f, codes))
    if not usable:
        return FactorTests([])
    results = nb.silhouette_with_null(
        res.x[sub],
        [c for _, c in usable],
        p.silhouette_permutations,
        rng,
        metric=p.metric,
        device=inp.device,
        memory_budget_mb=p.memory_budget_mb,
    )
    g = groups[res.rows][sub]
    rows = []
    for (f, codes), r in zip(usable, results, strict=True):
        est = bootstrap_ci(
            _nanmean, r.per_row, groups=g, n_boot=p.n_boot, alpha=p.alpha, seed=inp.seed
        )
        rows.append(
            {
                "test": "silhouette",
                "layer": res.name,
                "factor": f.name,
                "role": f.role,
                "levels": len(np.unique(known_codes(codes))),
                "k": None,
                "n": int((codes >= 0).sum()),
                "agreement": None,
                "chance": None,
                "value": r.value,
                "kappa": None,
                "ci_low": est.ci_low,
                "ci_high": est.ci_high,
                "p_raw": permutation_pvalue(r.value, r.null),
                "null_mean": float(np.nanmean(r.null)) if r.null.size else math.nan,
            }
        )
    notes = []
    if len(sub) < len(res.rows):
        notes.append(
            f"layer {res.name}: silhouettes on a stratified subsample of {len(sub)} of"
            f" {len(res.rows)} rows"
        )
    return FactorTests(rows, notes=notes)


def adjust(rows: list[dict[str, Any]], p: EmbeddingCheck.Params) -> AdjustedTests:
    """Multiplicity control within each test family; adjusted p goes into the metric.

    The rows come back in their order, copied, with ``p_adjusted`` added."""
    rows = [dict(r) for r in rows]
    metrics: dict[str, MetricValue] = {}
    for test in ("knn_lift", "silhouette"):
        family = [r for r in rows if r["test"] == test]
        if not family:
            continue
        adj = adjust_pvalues([r["p_raw"] for r in family], p.p_adjust)
        for r, a in zip(family, adj, strict=True):
            r["p_adjusted"] = float(a)
            metrics[f"{test}.{r['layer']}.{r['factor']}"] = Estimate(
                r["value"], r["ci_low"], r["ci_high"], r["n"], float(a)
            )
    return AdjustedTests(rows, metrics)


def agreement_figure(table: pd.DataFrame) -> Figure:
    """Bars of each layer's kNN lift per factor with CIs; * marks adjusted p <= 0.05."""
    knn = table[table["test"] == "knn_lift"]
    layers = list(dict.fromkeys(knn["layer"]))
    fig = new_figure(max(4.0, 2.8 * len(layers)), 3.2)
    fig.suptitle(
        "kNN agreement: lift over chance (sum p²), 95% CI; * adjusted p <= 0.05", fontsize=9
    )
    for i, layer in enumerate(layers):
        ax = fig.add_subplot(1, len(layers), i + 1)
        part = knn[knn["layer"] == layer]
        pos = np.arange(len(part))
        val = part["value"].to_numpy(dtype=float)
        lo = part["ci_low"].to_numpy(dtype=float)
        hi = part["ci_high"].to_numpy(dtype=float)
        # a percentile interval need not contain the point estimate
        err = np.clip(np.vstack([np.nan_to_num(val - lo), np.nan_to_num(hi - val)]), 0, None)
        colours = ["tab:blue" if r == "label" else "tab:orange" for r in part["role"]]
        ax.bar(pos, val, yerr=err, color=colours, capsize=2)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        names = [
            f"{f}*" if (pa := part["p_adjusted"].iloc[j]) == pa and pa <= 0.05 else f
            for j, f in enumerate(part["factor"])
        ]
        ax.set_xticks(pos, names, rotation=45, ha="right", fontsize=7)
        ax.set_title(layer, fontsize=9)
    return fig
