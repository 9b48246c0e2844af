"""Classification scores on plain arrays (no resampling): the performance check computes them with
bootstrap CIs, and ``diff`` recomputes them on the per-sample files of two reports."""

from __future__ import annotations

import numpy as np

from mmaudit.methods.stats import auroc


def auprc(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision (sklearn); NaN when ``y`` holds one class."""
    from sklearn.metrics import average_precision_score

    if len(np.unique(y)) < 2:
        return float("nan")
    return float(average_precision_score(y, score))


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Share of ``pred`` equal to ``y``; NaN on no rows."""
    return float(np.mean(y == pred)) if len(y) else float("nan")


def macro_auroc(y: np.ndarray, prob: np.ndarray) -> float:
    """Mean one-vs-rest AUROC over the classes present (sklearn's ovr macro average)."""
    scores = [auroc((y == k).astype(int), prob[:, k]) for k in range(prob.shape[1])]
    scores = [s for s in scores if not np.isnan(s)]
    return float(np.mean(scores)) if scores else float("nan")


def macro_auprc(y: np.ndarray, prob: np.ndarray) -> float:
    """Mean one-vs-rest average precision over the classes present (``y``: labels, or a
    0/1 indicator matrix for multilabel)."""
    onehot = y if y.ndim == 2 else (y[:, None] == np.arange(prob.shape[1])[None, :])
    scores = [auprc(onehot[:, k].astype(int), prob[:, k]) for k in range(prob.shape[1])]
    scores = [s for s in scores if not np.isnan(s)]
    return float(np.mean(scores)) if scores else float("nan")
