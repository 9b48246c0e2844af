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

Where the pieces live: ``probe_result`` (``ProbeResult``, ``ProbeError``), ``probe_folds``
(the outer folds), ``probe_scores`` (AUROC / R^2 by column, marginal or within classes),
``probe_fitting`` (logistic and ridge fits, the inner-CV penalty), ``probe_nulls`` (the
shuffles and the ridge null), ``probe_bootstrap`` (the CI of a probe's score); this module
prepares the inputs and runs one probe.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from mmaudit.methods.probe_fitting import (
    indicator_targets,
    logistic_out_of_fold,
    per_fold_features,
    ridge_fold,
    ridge_out_of_fold,
    select_penalty,
)
from mmaudit.methods.probe_folds import level_codes, outer_folds
from mmaudit.methods.probe_nulls import constant_within, null_scores, shuffler
from mmaudit.methods.probe_result import ProbeError, ProbeKind, ProbeResult
from mmaudit.methods.probe_scores import fold_score, minus_class_means
from mmaudit.methods.stats import permutation_pvalue

__all__ = [
    "pool",
    "run_probe",
]

_CHUNK = 256  # permutations per matrix product (bounds memory at chunk x n x levels)


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
        deviations = minus_class_means(labels[:, None], classes)
        varies = float(np.std(deviations)) > 0.0
    if not varies:
        raise ProbeError(
            "the attribute is constant within every target class: nothing to probe beyond"
            " the target"
        )


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
    y = indicator_targets(labels, n_levels) if kind == "categorical" else labels[:, None]
    classes = level_codes(within) if within is not None else None
    if classes is not None:
        _check_within(kind, labels, classes)
    folds = outer_folds(strata, classes, groups, n_folds, seed)
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
    by_patient = groups is not None and constant_within(labels, groups)
    shuffle = shuffler(labels, blocks, groups, by_patient)
    # many small matrix products: one BLAS thread is faster for them than several (5-20x
    # on a busy 2-core machine, where threads fight over the cores)
    with threadpool_limits(limits=1, user_api="blas"):
        lam_ridge, lam_logistic = [], []
        for f in range(k):
            train = folds != f
            g_tr = groups[train] if groups is not None else None
            c_tr = classes[train] if classes is not None else None
            args = (
                per_fold_features(xs, f)[train],
                y[train],
                strata[train],
                g_tr,
                inner_folds,
                seed + 1,
            )
            lam_ridge.append(select_penalty(kind, "ridge", *args, within=c_tr))
            if kind == "categorical":
                lam_logistic.append(select_penalty(kind, "logistic", *args, within=c_tr))
        maps = [ridge_fold(per_fold_features(xs, f), folds == f, lam_ridge[f]) for f in range(k)]
        ridge_oof = np.empty_like(y)
        for fold in maps:
            ridge_oof[fold.test] = fold.predict(y[~fold.test])
        main_oof = ridge_oof
        if kind == "categorical":
            main_oof = logistic_out_of_fold(xs, y, folds, lam_logistic)
        control = math.nan
        if n_control > 0:
            scores = []
            for pseudo in shuffle(np.random.default_rng([seed, 13]), n_control):
                if kind == "categorical":
                    py = indicator_targets(pseudo, n_levels)
                    pred = logistic_out_of_fold(xs, py, folds, lam_logistic)
                else:
                    py = pseudo[:, None]
                    pred = ridge_out_of_fold(xs, py, folds, lam_ridge)
                scores.append(fold_score(kind, py, pred, classes))
            control = float(np.nanmean(scores))
        test_score = fold_score(kind, y, ridge_oof, classes)
        score = fold_score(kind, y, main_oof, classes)
        null = np.empty(0)
        if n_permutations > 0:
            rng = np.random.default_rng([seed, 11])
            parts = []
            for start in range(0, n_permutations, _CHUNK):
                perm = shuffle(rng, min(_CHUNK, n_permutations - start))
                parts.append(null_scores(kind, maps, perm, n_levels, classes))
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
