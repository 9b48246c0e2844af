"""The bootstrap CI (by patient) of a probe's score over its out-of-fold outputs; for a
probe beyond the target, vectorised as weighted within-class scores of every resample."""

from __future__ import annotations

import math

import numpy as np

from mmaudit.methods.probe_fitting import indicator_targets
from mmaudit.methods.probe_folds import level_codes
from mmaudit.methods.probe_result import ProbeResult
from mmaudit.methods.probe_scores import (
    _macro,
    auroc_columns_within,
    r2_columns,
    r2_columns_within,
)
from mmaudit.methods.stats import (
    Estimate,
    auroc_bootstrap,
    bootstrap_ci,
    bootstrap_groups,
)

__all__ = [
    "score_estimate",
]


def score_estimate(
    result: ProbeResult,
    groups: np.ndarray | None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Estimate:
    """Bootstrap CI (by patient) of the probe score over its out-of-fold predictions (within
    target classes when the probe was: ``result.within``)."""
    boot = {"groups": groups, "n_boot": n_boot, "alpha": alpha, "seed": seed}
    if result.within is not None:
        return _within_estimate(result, groups, n_boot, alpha, seed)
    if result.kind == "continuous":

        def r2(y: np.ndarray, pred: np.ndarray) -> float:
            return float(r2_columns(y[:, None], pred[:, None])[0])

        return bootstrap_ci(r2, result.labels, result.oof, **boot)
    if len(result.levels) == 2:
        return auroc_bootstrap(result.labels == 1, result.oof, **boot)
    n_levels = len(result.levels)
    return bootstrap_ci(lambda lab, s: _macro(lab, s, n_levels), result.labels, result.oof, **boot)


def _within_estimate(
    result: ProbeResult, groups: np.ndarray | None, n_boot: int, alpha: float, seed: int
) -> Estimate:
    """``score_estimate`` of a probe beyond the target, vectorised: the resamples of
    ``stats.bootstrap_ci`` for the seed (patients drawn whole) as a (b, n) matrix of row
    multiplicities, each resample's within-class score from weighted sums -- per class and
    tie block of scores, the Mann-Whitney U of the AUROC; the class means of the R^2 re-taken
    on the resample. Same Estimate as ``bootstrap_ci`` with the score's function (a test
    says so), without a Python step per resample."""
    within = result.within
    assert within is not None
    n = len(result.labels)
    if result.kind == "continuous":
        value = float(r2_columns_within(result.labels[:, None], result.oof[:, None], within)[0])
    else:
        lab = indicator_targets(result.labels, len(result.levels))
        value = float(np.nanmean(auroc_columns_within(lab, result.oof.reshape(n, -1), within)))
    if n < 2 or groups is not None and np.unique(groups).size < 2 or not math.isfinite(value):
        return Estimate(value, None, None, n)
    draws = bootstrap_groups(n, groups, n_boot, np.random.default_rng(seed))
    weights = np.stack([np.bincount(idx, minlength=n) for idx in draws]).astype(np.float64)
    if result.kind == "continuous":
        boot = _weighted_r2_within(result.labels, result.oof, within, weights)
    else:
        boot = _weighted_auroc_within(lab, result.oof.reshape(n, -1), within, weights)
    valid = boot[np.isfinite(boot)]
    if valid.size == 0 or valid.size < n_boot / 2:  # as stats.bootstrap_ci
        return Estimate(value, None, None, n)
    lo, hi = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    return Estimate(value, float(lo), float(hi), n)


def _weighted_auroc_within(
    labels: np.ndarray, scores: np.ndarray, within: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """``nanmean(auroc_columns_within(labels, scores, within))`` of each resample, given as
    row multiplicities ``weights`` (b, n): per class and column, the weighted U over blocks
    of tied scores (positive weight in a block x (negative weight below it + half the
    negative weight in it))."""
    b = weights.shape[0]
    u = np.zeros((b, labels.shape[1]))
    pairs = np.zeros((b, labels.shape[1]))
    for c in np.unique(within):
        rows = np.flatnonzero(within == c)
        for j in range(labels.shape[1]):
            order = rows[np.argsort(scores[rows, j], kind="stable")]
            sorted_scores = scores[order, j]
            ties = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
            pos = labels[order, j].astype(np.float64)
            w = weights[:, order]
            pos_at = np.add.reduceat(w * pos, ties, axis=1)
            neg_at = np.add.reduceat(w * (1.0 - pos), ties, axis=1)
            below = np.cumsum(neg_at, axis=1) - neg_at
            u[:, j] += (pos_at * (below + 0.5 * neg_at)).sum(axis=1)
            pairs[:, j] += pos_at.sum(axis=1) * neg_at.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_column = np.where(pairs > 0, u / pairs, np.nan)
    out = np.full(b, np.nan)
    some = np.isfinite(per_column).any(axis=1)
    out[some] = np.nanmean(per_column[some], axis=1)
    return out


def _weighted_r2_within(
    y: np.ndarray, pred: np.ndarray, within: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """``r2_columns_within`` of each resample, given as row multiplicities ``weights``
    (b, n): weighted class means, weighted sums of squares."""
    classes = level_codes(within)
    onehot = (classes[:, None] == np.arange(int(classes.max()) + 1)[None, :]).astype(np.float64)
    size = weights @ onehot  # (b, C)
    with np.errstate(invalid="ignore", divide="ignore"):
        y_mean = (weights * y) @ onehot / size
        p_mean = (weights * pred) @ onehot / size
    y_dev = y[None, :] - np.nan_to_num(y_mean) @ onehot.T
    p_dev = pred[None, :] - np.nan_to_num(p_mean) @ onehot.T
    resid = (weights * (y_dev - p_dev) ** 2).sum(axis=1)
    total = (weights * y_dev**2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 1.0 - resid / total, np.nan)
