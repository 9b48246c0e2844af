"""Linear probes on frozen embeddings, with a fast permutation null.

A probe asks "can a linear read-out recover attribute A from layer L?". Getting a
trustworthy yes or no needs more than one cross-validated score, so
``run_probe`` returns, for one (embedding, attribute) pair:

* the probe score: L2 logistic regression (one-vs-rest for more than two levels,
  AUROC / macro AUROC) for a categorical attribute, ridge regression (R^2) for a
  continuous one, on standardised features (scaler fitted on each training fold),
  the penalty chosen by an inner cross-validation inside each training fold,
  predictions pooled over an outer k-fold that is stratified and grouped by patient
  (``make_folds``: the greedy rule of ``StratifiedGroupKFold``) so no patient is in
  both train and test;
* a permutation null: the attribute is shuffled *within each outer fold* (between
  patients when it is constant within each patient, else between rows) and the
  probe refitted on the same fixed folds, ``n_permutations`` times; p-value
  ``(1 + #null >= observed) / (1 + P)``. Shuffling within folds keeps each fold's
  class balance as the stratified split gave it to the true labels; shuffling across
  folds hands the permutations unbalanced folds, which lowers their pooled score and
  makes the test anti-conservative;
* a control task (Hewitt & Liang, 2019): pseudo-attributes with the same balance,
  assigned at random per patient; the probe's score on them is what this probe,
  these features and this sample size reach on structureless labels, and
  ``selectivity = score - control``.

Speed, and the approximation it takes: the null uses the *ridge* form of the
probe (least squares on the indicator columns for a categorical attribute,
scored by AUROC). On fixed folds a ridge probe's out-of-fold predictions are a
fixed linear map of the labels, ``yhat_test = mean(y_train) + H_f y_train`` with
``H_f`` depending only on the features, so a thousand permutations are one
matrix product per fold (chunked) instead of a thousand model fits: 0.03 s of CPU
for 1000 permutations of 293 rows x 96 features, against 3.4 s refitting the ridge
probe per permutation and 6.4 s refitting the logistic one (measured on the bundled
sample). The test is an exact permutation test *of the ridge statistic* (its
observed value and its null come from the same procedure); for a continuous
attribute that is the reported probe itself, for a categorical one the reported
logistic AUROC and the ridge AUROC are two linear read-outs of the same folds that
agree closely (both are kept in ``ProbeResult``). The penalty of each fold is
chosen once, by inner CV on the true labels, and reused for every permutation
(re-selecting it per permutation would cost one inner CV per permutation); this
makes the test very slightly optimistic, which the synthetic false-positive test
bounds.

The many small matrix products run on one BLAS thread: faster than several for
these sizes, and much faster on a shared machine where threads fight over cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from mmaudit.stats import Estimate, auroc, auroc_bootstrap, bootstrap_ci, permutation_pvalue

__all__ = [
    "LOGISTIC_GRID",
    "RIDGE_GRID",
    "ProbeError",
    "ProbeResult",
    "auroc_columns",
    "fit_logistic",
    "make_folds",
    "pool",
    "r2_columns",
    "run_probe",
    "score_estimate",
]

ProbeKind = Literal["categorical", "continuous"]

# L2 strength for the mean log-loss + lam/2 ||w||^2 (features standardised)
LOGISTIC_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# ridge penalty per training row: ||y - Xw||^2 + lam * n_train * ||w||^2
RIDGE_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
_CHUNK = 256  # permutations per matrix product (bounds memory at chunk x n x levels)


class ProbeError(ValueError):
    """A data condition that makes a probe meaningless; the message goes into the report."""


@dataclass
class ProbeResult:
    """One probe of one attribute on one embedding.

    Attributes:
        kind: categorical or continuous.
        metric: "auroc" (categorical) or "r2" (continuous).
        score: the reported probe score (logistic AUROC / ridge R^2), out of fold.
        labels: the encoded attribute, (n,) level codes or values.
        oof: out-of-fold probe outputs: (n,) for two levels or continuous, (n, K) otherwise.
        test_score: the ridge statistic the permutation test is about (== score if ridge).
        null: ridge statistic under each permutation, (P,).
        p_value: permutation p-value of ``test_score`` (NaN when no permutations ran).
        control: mean probe score on the control pseudo-attributes (NaN if none).
        levels: the level names (categorical).
        n_folds: outer folds actually used.
        lambdas: regularisation chosen per outer fold (logistic, or ridge if continuous).
        permuted: "patients" or "rows" (what the null shuffles).
    """

    kind: ProbeKind
    metric: str
    score: float
    labels: np.ndarray
    oof: np.ndarray
    test_score: float
    null: np.ndarray
    p_value: float
    control: float
    levels: list[str] = field(default_factory=list)
    n_folds: int = 0
    lambdas: list[float] = field(default_factory=list)
    permuted: str = "rows"

    @property
    def selectivity(self) -> float:
        return self.score - self.control

    @property
    def chance(self) -> float:
        return 0.5 if self.metric == "auroc" else 0.0

    def null_band(self, alpha: float = 0.05) -> tuple[float, float]:
        """The central 1 - alpha range of the null (NaN without permutations)."""
        valid = self.null[np.isfinite(self.null)]
        if valid.size == 0:
            return math.nan, math.nan
        lo, hi = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
        return float(lo), float(hi)


# ------------------------------------------------------------------------- inputs


def pool(x: np.ndarray) -> np.ndarray:
    """A (N, D) float64 matrix from a layer output: token outputs (N, T, D) are mean-pooled
    over tokens, feature maps (N, C, H, W) averaged over space, anything else flattened."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x.mean(axis=1)
    elif x.ndim == 4:
        x = x.mean(axis=(2, 3))
    elif x.ndim != 2:
        x = x.reshape(x.shape[0], -1)
    return x.astype(np.float64, copy=False)


