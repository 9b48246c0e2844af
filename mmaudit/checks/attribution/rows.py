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


def stratified_cap(
    rows: np.ndarray, cap: int | None, strata: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """At most ``cap`` of ``rows``, drawn within the cells of ``strata`` (one key per row of
    ``rows``) in proportion to their sizes, in dataset order.

    Each cell gets ``cap * size / len(rows)`` rows rounded by largest remainder (Hamilton),
    and at least one while the cap allows one per cell, so a small (label, site) cell is
    never left out by chance; within a cell the draw is a seeded random subset.
    """
    if cap is None or len(rows) <= cap:
        return rows
    keys, cell = np.unique(np.asarray(strata).astype(str), return_inverse=True)
    sizes = np.bincount(cell, minlength=len(keys))
    exact = cap * sizes / len(rows)
    take = np.floor(exact).astype(int)
    if cap >= len(keys):
        take = np.maximum(take, 1)
    left = cap - int(take.sum())
    if left > 0:  # largest remainders first; ties by cell order
        order = np.argsort(-(exact - np.floor(exact)), kind="stable")
        for c in order:
            if left == 0:
                break
            if take[c] < sizes[c]:
                take[c] += 1
                left -= 1
    while left < 0:  # the minimum of one per cell overshot: trim the most over-served
        c = int(np.argmax(np.where(take > 1, take - exact, -np.inf)))
        take[c] -= 1
        left += 1
    picked = [
        rng.choice(rows[cell == c], size=int(take[c]), replace=False)
        for c in range(len(keys))
        if take[c] > 0
    ]
    return np.sort(np.concatenate(picked))


def strata_of(ctx: AuditContext, rows: np.ndarray, site_attribute: str) -> tuple[np.ndarray, str]:
    """A (label, site) key per row of ``rows`` and what it is made of, in words: the label
    (every column of a multilabel target) and the site attribute when it is configured."""
    target = np.asarray(ctx.dataset.target)[rows]
    if target.ndim == 2:
        code = np.where(target == 1, "1", np.where(target == 0, "0", "?"))
        label = np.array(["".join(r) for r in code])
    else:
        label = target.astype(str)
    site, _ = site_values(ctx, site_attribute)
    if site is None:
        return label, "label"
    return np.char.add(np.char.add(label, "|"), site[rows].astype(str)), f"label x {site_attribute}"


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


#: a row's modality effect is nil when the end-to-end change of the score is at most
#: ``NIL_CHANGE`` x (1 + |F(x)|) -- a thousandth of a logit moves no decision, and it is the
#: size of float32 round-off in a model whose intermediate values are in the thousands --
#: and the gradient mass along the path, sum |IG|, at most ``NIL_GRADIENT`` x (1 + |F(x)|):
#: the model's score does not depend on the modality at all (a small but real effect, or a
#: step the gradient cannot see, keeps its completeness error)
NIL_CHANGE = 1e-3
NIL_GRADIENT = 1e-6


def completeness_error(
    attributed: np.ndarray, attributed_abs: np.ndarray, fx: np.ndarray, fb: np.ndarray, what: str
) -> tuple[float, str | None]:
    """IG's completeness error ``sum |sum(IG) - (F(x) - F(b))| / sum |F(x) - F(b)|`` over the
    rows where the modality has an effect, and a note when some or all rows have none.

    ``attributed``: sum(IG) per row; ``attributed_abs``: sum |IG| per row. Where the effect
    is nil (see ``NIL_CHANGE``, ``NIL_GRADIENT``) the model does not use ``what`` for that
    row: the ratio there is 0/0 -- round-off over round-off -- and says nothing about
    convergence. Those rows are left out; when every row is such a row the error is NaN
    (not judged) and the note says the model ignores ``what``.
    """
    attributed, attributed_abs, fx, fb = (
        np.asarray(a, dtype=float) for a in (attributed, attributed_abs, fx, fb)
    )
    effect = np.abs(fx - fb)
    scale = 1.0 + np.abs(fx)
    nil = (effect <= NIL_CHANGE * scale) & (attributed_abs <= NIL_GRADIENT * scale)
    err = np.abs(attributed - (fx - fb))
    if nil.all():
        return float("nan"), (
            f"{what} have no effect on the attributed score on any attributed row (the"
            f" score changes by at most {NIL_CHANGE:g} x (1 + |F(x)|) and IG's gradients"
            " along the path are nil): the model does not use them here, so IG's"
            " completeness error is 0/0 and is not reported; this is not a convergence"
            " problem (ig_steps need not change)"
        )
    note = None
    if nil.any():
        note = (
            f"{what}: the completeness error is over the {int((~nil).sum())} of {nil.size}"
            f" rows where they have an effect; on the other {int(nil.sum())} they have none"
            " (0/0)"
        )
    return pooled_ratio(err[~nil], effect[~nil]), note
