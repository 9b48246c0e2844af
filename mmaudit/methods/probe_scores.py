"""The scores of a probe's out-of-fold outputs, column by column: AUROC and R^2, marginal
or within the classes of the target (pairs / deviations from class means of one class only)."""

from __future__ import annotations

import math

import numpy as np

from mmaudit.methods.probe_folds import level_codes
from mmaudit.methods.probe_result import ProbeKind
from mmaudit.methods.stats import auroc

__all__ = [
    "auroc_columns",
    "auroc_columns_within",
    "r2_columns",
    "r2_columns_within",
]


def auroc_columns(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of every column of ``scores`` (n, C) against the 0/1 column of ``labels`` (n, C);
    average ranks for ties (Mann-Whitney), NaN for a column with one class."""
    from scipy.stats import rankdata

    lab = np.asarray(labels).astype(bool)
    ranks = rankdata(scores, axis=0)
    n1 = lab.sum(axis=0).astype(float)
    n0 = lab.shape[0] - n1
    u = (ranks * lab).sum(axis=0) - n1 * (n1 + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        out = u / (n1 * n0)
    out[(n1 == 0) | (n0 == 0)] = np.nan
    return out


def auroc_columns_within(labels: np.ndarray, scores: np.ndarray, within: np.ndarray) -> np.ndarray:
    """AUROC of every column over the pairs of rows in the same class of ``within`` only,
    pooled over classes: ``sum_c U_c / sum_c n1_c n0_c`` (the probability that a random
    positive-negative pair from one class is ordered right). NaN for a column with no
    such pair. A score that only shifts by class (the target alone) gets 0.5."""
    from scipy.stats import rankdata

    lab = np.asarray(labels).astype(bool)
    scores = np.asarray(scores)
    u = np.zeros(lab.shape[1])
    pairs = np.zeros(lab.shape[1])
    for c in np.unique(within):
        rows = within == c
        lab_c = lab[rows]
        n1 = lab_c.sum(axis=0).astype(float)
        u += (rankdata(scores[rows], axis=0) * lab_c).sum(axis=0) - n1 * (n1 + 1) / 2.0
        pairs += n1 * (lab_c.shape[0] - n1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = u / pairs
    out[pairs == 0] = np.nan
    return out


def minus_class_means(values: np.ndarray, within: np.ndarray) -> np.ndarray:
    """``values`` (n, c) minus the mean of each column over the rows of the same class."""
    classes = level_codes(within)
    onehot = (classes[:, None] == np.arange(int(classes.max()) + 1)[None, :]).astype(np.float64)
    means = (onehot.T @ values) / onehot.sum(axis=0)[:, None]
    return values - onehot @ means


def r2_columns_within(y: np.ndarray, pred: np.ndarray, within: np.ndarray) -> np.ndarray:
    """R^2 per column within the classes of ``within``: ``r2_columns`` of the deviations of
    ``y`` from its class means by the deviations of ``pred`` from its class means (what the
    probe explains beyond the class; per-class offsets count for nothing)."""
    return r2_columns(minus_class_means(y, within), minus_class_means(pred, within))


def r2_columns(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Out-of-sample R^2 per column: 1 - SSE / SST about each column's mean."""
    resid = ((y - pred) ** 2).sum(axis=0)
    total = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 1.0 - resid / total
    out[total <= 0] = np.nan
    return out


def _macro(labels_1d: np.ndarray, oof: np.ndarray, n_levels: int) -> float:
    """AUROC (two levels; ``oof`` scores level 1) or macro one-vs-rest AUROC."""
    if n_levels == 2:
        return auroc(labels_1d == 1, oof.reshape(-1))
    onehot = labels_1d[:, None] == np.arange(n_levels)[None, :]
    return float(np.nanmean(auroc_columns(onehot, oof)))


def fold_score(
    kind: ProbeKind, y: np.ndarray, pred: np.ndarray, within: np.ndarray | None = None
) -> float:
    """R^2 (continuous), AUROC (one indicator column) or macro one-vs-rest AUROC; within the
    classes of ``within`` when given."""
    if kind == "continuous":
        r2 = r2_columns(y, pred) if within is None else r2_columns_within(y, pred, within)
        return float(r2[0])
    scores = auroc_columns(y, pred) if within is None else auroc_columns_within(y, pred, within)
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else math.nan
