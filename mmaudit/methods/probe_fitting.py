"""Fitting the linear probes on fixed folds: L2 logistic regression (Newton) and ridge
regression factored per fold as a fixed linear map of the labels, their out-of-fold outputs,
and the penalty chosen by an inner cross-validation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mmaudit.methods.probe_folds import make_folds
from mmaudit.methods.probe_result import ProbeError, ProbeKind
from mmaudit.methods.probe_scores import fold_score

__all__ = [
    "LOGISTIC_GRID",
    "RIDGE_GRID",
    "fit_logistic",
]

# L2 strength for the mean log-loss + lam/2 ||w||^2 (features standardised)
LOGISTIC_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)

# ridge penalty per training row: ||y - Xw||^2 + lam * n_train * ||w||^2
RIDGE_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0)
    sd = train.std(axis=0)
    sd[sd < 1e-12] = 1.0
    return (train - mean) / sd, (test - mean) / sd


def indicator_targets(labels: np.ndarray, n_levels: int) -> np.ndarray:
    """Probe targets: one 0/1 column (level 1) for two levels, one-hot otherwise."""
    if n_levels == 2:
        return (labels == 1).astype(np.float64)[:, None]
    return (labels[:, None] == np.arange(n_levels)[None, :]).astype(np.float64)


def _logloss(z: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    lam: float,
    start: np.ndarray | None = None,
    max_iter: int = 30,
    tol: float = 1e-9,
) -> np.ndarray:
    """L2 logistic regression, one column of ``y`` (n, c) in {0, 1} at a time.

    Minimises ``mean log-loss + lam / 2 * ||w||^2`` (intercept unpenalised) by Newton's
    method with a backtracking line search, stopping when half the Newton decrement
    (an estimate of the distance to the optimum) is below ``tol``. Strictly convex for
    ``lam > 0``, so it converges from any start (``start``: warm start, (d + 1, c)).
    Returns (d + 1, c), the last row the intercept.
    """
    n, d = x.shape
    xa = np.hstack([x, np.ones((n, 1))])
    penalty = np.full(d + 1, lam)
    penalty[-1] = 1e-10
    y = y.reshape(n, -1).astype(np.float64)
    out = np.zeros((d + 1, y.shape[1]))
    for j in range(y.shape[1]):
        t = y[:, j]
        if start is not None:
            w = start[:, j].copy()
        else:
            w = np.zeros(d + 1)
            rate = float(np.clip(t.mean(), 1e-3, 1 - 1e-3))
            w[-1] = math.log(rate / (1 - rate))
        z = xa @ w
        f = _logloss(z, t) + 0.5 * float(np.sum(penalty * w * w))
        for _ in range(max_iter):
            p = 1.0 / (1.0 + np.exp(-z))
            grad = xa.T @ (p - t) / n + penalty * w
            hess = (xa.T * (p * (1 - p))) @ xa / n
            hess[np.diag_indices_from(hess)] += penalty
            step = np.linalg.solve(hess, grad)
            decrease = float(grad @ step)
            if decrease / 2 < tol:
                break
            dz = xa @ step
            size = 1.0
            while size > 1e-6:
                w_try = w - size * step
                z_try = z - size * dz
                f_try = _logloss(z_try, t) + 0.5 * float(np.sum(penalty * w_try * w_try))
                if f_try <= f - 1e-4 * size * decrease:
                    break
                size *= 0.5
            else:
                break
            w, z, f = w_try, z_try, f_try
        out[:, j] = w
    return out


def per_fold_features(x: np.ndarray | list[np.ndarray], f: int) -> np.ndarray:
    """The features of fold ``f``: one matrix for every fold, or one matrix per fold."""
    return x[f] if isinstance(x, list) else x


def logistic_out_of_fold(
    x: np.ndarray | list[np.ndarray], y: np.ndarray, folds: np.ndarray, lams: list[float]
) -> np.ndarray:
    """Out-of-fold decision values (n, c) of the logistic probe with one lambda per fold."""
    out = np.zeros(y.shape, dtype=np.float64)
    for f, lam in enumerate(lams):
        test = folds == f
        xf = per_fold_features(x, f)
        tr, te = _standardise(xf[~test], xf[test])
        w = fit_logistic(tr, y[~test], lam)
        out[test] = te @ w[:-1] + w[-1]
    return out


def _logistic_path(
    x: np.ndarray, y: np.ndarray, folds: np.ndarray, grid: tuple[float, ...]
) -> list[np.ndarray]:
    """Out-of-fold decision values for every lambda of ``grid`` (strongest first), each fit
    warm-started from the previous one: the regularisation path costs little more than
    its last fit."""
    out = [np.zeros(y.shape, dtype=np.float64) for _ in grid]
    for f in range(int(folds.max()) + 1):
        test = folds == f
        tr, te = _standardise(x[~test], x[test])
        w = None
        for i, lam in enumerate(grid):
            w = fit_logistic(tr, y[~test], lam, start=w)
            out[i][test] = te @ w[:-1] + w[-1]
    return out


@dataclass(frozen=True)
class RidgeFold:
    """One outer fold of the ridge probe: test predictions are ``mean(y_tr) + L @ (R @ y_tr)``,
    a fixed linear map of the training labels (``R`` is None: ``L`` is the full hat matrix,
    stored when that is the cheaper product)."""

    test: np.ndarray
    left: np.ndarray
    right: np.ndarray | None

    def predict(self, y_train: np.ndarray) -> np.ndarray:
        centre = y_train.mean(axis=0)
        if self.right is None:
            return centre + self.left @ y_train
        return centre + self.left @ (self.right @ y_train)


def ridge_fold(x: np.ndarray, test: np.ndarray, lam: float) -> RidgeFold:
    """Standardise on the training rows and factor the ridge solution for fold ``test``."""
    tr, te = _standardise(x[~test], x[test])
    n, d = tr.shape
    if d <= n:
        right = np.linalg.solve(tr.T @ tr + lam * n * np.eye(d), tr.T)  # (d, n_train)
        left = te
    else:
        right = np.linalg.solve(tr @ tr.T + lam * n * np.eye(n), np.eye(n))  # dual form
        left = te @ tr.T
    if te.shape[0] * n <= left.shape[1] * (n + te.shape[0]):
        return RidgeFold(test, left @ right, None)
    return RidgeFold(test, left, right)


def ridge_out_of_fold(
    x: np.ndarray | list[np.ndarray], y: np.ndarray, folds: np.ndarray, lams: list[float]
) -> np.ndarray:
    out = np.zeros(y.shape, dtype=np.float64)
    for f, lam in enumerate(lams):
        fold = ridge_fold(per_fold_features(x, f), folds == f, lam)
        out[fold.test] = fold.predict(y[~fold.test])
    return out


def select_penalty(
    kind: ProbeKind,
    model: Literal["logistic", "ridge"],
    x: np.ndarray,
    y: np.ndarray,
    strata: np.ndarray,
    groups: np.ndarray | None,
    inner_folds: int,
    seed: int,
    within: np.ndarray | None = None,
) -> float:
    """The grid value with the best inner-CV score (ties: the stronger penalty); the score
    is within the classes of ``within`` when given, as the probe's own."""
    grid = tuple(sorted(LOGISTIC_GRID if model == "logistic" else RIDGE_GRID, reverse=True))
    default = 1e-2 if model == "logistic" else 1.0
    try:
        inner = make_folds(strata, groups, inner_folds, seed)
    except ProbeError:
        return default
    if model == "logistic":
        preds = _logistic_path(x, y, inner, grid)
    else:
        k = int(inner.max()) + 1
        preds = [ridge_out_of_fold(x, y, inner, [lam] * k) for lam in grid]
    best, best_score = default, -math.inf
    for lam, pred in zip(grid, preds, strict=True):
        score = fold_score(kind, y, pred, within)
        if np.isfinite(score) and score > best_score + 1e-12:
            best, best_score = lam, score
    return best