def _codes(values: np.ndarray) -> np.ndarray:
    _, inv = np.unique(np.asarray(values), return_inverse=True)
    return np.asarray(inv).reshape(-1)


def make_folds(
    strata: np.ndarray, groups: np.ndarray | None, n_folds: int, seed: int
) -> np.ndarray:
    """Fold id (0..k-1) per row, stratified by ``strata`` and, with ``groups``, grouped.

    Every group (patient) lies in one fold. Each group takes its most common stratum
    (an attribute can vary within a patient);
    within a stratum the groups are shuffled (seeded), ordered largest first and dealt
    to the fold holding the fewest rows of that stratum (fewest rows overall on ties) --
    the greedy rule of ``StratifiedGroupKFold``, without its per-call cost. The fold
    count drops to what the rarest stratum allows; ProbeError below two folds.
    """
    strata = _codes(strata)
    n = strata.shape[0]
    units = _codes(groups) if groups is not None else np.arange(n)
    n_units = int(units.max()) + 1 if n else 0
    n_strata = int(strata.max()) + 1 if n else 0
    pairs = np.zeros((n_units, n_strata), dtype=np.int64)
    np.add.at(pairs, (units, strata), 1)
    unit_stratum = pairs.argmax(axis=1)
    per_stratum = (pairs > 0).sum(axis=0)  # units holding rows of each stratum
    rarest = int(per_stratum.min()) if n_strata else 0
    k = int(min(n_folds, rarest, n_units))
    if k < 2:
        unit = "patients" if groups is not None else "rows"
        raise ProbeError(
            f"fewer samples than folds: the rarest level has {rarest} {unit}; a"
            f" cross-validated probe needs at least 2 (asked for {n_folds} folds)"
        )
    rng = np.random.default_rng(seed)
    size = np.bincount(units, minlength=n_units)
    fold_of_unit = np.empty(n_units, dtype=np.int64)
    fold_rows = np.zeros(k, dtype=np.int64)
    for s in range(n_strata):
        members = rng.permutation(np.flatnonzero(unit_stratum == s))
        members = members[np.argsort(-size[members], kind="stable")]
        count = np.zeros(k, dtype=np.int64)
        for u in members:
            f = int(np.lexsort((np.arange(k), fold_rows, count))[0])
            fold_of_unit[u] = f
            count[f] += size[u]
            fold_rows[f] += size[u]
    return fold_of_unit[units]


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0)
    sd = train.std(axis=0)
    sd[sd < 1e-12] = 1.0
    return (train - mean) / sd, (test - mean) / sd


