"""Estimates of the ablation check: a value with its percentile CI (and bootstrap p-value)
read from the joint bootstrap table, p-values adjusted per family, CI bounds in words."""

from __future__ import annotations

import dataclasses

import numpy as np

from mmaudit.methods.stats import (
    Estimate,
    adjust_pvalues,
    bootstrap_p_value,
    percentile_interval,
)


def estimate_from_boot(
    value: float, boot: np.ndarray, n: int, alpha: float, with_p: bool = False
) -> Estimate:
    """Percentile CI from bootstrap replicates (NaN replicates skipped; under half valid: no
    CI); with ``with_p`` also the two-sided bootstrap p-value for "= 0", computed exactly as
    ``stats.paired_bootstrap_diff`` does, so that a drop read from the joint bootstrap table
    equals the paired bootstrap of the two variants for the same seed."""
    value = float(value)
    boot = np.asarray(boot, dtype=float)
    ci = percentile_interval(boot, alpha, boot.size / 2)
    if not np.isfinite(value) or ci is None:
        return Estimate(value, None, None, n)
    lo, hi = ci
    p = bootstrap_p_value(boot) if with_p else None
    return Estimate(value, float(lo), float(hi), n, p)


def adjust_family(estimates: dict[str, Estimate], method: str) -> dict[str, Estimate]:
    """The same estimates with their null p-values adjusted as one family."""
    names = [k for k, e in estimates.items() if e.null_p is not None]
    if not names or method == "none":
        return estimates
    adjusted = adjust_pvalues([estimates[k].null_p for k in names], method)  # type: ignore[misc]
    out = dict(estimates)
    for k, p in zip(names, adjusted, strict=True):
        out[k] = dataclasses.replace(estimates[k], null_p=float(p))
    return out


def format_bound(x: float | None) -> str:
    """A CI bound for a message: three significant digits, ``n/a`` when there is none."""
    return "n/a" if x is None else f"{x:.3g}"
