"""Stage 0 of ``subgroups``: the model's probabilities and the one global decision threshold
on P(positive) at which every group's TPR and FPR are read (a binary target)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

OperatingPoint = Literal["youden", "target_fpr", "fixed"]


def probabilities(logits: np.ndarray, kind: str) -> np.ndarray:
    """Probabilities: softmax over several columns (multiclass, two-logit binary), else
    sigmoid (one-logit binary, multilabel)."""
    from mmaudit.engine.sweep_outputs import logits_to_probs

    if logits.shape[1] > 1 and kind in ("multiclass", "binary"):
        return logits_to_probs(logits, "multiclass")  # a two-logit binary head is a softmax
    return logits_to_probs(logits, "multilabel")


def positive_score(prob: np.ndarray) -> np.ndarray:
    """P(positive) of a binary target: the last probability column."""
    return prob[:, -1]


def operating_threshold(
    y: np.ndarray, score: np.ndarray, how: OperatingPoint, target_fpr: float, fixed: float
) -> float:
    """One global decision threshold on P(positive).

    youden: maximises TPR - FPR; target_fpr: the most sensitive threshold whose FPR is at
    most the target (the highest of equally sensitive ones); fixed: ``fixed``.
    """
    if how == "fixed":
        return float(fixed)
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, score, drop_intermediate=False)
    thr = np.minimum(thr, 1.0)  # sklearn's first threshold is inf (no positives)
    if how == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])
    ok = np.flatnonzero(fpr <= target_fpr)
    if not ok.size:
        return 1.0
    best = ok[tpr[ok] == tpr[ok].max()]
    return float(thr[best].max())


def rates(y: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float]:
    """(TPR, FPR) of the decision ``score >= threshold``; NaN without positives / negatives."""
    pos = y == 1
    pred = score >= threshold
    n1, n0 = int(pos.sum()), int((~pos).sum())
    tpr = float((pred & pos).sum() / n1) if n1 else math.nan
    fpr = float((pred & ~pos).sum() / n0) if n0 else math.nan
    return tpr, fpr