# ------------------------------------------------------------------------- scores


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


# ------------------------------------------------------------------------- fitting


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


def _per_fold(x: np.ndarray | list[np.ndarray], f: int) -> np.ndarray:
    """The features of fold ``f``: one matrix for every fold, or one matrix per fold."""
    return x[f] if isinstance(x, list) else x


def _logistic_oof(
    x: np.ndarray | list[np.ndarray], y: np.ndarray, folds: np.ndarray, lams: list[float]
) -> np.ndarray:
    """Out-of-fold decision values (n, c) of the logistic probe with one lambda per fold."""
    out = np.zeros(y.shape, dtype=np.float64)
    for f, lam in enumerate(lams):
        test = folds == f
        xf = _per_fold(x, f)
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
class _RidgeFold:
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


def _ridge_fold(x: np.ndarray, test: np.ndarray, lam: float) -> _RidgeFold:
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
        return _RidgeFold(test, left @ right, None)
    return _RidgeFold(test, left, right)


def _ridge_oof(
    x: np.ndarray | list[np.ndarray], y: np.ndarray, folds: np.ndarray, lams: list[float]
) -> np.ndarray:
    out = np.zeros(y.shape, dtype=np.float64)
    for f, lam in enumerate(lams):
        fold = _ridge_fold(_per_fold(x, f), folds == f, lam)
        out[fold.test] = fold.predict(y[~fold.test])
    return out


def _fold_score(kind: ProbeKind, y: np.ndarray, pred: np.ndarray) -> float:
    """R^2 (continuous), AUROC (one indicator column) or macro one-vs-rest AUROC."""
    if kind == "continuous":
        return float(r2_columns(y, pred)[0])
    scores = auroc_columns(y, pred)
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else math.nan


def _select(
    kind: ProbeKind,
    model: Literal["logistic", "ridge"],
    x: np.ndarray,
    y: np.ndarray,
    strata: np.ndarray,
    groups: np.ndarray | None,
    inner_folds: int,
    seed: int,
) -> float:
    """The grid value with the best inner-CV score (ties: the stronger penalty)."""
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
        preds = [_ridge_oof(x, y, inner, [lam] * k) for lam in grid]
    best, best_score = default, -math.inf
    for lam, pred in zip(grid, preds, strict=True):
        score = _fold_score(kind, y, pred)
        if np.isfinite(score) and score > best_score + 1e-12:
            best, best_score = lam, score
    return best


# ------------------------------------------------------------------------- nulls


def _constant_within(values: np.ndarray, groups: np.ndarray) -> bool:
    g = _codes(groups)
    order = np.argsort(g, kind="stable")
    gs, vs = g[order], np.asarray(values)[order]
    same_group = gs[1:] == gs[:-1]
    return bool(np.all(vs[1:][same_group] == vs[:-1][same_group]))


def _shuffler(
    values: np.ndarray, folds: np.ndarray, groups: np.ndarray | None, by_patient: bool
) -> Callable[[np.random.Generator, int], np.ndarray]:
    """A function (rng, b) -> b shuffled copies (b, n) of ``values``.

    Labels move only *within* an outer fold (between its patients when the attribute is
    constant within each patient, else between its rows). Each fold therefore keeps its
    class balance / mean, exactly as the stratified folds gave it to the true labels;
    shuffling across folds would hand the permutations unbalanced folds, which lowers
    their pooled cross-validated score and makes the test anti-conservative.
    """
    values = np.asarray(values)
    if by_patient and groups is not None:
        unit = _codes(groups)
        first = np.unique(unit, return_index=True)[1]
        unit_values, unit_folds = values[first], folds[first]
    else:
        unit = np.arange(values.shape[0])
        unit_values, unit_folds = values, folds
    home = np.argsort(unit_folds, kind="stable")  # units sorted by fold

    def draw(rng: np.random.Generator, b: int) -> np.ndarray:
        keys = unit_folds[home][None, :] + rng.random((b, home.size))
        moved = home[np.argsort(keys, axis=1)]  # a random order of each fold's units
        out = np.empty((b, home.size), dtype=unit_values.dtype)
        out[:, home] = unit_values[moved]
        return out[:, unit]

    return draw


