"""Missing-modality robustness: the metric as each modality goes missing for 0-100 % of the
samples that have it, removed the way a missing modality is handled in deployment (the
model's own missing path, else the dataset mean), and the mixed predictions at the
realistic missing rate that the joint bootstrap scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mmaudit.checks.ablation.plan import Plan
from mmaudit.checks.ablation.scoring import Scorer, predicted_probs
from mmaudit.checks.contract import AuditContext

if TYPE_CHECKING:
    from mmaudit.checks.ablation.check import AblationCheck


@dataclass(frozen=True)
class Robustness:
    """``curves``: one row per modality and drop rate (metric, 95 % band over the random
    drop patterns); ``realistic``: per modality the (draws, n[, K]) mixed predictions at the
    realistic rate; ``realistic_metric``: their mean metric over the draws."""

    curves: pd.DataFrame
    realistic: dict[str, np.ndarray]
    realistic_metric: dict[str, float]


def robustness_curves(
    ctx: AuditContext,
    scorer: Scorer,
    full: np.ndarray,
    plan: Plan,
    kind: str,
    params: AblationCheck.Params,
) -> Robustness:
    """Metric vs drop rate per modality, and the mixed predictions at the realistic rate.

    A sample's prediction does not depend on the other samples, so "modality m dropped
    for a random fraction r of the samples that have it" is a per-sample mix of the full
    and the m-removed predictions: no model run per rate. ``robustness_draws`` random
    drop patterns per rate give the band.
    """
    p = params
    how = plan.robustness_removal
    dropped = {
        mod: predicted_probs(ctx.cache.ablated({mod: how}, plan.level).logits, kind)
        for mod in plan.players
    }
    rates = np.linspace(0.0, 1.0, p.robustness_steps)
    ds = ctx.dataset
    rows = []
    realistic: dict[str, np.ndarray] = {}
    for mod in plan.players:
        has = ds.present[:, ds.modalities.index(mod)]
        u = ctx.rng(f"ablation.robustness.{mod}").random((p.robustness_draws, len(has)))

        def mixed(
            rate: float,
            u: np.ndarray = u,
            has: np.ndarray = has,
            gone: np.ndarray = dropped[mod],
        ) -> np.ndarray:
            drop = (u < rate) & has[None, :]
            if full.ndim > 1:
                drop = drop[..., None]
            return np.where(drop, gone[None], full[None])

        for rate in rates:
            vals = scorer.table(mixed(float(rate)), which=(p.metric,))[:, 0]
            ok = vals[np.isfinite(vals)]
            rows.append(
                {
                    "modality": mod,
                    "drop_rate": float(rate),
                    "removal": how,
                    p.metric: float(np.mean(ok)) if ok.size else np.nan,
                    "band_low": float(np.quantile(ok, 0.025)) if ok.size else np.nan,
                    "band_high": float(np.quantile(ok, 0.975)) if ok.size else np.nan,
                    "n_present": int(has.sum()),
                }
            )
        realistic[mod] = mixed(p.realistic_missing_rate)
    realistic_metric = {
        mod: float(np.mean(scorer.table(realistic[mod], which=(p.metric,))[:, 0]))
        for mod in plan.players
    }
    return Robustness(
        curves=pd.DataFrame(rows), realistic=realistic, realistic_metric=realistic_metric
    )
