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

Beyond the target (``within``: the target class of each row). An attribute associated
with the target (a site with a higher prevalence) is decodable from any layer that
encodes the target, through the target alone. Given ``within``, the probe asks whether
the layer carries the attribute *beyond* the target -- a conditional-independence test
of attribute and embedding given the target class:

* features: the layer minus its per-class mean over each outer fold's training rows,
  plus class indicator columns (so the probe cannot score through the class means and
  the logistic probe still fits a per-class intercept);
* score: categorical, the AUROC over pairs of rows *from the same target class*, pooled
  over classes (``sum_c U_c / sum_c n1_c n0_c``; macro over levels for more than two);
  continuous, the R^2 of the attribute's deviations from its class mean by the probe's
  deviations from its class mean (``r2_columns_within``). Per-class offsets of the
  probe output count for nothing, so the target alone scores chance (0.5 / 0);
* null: the attribute is shuffled within each (outer fold x target class) block, so every
  permutation keeps each fold's per-class balance and the attribute's association with
  the target; only its link to the embedding *within* a class is broken. Folds are
  stratified by attribute x class where the rarest cell allows the folds, else by
  attribute. With patients as units, a patient whose studies differ in class moves with
  the class of its first study (the per-class balance is then kept approximately).

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

from mmaudit.methods.stats import (
    Estimate,
    auroc,
    auroc_bootstrap,
    bootstrap_ci,
    bootstrap_groups,
    permutation_pvalue,
)

__all__ = [
    "LOGISTIC_GRID",
    "RIDGE_GRID",
    "ProbeError",
    "ProbeResult",
    "auroc_columns",
    "auroc_columns_within",
    "fit_logistic",
    "make_folds",
    "pool",
    "r2_columns",
    "r2_columns_within",
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
        within: target class code per row when the score, null and control are within
            target classes (beyond the target, see the module docstring); None: marginal.
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
    within: np.ndarray | None = None

    @property
    def conditional(self) -> bool:
        """Whether the score is within target classes (beyond the target)."""
        return self.within is not None

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


def _minus_class_means(values: np.ndarray, within: np.ndarray) -> np.ndarray:
    """``values`` (n, c) minus the mean of each column over the rows of the same class."""
    classes = _codes(within)
    onehot = (classes[:, None] == np.arange(int(classes.max()) + 1)[None, :]).astype(np.float64)
    means = (onehot.T @ values) / onehot.sum(axis=0)[:, None]
    return values - onehot @ means


def r2_columns_within(y: np.ndarray, pred: np.ndarray, within: np.ndarray) -> np.ndarray:
    """R^2 per column within the classes of ``within``: ``r2_columns`` of the deviations of
    ``y`` from its class means by the deviations of ``pred`` from its class means (what the
    probe explains beyond the class; per-class offsets count for nothing)."""
    return r2_columns(_minus_class_means(y, within), _minus_class_means(pred, within))


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


def _fold_score(
    kind: ProbeKind, y: np.ndarray, pred: np.ndarray, within: np.ndarray | None = None
) -> float:
    """R^2 (continuous), AUROC (one indicator column) or macro one-vs-rest AUROC; within the
    classes of ``within`` when given."""
    if kind == "continuous":
        r2 = r2_columns(y, pred) if within is None else r2_columns_within(y, pred, within)
        return float(r2[0])
    scores = auroc_columns(y, pred) if within is None else auroc_columns_within(y, pred, within)
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
        preds = [_ridge_oof(x, y, inner, [lam] * k) for lam in grid]
    best, best_score = default, -math.inf
    for lam, pred in zip(grid, preds, strict=True):
        score = _fold_score(kind, y, pred, within)
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
    values: np.ndarray, blocks: np.ndarray, groups: np.ndarray | None, by_patient: bool
) -> Callable[[np.random.Generator, int], np.ndarray]:
    """A function (rng, b) -> b shuffled copies (b, n) of ``values``.

    Labels move only *within* a block -- an outer fold, or an (outer fold x target class)
    cell for a probe beyond the target -- between its patients when the attribute is
    constant within each patient (a patient belongs to the block of its first row), else
    between its rows. Each fold therefore keeps its class balance / mean, exactly as the
    stratified folds gave it to the true labels; shuffling across folds would hand the
    permutations unbalanced folds, which lowers their pooled cross-validated score and
    makes the test anti-conservative. Blocks by target class also keep the attribute's
    association with the target in every permutation.
    """
    values = np.asarray(values)
    if by_patient and groups is not None:
        unit = _codes(groups)
        first = np.unique(unit, return_index=True)[1]
        unit_values, unit_blocks = values[first], blocks[first]
    else:
        unit = np.arange(values.shape[0])
        unit_values, unit_blocks = values, blocks
    home = np.argsort(unit_blocks, kind="stable")  # units sorted by block

    def draw(rng: np.random.Generator, b: int) -> np.ndarray:
        keys = unit_blocks[home][None, :] + rng.random((b, home.size))
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
    within: np.ndarray | None = None,
) -> np.ndarray:
    """Ridge statistic for each row of ``labels_perm`` (P, n): one product per fold; within
    the classes of ``within`` when given."""
    n_perm, n = labels_perm.shape
    if kind == "continuous":
        ys = labels_perm.T  # (n, P)
        pred = np.empty_like(ys)
        for fold in maps:
            pred[fold.test] = fold.predict(ys[~fold.test])
        return r2_columns(ys, pred) if within is None else r2_columns_within(ys, pred, within)
    cols = 1 if n_levels == 2 else n_levels
    if n_levels == 2:
        ys = (labels_perm.T == 1).astype(np.float64)  # (n, P)
    else:
        ys = (labels_perm.T[:, :, None] == np.arange(n_levels)).reshape(n, n_perm * cols)
        ys = ys.astype(np.float64)
    pred = np.empty_like(ys)
    for fold in maps:
        pred[fold.test] = fold.predict(ys[~fold.test])
    scores = auroc_columns(ys, pred) if within is None else auroc_columns_within(ys, pred, within)
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