def _indicator(labels: np.ndarray, n_levels: int) -> np.ndarray:
    """Probe targets: one 0/1 column (level 1) for two levels, one-hot otherwise."""
    if n_levels == 2:
        return (labels == 1).astype(np.float64)[:, None]
    return (labels[:, None] == np.arange(n_levels)[None, :]).astype(np.float64)


def _null_scores(
    kind: ProbeKind,
    maps: list[_RidgeFold],
    labels_perm: np.ndarray,
    n_levels: int,
) -> np.ndarray:
    """Ridge statistic for each row of ``labels_perm`` (P, n): one product per fold."""
    n_perm, n = labels_perm.shape
    if kind == "continuous":
        ys = labels_perm.T  # (n, P)
        pred = np.empty_like(ys)
        for fold in maps:
            pred[fold.test] = fold.predict(ys[~fold.test])
        return r2_columns(ys, pred)
    cols = 1 if n_levels == 2 else n_levels
    if n_levels == 2:
        ys = (labels_perm.T == 1).astype(np.float64)  # (n, P)
    else:
        ys = (labels_perm.T[:, :, None] == np.arange(n_levels)).reshape(n, n_perm * cols)
        ys = ys.astype(np.float64)
    pred = np.empty_like(ys)
    for fold in maps:
        pred[fold.test] = fold.predict(ys[~fold.test])
    scores = auroc_columns(ys, pred)
    if n_levels == 2:
        return scores
    return np.nanmean(scores.reshape(n_perm, cols), axis=1)


# ------------------------------------------------------------------------- the probe


