"""How the stages of the ``saliency`` check name, scale, read and adjust their metrics: key
parts from attribute levels, an estimate scaled into an enrichment, the value a rule reads,
and Holm adjustment within one family of tests."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import replace as dc_replace
from typing import Any

import numpy as np

from mmaudit.methods.stats import Estimate, adjust_pvalues


def slug(value: Any) -> str:
    """``value`` as a metric key part (letters, digits, ``_`` and ``-``; ``na`` if empty)."""
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", str(value)).strip("_") or "na"


def scaled(est: Estimate, factor: float) -> Estimate:
    """``est`` (value and CI) times ``factor``; its p-value does not carry over."""
    lo = None if est.ci_low is None else est.ci_low * factor
    hi = None if est.ci_high is None else est.ci_high * factor
    return Estimate(est.value * factor, lo, hi, est.n)


def value(metric: Any) -> float:
    """A metric's value as a float; -inf when missing or not finite (sorts last)."""
    v = metric.value if isinstance(metric, Estimate) else metric
    return float(v) if v is not None and np.isfinite(v) else -np.inf


def holm_adjusted(
    metrics: Mapping[str, Any], keys: list[str], trusted: Mapping[str, bool]
) -> dict[str, Estimate]:
    """The estimates of ``keys`` with their null p-values Holm-adjusted as one family;
    untrusted methods' metrics lose their p-value (a failed sanity check means no
    evidence). Updating ``metrics`` with the result keeps every key in its place."""
    ps = [
        metrics[k].null_p if isinstance(metrics[k], Estimate) else None  # type: ignore[union-attr]
        for k in keys
    ]
    adj = adjust_pvalues([np.nan if v is None else v for v in ps], "holm")
    res: dict[str, Estimate] = {}
    for k, a in zip(keys, adj, strict=True):
        est = metrics[k]
        assert isinstance(est, Estimate)
        # secondary peaks are named "<method>_2", "<method>_3"; no method has an underscore
        method = k.rsplit(".", 1)[-1].split("_")[0]
        keep = trusted.get(method, True) and not math.isnan(a)
        res[k] = dc_replace(est, null_p=float(a) if keep else None)
    return res