def _beyond_target_features(x: np.ndarray, classes: np.ndarray, train: np.ndarray) -> np.ndarray:
    """The features of a probe beyond the target for one outer fold: ``x`` minus its
    per-class mean over the training rows, with class indicator columns (all but the
    first) appended."""
    n_classes = int(classes.max()) + 1
    onehot = (classes[:, None] == np.arange(n_classes)[None, :]).astype(np.float64)
    counts = np.maximum(onehot[train].sum(axis=0), 1.0)
    means = (onehot[train].T @ x[train]) / counts[:, None]
    return np.hstack([x - onehot @ means, onehot[:, 1:]])


def _check_within(kind: ProbeKind, labels: np.ndarray, classes: np.ndarray) -> None:
    """ProbeError when nothing varies within any target class."""
    if kind == "categorical":
        varies = any(np.unique(labels[classes == c]).size > 1 for c in np.unique(classes))
    else:
        deviations = _minus_class_means(labels[:, None], classes)
        varies = float(np.std(deviations)) > 0.0
    if not varies:
        raise ProbeError(
            "the attribute is constant within every target class: nothing to probe beyond"
            " the target"
        )


def _outer_folds(
    strata: np.ndarray,
    classes: np.ndarray | None,
    groups: np.ndarray | None,
    n_folds: int,
    seed: int,
) -> np.ndarray:
    """Outer folds stratified by attribute x target class when that allows as many folds as
    stratifying by the attribute alone, else by the attribute."""
    folds = make_folds(strata, groups, n_folds, seed)
    if classes is None:
        return folds
    try:
        joint = make_folds(strata * (int(classes.max()) + 1) + classes, groups, n_folds, seed)
    except ProbeError:
        return folds
    return joint if joint.max() >= folds.max() else folds


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
    within: np.ndarray | None = None,
) -> ProbeResult:
    """Probe attribute ``values`` (n,) from embeddings ``x`` (n, ...) with its null and control.

    ``within`` (n,), the target class of each row, makes the probe one *beyond the target*:
    score, null and control task within target classes (see the module docstring); the
    default None probes the attribute marginally.

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
    classes = _codes(within) if within is not None else None
    if classes is not None:
        _check_within(kind, labels, classes)
    folds = _outer_folds(strata, classes, groups, n_folds, seed)
    k = int(folds.max()) + 1
    xs: np.ndarray | list[np.ndarray] = x
    if fold_transform is not None or classes is not None:
        xs = []
        for f in range(k):
            train = folds != f
            xf = x if fold_transform is None else fold_transform(train)(x)
            xf = np.asarray(xf, dtype=np.float64)
            xs.append(xf if classes is None else _beyond_target_features(xf, classes, train))
    blocks = folds if classes is None else folds * (int(classes.max()) + 1) + classes
    by_patient = groups is not None and _constant_within(labels, groups)
    shuffle = _shuffler(labels, blocks, groups, by_patient)
    # many small matrix products: one BLAS thread is faster for them than several (5-20x
    # on a busy 2-core machine, where threads fight over the cores)
    with threadpool_limits(limits=1, user_api="blas"):
        lam_ridge, lam_logistic = [], []
        for f in range(k):
            train = folds != f
            g_tr = groups[train] if groups is not None else None
            c_tr = classes[train] if classes is not None else None
            args = (_per_fold(xs, f)[train], y[train], strata[train], g_tr, inner_folds, seed + 1)
            lam_ridge.append(_select(kind, "ridge", *args, within=c_tr))
            if kind == "categorical":
                lam_logistic.append(_select(kind, "logistic", *args, within=c_tr))
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
                scores.append(_fold_score(kind, py, pred, classes))
            control = float(np.nanmean(scores))
        test_score = _fold_score(kind, y, ridge_oof, classes)
        score = _fold_score(kind, y, main_oof, classes)
        null = np.empty(0)
        if n_permutations > 0:
            rng = np.random.default_rng([seed, 11])
            parts = []
            for start in range(0, n_permutations, _CHUNK):
                perm = shuffle(rng, min(_CHUNK, n_permutations - start))
                parts.append(_null_scores(kind, maps, perm, n_levels, classes))
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
        within=classes,
    )


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
        lab = _indicator(result.labels, len(result.levels))
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
    classes = _codes(within)
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
