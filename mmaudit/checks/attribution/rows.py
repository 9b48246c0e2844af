"""The rows a stage attributes and how their statistics resample.

Every stage of the check (report words, labs, modality shares) draws its rows the same
way (a seeded cap), resamples them by patient, reads the site attribute for the
site-within-label test, and reports shares and completeness errors as one pooled ratio of
sums over the rows -- the statistic the bootstrap resamples.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mmaudit.checks.contract import AuditContext


def cap_rows(rows: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most ``cap`` of ``rows`` (a seeded random subset, in dataset order)."""
    if cap is None or len(rows) <= cap:
        return rows
    return np.sort(rng.choice(rows, size=cap, replace=False))


def row_groups(ctx: AuditContext, rows: np.ndarray) -> np.ndarray | None:
    """The patient of each of ``rows`` (the bootstrap's resampling unit), or None."""
    g = ctx.groups
    return None if g is None else np.asarray(g)[rows]


def site_values(ctx: AuditContext, name: str) -> tuple[np.ndarray | None, str | None]:
    """The site attribute over the dataset, or None with the reason."""
    attrs = ctx.dataset.attributes
    if name not in attrs.columns:
        return None, f"attribute '{name}' is not configured (data.attributes)"
    values = attrs[name].to_numpy(dtype=object)
    known = np.array(
        [v is not None and not (isinstance(v, float) and math.isnan(v)) for v in values]
    )
    if len({str(v) for v in values[known]}) < 2:
        return None, f"attribute '{name}' has fewer than two values"
    return np.where(known, values.astype(str), ""), None


def pooled_ratio(num: np.ndarray, den: np.ndarray) -> float:
    """``sum(num) / sum(den)`` over the rows (NaN when the denominator sums to 0)."""
    total = float(np.sum(den))
    return float(np.sum(num)) / total if total > 0 else float("nan")
