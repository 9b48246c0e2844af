"""The full model's own metrics, no modality removed: per missingness pattern present in the
data (how the model does on the rows that lack a modality in reality), and overall with CIs
when there is nothing to ablate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmaudit.checks.ablation.estimates import estimate_from_boot
from mmaudit.checks.ablation.scoring import METRICS, Scorer, predicted_probs
from mmaudit.checks.contract import AuditContext
from mmaudit.methods.stats import bootstrap_groups

if TYPE_CHECKING:
    from mmaudit.checks.ablation.check import AblationCheck


@dataclass(frozen=True)
class Patterns:
    """``pattern.<present modalities>.n`` / ``.metric`` metrics, the ``patterns`` table, and
    a note per pattern whose metric is undefined."""

    metrics: dict[str, Any]
    table: pd.DataFrame
    notes: list[str]


def pattern_metrics(
    ctx: AuditContext, scorer: Scorer, probs: np.ndarray, params: AblationCheck.Params
) -> Patterns:
    """The full model's metrics per missingness pattern present in the data."""
    p = params
    ds = ctx.dataset
    names = np.array(
        ["+".join(m for c, m in enumerate(ds.modalities) if row[c]) or "none" for row in ds.present]
    )
    k_primary = METRICS.index(p.metric)
    metrics: dict[str, Any] = {}
    notes: list[str] = []
    rows = []
    for name in sorted(set(names.tolist()), key=lambda s: (-s.count("+"), s)):
        sel = np.flatnonzero(names == name)
        sub = Scorer(scorer.y[sel], scorer.kind, scorer.threshold, scorer.bins)
        t0 = sub.table(probs[None, sel])[0]
        groups = None if ctx.groups is None else ctx.groups[sel]
        draws = bootstrap_groups(len(sel), groups, p.n_boot, np.random.default_rng(ctx.seed))
        tb = np.array([sub.table(probs[None, sel], r, (p.metric,))[0, 0] for r in draws])
        est = estimate_from_boot(t0[k_primary], tb, len(sel), p.alpha)
        metrics[f"pattern.{name}.n"] = len(sel)
        metrics[f"pattern.{name}.metric"] = est
        if not np.isfinite(t0[k_primary]):
            notes.append(
                f"{p.metric} is undefined for the {len(sel)} samples with pattern {name}"
                " (one class only, or too few samples): reported as empty"
            )
        rows.append(
            {
                "pattern": name,
                "n": len(sel),
                **{m: t0[k] for k, m in enumerate(METRICS)},
                f"{p.metric}_ci_low": est.ci_low,
                f"{p.metric}_ci_high": est.ci_high,
            }
        )
    return Patterns(metrics=metrics, table=pd.DataFrame(rows), notes=notes)


def full_model_estimates(
    ctx: AuditContext,
    scorer: Scorer,
    base: np.ndarray,
    kind: str,
    params: AblationCheck.Params,
) -> dict[str, Any]:
    """Full-model metrics with CIs when there is nothing to ablate."""
    p = params
    probs = predicted_probs(base, kind)[None]
    t0 = scorer.table(probs)[0]
    draws = bootstrap_groups(len(ctx.target), ctx.groups, p.n_boot, np.random.default_rng(ctx.seed))
    tb = np.stack([scorer.table(probs, rows)[0] for rows in draws])
    return {
        f"full.{m}": estimate_from_boot(t0[k], tb[:, k], len(ctx.target), p.alpha)
        for k, m in enumerate(METRICS)
    }