def _encode(values: np.ndarray, kind: ProbeKind) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels, strata, levels): level codes or values, the strata folds balance, level names."""
    if kind == "categorical":
        uniq, labels = np.unique(np.asarray(values).astype(str), return_inverse=True)
        levels = [str(u) for u in uniq]
        if len(levels) < 2:
            only = levels[0] if levels else "none"
            raise ProbeError(f"one level only ({only}): nothing to probe")
        labels = np.asarray(labels).reshape(-1)
        return labels, labels, levels
    labels = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(labels)):
        raise ProbeError("the attribute has NaN values (drop them first)")
    if float(np.std(labels)) == 0.0:
        raise ProbeError("the attribute is constant: nothing to probe")
    strata = np.searchsorted(np.quantile(labels, [0.2, 0.4, 0.6, 0.8]), labels, side="right")
    if np.bincount(strata).min() < 2:
        strata = (labels > np.median(labels)).astype(np.int64)
    return labels, strata, []


def run_probe(
    x: np.ndarray,
    values: np.ndarray,
    kind: ProbeKind,
    *,
    groups: np.ndarray | None = None,
    n_folds: int = 5,
    inner_folds: int = 3,
    n_permutations: int = 1000,
    n_control: int = 5,
    seed: int = 0,
    fold_transform: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]] | None = None,
) -> ProbeResult:
    """Probe attribute ``values`` (n,) from embeddings ``x`` (n, ...) with its null and control.

    ``fold_transform(train_mask)`` may return a feature map fitted on an outer fold's
    training rows only and applied to all rows before that fold is fitted and scored -- e.g.
    a concept eraser, so that "what is left after erasure" is measured out of sample (an
    eraser fitted on every row makes the held-out rows look anti-correlated, pushing a
    cross-validated score below chance).

    Rows with a missing attribute must be dropped by the caller. Raises ProbeError (a
    clear message for the report) for one level, a constant attribute, non-finite
    features, or too few samples for two folds.
    """
    from threadpoolctl import threadpool_limits

    x = pool(x)
    if not np.all(np.isfinite(x)):
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ProbeError(f"the embedding has NaN or infinite values in {bad} rows")
    labels, strata, levels = _encode(values, kind)
    n_levels = len(levels)
    y = _indicator(labels, n_levels) if kind == "categorical" else labels[:, None]
    folds = make_folds(strata, groups, n_folds, seed)
    k = int(folds.max()) + 1
    xs: np.ndarray | list[np.ndarray] = x
    if fold_transform is not None:
        xs = [np.asarray(fold_transform(folds != f)(x), dtype=np.float64) for f in range(k)]
    by_patient = groups is not None and _constant_within(labels, groups)
    shuffle = _shuffler(labels, folds, groups, by_patient)
    # many small matrix products: one BLAS thread is faster for them than several (5-20x
    # on a busy 2-core machine, where threads fight over the cores)
    with threadpool_limits(limits=1, user_api="blas"):
        lam_ridge, lam_logistic = [], []
        for f in range(k):
            train = folds != f
            g_tr = groups[train] if groups is not None else None
            args = (_per_fold(xs, f)[train], y[train], strata[train], g_tr, inner_folds, seed + 1)
            lam_ridge.append(_select(kind, "ridge", *args))
            if kind == "categorical":
                lam_logistic.append(_select(kind, "logistic", *args))
        maps = [_ridge_fold(_per_fold(xs, f), folds == f, lam_ridge[f]) for f in range(k)]
        ridge_oof = np.empty_like(y)
        for fold in maps:
            ridge_oof[fold.test] = fold.predict(y[~fold.test])
        main_oof = ridge_oof
        if kind == "categorical":
            main_oof = _logistic_oof(xs, y, folds, lam_logistic)
        control = math.nan
        if n_control > 0:
            scores = []
            for pseudo in shuffle(np.random.default_rng([seed, 13]), n_control):
                if kind == "categorical":
                    py = _indicator(pseudo, n_levels)
                    pred = _logistic_oof(xs, py, folds, lam_logistic)
                else:
                    py = pseudo[:, None]
                    pred = _ridge_oof(xs, py, folds, lam_ridge)
                scores.append(_fold_score(kind, py, pred))
            control = float(np.nanmean(scores))
        test_score = _fold_score(kind, y, ridge_oof)
        score = _fold_score(kind, y, main_oof)
        null = np.empty(0)
        if n_permutations > 0:
            rng = np.random.default_rng([seed, 11])
            parts = []
            for start in range(0, n_permutations, _CHUNK):
                perm = shuffle(rng, min(_CHUNK, n_permutations - start))
                parts.append(_null_scores(kind, maps, perm, n_levels))
            null = np.concatenate(parts)
    p = permutation_pvalue(test_score, null, "greater") if null.size else math.nan
    return ProbeResult(
        kind=kind,
        metric="auroc" if kind == "categorical" else "r2",
        score=float(score),
        labels=labels,
        oof=main_oof[:, 0] if main_oof.shape[1] == 1 else main_oof,
        test_score=float(test_score),
        null=null,
        p_value=float(p),
        control=control,
        levels=levels,
        n_folds=k,
        lambdas=[float(v) for v in (lam_logistic if kind == "categorical" else lam_ridge)],
        permuted="patients" if by_patient else "rows",
    )


def score_estimate(
    result: ProbeResult,
    groups: np.ndarray | None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Estimate:
    """Bootstrap CI (by patient) of the probe score over its out-of-fold predictions."""
    boot = {"groups": groups, "n_boot": n_boot, "alpha": alpha, "seed": seed}
    if result.kind == "continuous":

        def r2(y: np.ndarray, pred: np.ndarray) -> float:
            return float(r2_columns(y[:, None], pred[:, None])[0])

        return bootstrap_ci(r2, result.labels, result.oof, **boot)
    if len(result.levels) == 2:
        return auroc_bootstrap(result.labels == 1, result.oof, **boot)
    n_levels = len(result.levels)
    return bootstrap_ci(lambda lab, s: _macro(lab, s, n_levels), result.labels, result.oof, **boot)
