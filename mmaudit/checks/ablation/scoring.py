"""Scoring of the ablation check: every metric of every model variant (coalition, EMAP
projection, robustness mix) at once, vectorised because the joint bootstrap scores every
variant on every resample."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from mmaudit.engine.sweep_outputs import logits_to_probs

MetricName = Literal["auroc", "auprc", "accuracy", "balanced_accuracy", "f1", "log_loss", "ece"]
METRICS: tuple[str, ...] = (
    "auroc",
    "auprc",
    "accuracy",
    "balanced_accuracy",
    "f1",
    "log_loss",
    "ece",
)
LOWER_IS_BETTER = frozenset({"log_loss", "ece"})


def _binary_table(
    y: np.ndarray, p: np.ndarray, which: tuple[str, ...], threshold: float, bins: int
) -> np.ndarray:
    """Binary metrics of every row of ``p`` (C, n) against ``y`` (n,): (C, len(which)).

    Vectorised over rows because the bootstrap evaluates every variant on every resample;
    undefined values (one class) are NaN, never an exception. One sort per row serves both
    AUROC (Mann-Whitney with average ranks for ties, = sklearn) and AUPRC (sklearn's
    step-wise average precision, one step per distinct score); ECE uses equal-width bins
    as ``stats.expected_calibration_error``.
    """
    y = np.asarray(y).astype(bool)
    c, n = p.shape
    n1 = int(y.sum())
    n0 = n - n1
    out = np.full((c, len(which)), np.nan)
    if n == 0:
        return out
    if {"accuracy", "balanced_accuracy", "f1"} & set(which):
        pred = p >= threshold
        tp = (pred & y).sum(1)
        fp = (pred & ~y).sum(1)
        fn = n1 - tp
    if n1 and {"auroc", "auprc"} & set(which):
        order = np.argsort(p, axis=1)
        ps = np.take_along_axis(p, order, 1)
        ys = y[order]
        idx = np.broadcast_to(np.arange(n), (c, n))
        is_start = np.ones((c, n), dtype=bool)
        is_start[:, 1:] = ps[:, 1:] != ps[:, :-1]
        start = np.maximum.accumulate(np.where(is_start, idx, 0), axis=1)
    for k, name in enumerate(which):
        if name == "auroc":
            if n1 and n0:
                is_end = np.ones((c, n), dtype=bool)
                is_end[:, :-1] = is_start[:, 1:]
                end = np.minimum.accumulate(np.where(is_end, idx, n)[:, ::-1], axis=1)[:, ::-1]
                ranks = (start + end) / 2.0 + 1.0
                out[:, k] = ((ranks * ys).sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)
        elif name == "auprc":
            if n1:
                cum = np.cumsum(ys, axis=1)
                before = np.take_along_axis(cum - ys, start, 1)  # positives below the tie group
                precision = (n1 - before) / (n - start)
                out[:, k] = (precision * ys).sum(1) / n1
        elif name == "accuracy":
            out[:, k] = (pred == y).mean(1)
        elif name == "balanced_accuracy":
            if n1 and n0:
                tn = (~pred & ~y).sum(1)
                out[:, k] = (tp / n1 + tn / n0) / 2
        elif name == "f1":
            den = 2 * tp + fp + fn
            out[:, k] = np.where(den > 0, 2 * tp / np.maximum(den, 1), np.nan)
        elif name == "log_loss":
            eps = np.finfo(float).eps
            q = np.clip(p, eps, 1 - eps)
            out[:, k] = -np.where(y, np.log(q), np.log1p(-q)).mean(1)
        elif name == "ece":
            out[:, k] = _binned_ece(y, p, bins)
    return out


def _binned_ece(correct: np.ndarray, conf: np.ndarray, bins: int) -> np.ndarray:
    """Row-wise ECE of (C, n) confidences; ``correct`` is (n,) or (C, n)."""
    c, n = conf.shape
    idx = np.minimum((conf * bins).astype(np.int64), bins - 1) + (np.arange(c) * bins)[:, None]
    hits = np.broadcast_to(correct, conf.shape).astype(float)
    acc = np.bincount(idx.ravel(), weights=hits.ravel(), minlength=c * bins)
    conf_sum = np.bincount(idx.ravel(), weights=conf.ravel(), minlength=c * bins)
    return np.abs(acc - conf_sum).reshape(c, bins).sum(1) / n


class Scorer:
    """Every metric of this check, for a stack of predictions (one row per model variant).

    ``probs`` is (C, n) positive-class probabilities for a binary target, (C, n, K) class
    (multiclass, softmax) or label (multilabel, sigmoid) probabilities otherwise. Multiclass
    AUROC / AUPRC / F1 are macro one-vs-rest, ECE is top-label; multilabel metrics are the
    mean over labels. Lower-is-better metrics (log loss, ECE) are reported as they are;
    :meth:`oriented` flips their sign so that "higher = better" holds for the game values.
    """

    def __init__(self, y: np.ndarray, kind: str, threshold: float = 0.5, bins: int = 15) -> None:
        self.y = np.asarray(y)
        self.kind = kind
        self.threshold = threshold
        self.bins = bins

    def table(
        self, probs: np.ndarray, rows: np.ndarray | None = None, which: tuple[str, ...] = METRICS
    ) -> np.ndarray:
        """(C, len(which)) metric values, on ``rows`` of the data when given (a resample)."""
        y = self.y if rows is None else self.y[rows]
        p = probs if rows is None else probs[:, rows]
        if self.kind == "binary":
            return _binary_table(y, p, which, self.threshold, self.bins)
        if self.kind == "multilabel":
            per_label = [
                _binary_table(y[:, k], p[:, :, k], which, self.threshold, self.bins)
                for k in range(y.shape[1])
            ]
            return nanmean(np.stack(per_label), axis=0)
        return self._multiclass(y.astype(np.int64), p, which)

    def _multiclass(self, y: np.ndarray, p: np.ndarray, which: tuple[str, ...]) -> np.ndarray:
        c, n, k_classes = p.shape
        out = np.full((c, len(which)), np.nan)
        if n == 0:
            return out
        pred = p.argmax(2)
        for k, name in enumerate(which):
            if name in ("auroc", "auprc"):
                per = [
                    _binary_table((y == j).astype(int), p[:, :, j], (name,), 0.5, self.bins)[:, 0]
                    for j in range(k_classes)
                ]
                out[:, k] = nanmean(np.stack(per), axis=0)
            elif name == "accuracy":
                out[:, k] = (pred == y).mean(1)
            elif name == "balanced_accuracy":
                recalls = [
                    ((pred == j) & (y == j)).sum(1) / (y == j).sum()
                    for j in range(k_classes)
                    if (y == j).any()
                ]
                out[:, k] = np.mean(recalls, axis=0)
            elif name == "f1":
                scores = []
                for j in range(k_classes):
                    tp = ((pred == j) & (y == j)).sum(1)
                    den = 2 * tp + ((pred == j) & (y != j)).sum(1) + ((pred != j) & (y == j)).sum(1)
                    scores.append(np.where(den > 0, 2 * tp / np.maximum(den, 1), np.nan))
                out[:, k] = nanmean(np.stack(scores), axis=0)
            elif name == "log_loss":
                eps = np.finfo(float).eps
                picked = np.take_along_axis(p, y[None, :, None], 2)[:, :, 0]
                out[:, k] = -np.log(np.clip(picked, eps, 1.0)).mean(1)
            elif name == "ece":
                out[:, k] = _binned_ece(pred == y, p.max(2), self.bins)
        return out

    @staticmethod
    def oriented(values: Any, which: tuple[str, ...] | str) -> Any:
        """``values`` with the sign of lower-is-better metrics flipped: ``which`` names the
        metric of every entry of the last axis, or the one metric of all of ``values``."""
        if isinstance(which, str):
            return -values if which in LOWER_IS_BETTER else values
        sign = np.array([-1.0 if m in LOWER_IS_BETTER else 1.0 for m in which])
        return np.asarray(values) * sign


def nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """Mean ignoring NaN; NaN (no warning) where every entry is NaN."""
    ok = np.isfinite(x)
    count = ok.sum(axis)
    total = np.where(ok, x, 0.0).sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def predicted_probs(logits: np.ndarray, kind: str) -> np.ndarray:
    """What :class:`Scorer` takes for one variant: (n,) binary, (n, K) otherwise (float64, so
    that large logits do not saturate into artificial ties)."""
    logits = np.asarray(logits, dtype=np.float64)
    if kind == "binary":
        probs = logits_to_probs(logits)
        return probs[:, -1] if probs.shape[1] > 1 else probs[:, 0]
    if kind == "multiclass" and logits.shape[1] > 1:
        return logits_to_probs(logits, "multiclass")
    return logits_to_probs(logits, "multilabel")
