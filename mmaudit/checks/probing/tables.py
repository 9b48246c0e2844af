"""The probing check's tables: ``probes`` (one row per attribute x layer probe) and
``erasure`` (one row per erased attribute)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from mmaudit.checks.probing.records import ErasureRow, ProbeRow, null_p_or_nan
from mmaudit.methods.stats import Estimate


def probe_table(rows: list[ProbeRow], alpha: float) -> pd.DataFrame:
    """One row per probe: score, CI, marginal score, null, control, random weights, origin."""
    records = []
    for r in rows:
        lo, hi = r.result.null_band(alpha)
        records.append(
            {
                "attribute": r.attribute,
                "layer": r.layer,
                "metric": r.result.metric,
                "within_target": r.result.conditional,
                "score": r.estimate.value,
                "ci_low": r.estimate.ci_low,
                "ci_high": r.estimate.ci_high,
                "marginal_score": r.marginal.value if r.marginal else math.nan,
                "marginal_ci_low": _nan(r.marginal.ci_low) if r.marginal else math.nan,
                "marginal_ci_high": _nan(r.marginal.ci_high) if r.marginal else math.nan,
                "ridge_score": r.result.test_score,
                "p_perm": r.result.p_value,
                "p_holm": r.p_holm,
                "null_low": lo,
                "null_high": hi,
                "control": r.result.control,
                "selectivity": r.result.selectivity,
                "random_weights": r.random.value if r.random else math.nan,
                "training_gain": r.estimate.value - r.random.value if r.random else math.nan,
                "random_ci_low": r.random.ci_low if r.random else math.nan,
                "random_ci_high": r.random.ci_high if r.random else math.nan,
                "random_p_holm": null_p_or_nan(r.random) if r.random else math.nan,
                "origin": r.origin,
                "n": r.estimate.n,
                "folds": r.result.n_folds,
                "permuted": r.result.permuted,
            }
        )
    return pd.DataFrame(records)


def erasure_table(
    rows: list[ErasureRow], verdicts: dict[str, str], mde: dict[str, float] | None = None
) -> pd.DataFrame:
    """One row per erased attribute: each effect with its CI, the random draws' spread, the
    Holm p of the excess, the smallest excess detectable at this n (``mde_dp``), the
    residual probe and the verdict."""
    mde = mde or {}
    records = []
    for r in rows:
        rec: dict[str, Any] = {"attribute": r.attribute, "rank": r.rank}
        for key in ("dp", "dp_random", "excess", "flip", "flip_random", "dauroc", "dauroc_random"):
            e: Estimate = getattr(r, key)
            rec[key] = e.value
            rec[f"{key}_ci_low"] = e.ci_low
            rec[f"{key}_ci_high"] = e.ci_high
        rec["dp_random_sd"] = r.dp_random_sd
        rec["dp_random_min"] = float(r.dp_draws.min())
        rec["dp_random_max"] = float(r.dp_draws.max())
        rec["random_draws"] = r.dp_draws.size
        rec["excess_p_holm"] = r.p_holm
        rec["mde_dp"] = mde.get(r.attribute, math.nan)
        rec["residual_probe"] = r.residual
        rec["verdict"] = verdicts.get(r.attribute, "")
        records.append(rec)
    return pd.DataFrame(records)


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)
