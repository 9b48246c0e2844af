"""Ordinal severity: does a layer order the rows by a named ordinal attribute (a grade)?
The Spearman correlation of the attribute with the first principal direction (two-sided)
and with a cross-fitted ridge direction (one-sided), each with a permutation p."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mmaudit.checks.embedding.budget import native_threads
from mmaudit.checks.embedding.canvas import new_figure
from mmaudit.checks.embedding.factors import is_missing
from mmaudit.checks.embedding.output import OutputPart
from mmaudit.methods.stats import Estimate, bootstrap_ci, permutation_pvalue

if TYPE_CHECKING:
    from mmaudit.checks.embedding.check import EmbeddingCheck
    from mmaudit.checks.embedding.inputs import EmbeddingInputs
    from mmaudit.checks.embedding.layer import LayerResult


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def _spearman_null(a: np.ndarray, b: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Spearman of ``a`` with ``n`` shuffles of ``b`` (Pearson of ranks, vectorised)."""
    from scipy.stats import rankdata

    ra = rankdata(a)
    rb = rankdata(b)
    ra = (ra - ra.mean()) / (ra.std() or 1.0)
    rb = (rb - rb.mean()) / (rb.std() or 1.0)
    perms = np.stack([rng.permutation(rb) for _ in range(n)])
    return perms @ ra / len(ra)


def _ordinal_values(
    inp: EmbeddingInputs, p: EmbeddingCheck.Params, notes: list[str]
) -> np.ndarray | None:
    attrs = inp.attributes
    name = p.ordinal
    if attrs is None or name not in attrs.columns:
        known = [] if attrs is None else list(attrs.columns)
        notes.append(f"ordinal: '{name}' is not a configured attribute (known: {known})")
        return None
    raw = attrs[name].to_numpy()
    if p.ordinal_levels:
        lookup = {str(v): float(i) for i, v in enumerate(p.ordinal_levels)}
        vals = np.array([lookup.get(str(v), np.nan) if not is_missing(v) else np.nan for v in raw])
        unknown = sorted({str(v) for v in raw if not is_missing(v) and str(v) not in lookup})
        if unknown:
            notes.append(f"ordinal: values {unknown[:5]} are not in ordinal_levels; left out")
        return vals
    vals = pd.to_numeric(pd.Series(raw), errors="coerce").to_numpy(dtype=float)
    text_vals = [v for v in raw if not is_missing(v)]
    if np.isfinite(vals).sum() < len(text_vals):
        notes.append(
            f"ordinal: '{name}' is not numeric; give params.ordinal_levels to order its levels"
        )
        return None
    return vals


def ordinal(
    layers: dict[str, LayerResult],
    groups: np.ndarray,
    inp: EmbeddingInputs,
    p: EmbeddingCheck.Params,
) -> OutputPart:
    """Spearman of the ordinal value with PC1 and with a cross-fitted ridge direction."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold, cross_val_predict

    out = OutputPart()
    vals = _ordinal_values(inp, p, out.notes)
    if vals is None:
        return out
    fig_data = []
    for name, res in layers.items():
        v = vals[res.rows]
        ok = np.isfinite(v)
        if ok.sum() < 10 or np.unique(v[ok]).size < 2:
            out.notes.append(f"ordinal: layer {name} has too few rows with distinct values")
            continue
        x, y, g = res.x[ok], v[ok], groups[res.rows][ok]
        boot = {"groups": g, "n_boot": p.n_boot, "alpha": p.alpha, "seed": inp.seed}
        rng = inp.rng(f"ordinal:{name}")
        pc1 = res.pca[ok, 0] if res.pca is not None else x[:, 0]
        sign = 1.0 if (_spearman(pc1, y) or 0) >= 0 else -1.0
        pc1 = sign * pc1
        n_splits = min(5, np.unique(g).size)
        fitted = None
        if n_splits >= 2:
            model = RidgeCV(alphas=np.logspace(-3, 3, 13))
            with native_threads(p.native_threads):
                fitted = cross_val_predict(model, x, y, groups=g, cv=GroupKFold(n_splits))
        for kind, score in (("pc1", pc1), ("fitted", fitted)):
            if score is None:
                continue
            rho = _spearman(score, y)
            null = _spearman_null(score, y, p.n_permutations, rng)
            est = bootstrap_ci(_spearman, score, y, **boot)
            # PC1's sign was set from the data, so only |rho| is evidence: two-sided. The
            # fitted direction is evidence only when it ranks severity the right way round;
            # out-of-fold ridge predictions on unrelated values lean negative (the shuffled
            # null does not), so a two-sided test would flag that bias: one-sided, greater.
            if rho != rho:
                p_value = math.nan
            elif kind == "pc1":
                p_value = permutation_pvalue(abs(rho), np.abs(null))
            else:
                p_value = permutation_pvalue(rho, null, "greater")
            out.metrics[f"ordinal.{name}.spearman_{kind}"] = Estimate(
                rho, est.ci_low, est.ci_high, len(y), p_value
            )
        if fitted is not None:
            fig_data.append((name, fitted, y))
    if fig_data:
        fig = new_figure(3.2 * len(fig_data), 3.0)
        fig.suptitle(f"position along a cross-fitted direction vs '{p.ordinal}'", fontsize=9)
        for i, (name, score, y) in enumerate(fig_data):
            ax = fig.add_subplot(1, len(fig_data), i + 1)
            ax.scatter(y, score, s=5, alpha=0.6)
            ax.set_xlabel(p.ordinal or "", fontsize=8)
            ax.set_title(name, fontsize=9)
        out.figures["ordinal"] = fig
    return out
