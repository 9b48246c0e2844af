"""The audited head's outputs as the probing check reads them: probabilities from logits,
the task AUROC, the head re-run on an erased fused embedding, and the per-sample change
between two sets of predictions (probability change, decision flips)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from mmaudit.methods.stats import auroc

if TYPE_CHECKING:
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.methods.erasure import LinearEraser


def probabilities(logits: np.ndarray, kind: str) -> np.ndarray:
    """Probabilities: softmax over several columns (multiclass, two-logit binary), else
    sigmoid (one-logit binary, multilabel)."""
    from mmaudit.engine.sweep_outputs import logits_to_probs

    if logits.shape[1] > 1 and kind in ("multiclass", "binary"):
        return logits_to_probs(logits, "multiclass")  # a two-logit binary head is a softmax
    return logits_to_probs(logits, "multilabel")


def positive_score(probs: np.ndarray) -> np.ndarray:
    """P(positive) of a binary model (one sigmoid column or the last softmax column)."""
    return probs[:, -1]


def task_auroc(y: np.ndarray, probs: np.ndarray, kind: str) -> float:
    """AUROC of the model's task: binary, macro one-vs-rest, or macro over labels."""
    if kind == "binary":
        return auroc(y, positive_score(probs))
    if kind == "multiclass":
        per = [auroc(y == k, probs[:, k]) for k in range(probs.shape[1])]
    else:
        per = [auroc(y[:, k], probs[:, k]) for k in range(probs.shape[1])]
    per = [v for v in per if math.isfinite(v)]
    return float(np.mean(per)) if per else math.nan


def prob_change(base: np.ndarray, new: np.ndarray, kind: str) -> np.ndarray:
    """Per-sample change: |dp| (binary), total variation (multiclass), mean |dp| (multilabel)."""
    if kind == "binary":
        return np.abs(positive_score(new) - positive_score(base))
    if kind == "multiclass":
        return 0.5 * np.abs(new - base).sum(axis=1)
    return np.abs(new - base).mean(axis=1)


def decision_flips(base: np.ndarray, new: np.ndarray, kind: str) -> np.ndarray:
    """Per-sample: did the decision change (threshold 0.5, arg-max, or any label)."""
    if kind == "binary":
        return (positive_score(new) >= 0.5) != (positive_score(base) >= 0.5)
    if kind == "multiclass":
        return new.argmax(axis=1) != base.argmax(axis=1)
    return ((new >= 0.5) != (base >= 0.5)).any(axis=1)


def head_probabilities(
    cache: InferenceCache, eraser: LinearEraser, x: np.ndarray, key: str, kind: str
) -> np.ndarray:
    """The head's probabilities on the erased fused embedding (encoders not re-run)."""
    erased = eraser(x).astype(np.float32)
    return probabilities(cache.logits_with_layer("embedding", erased, key=key), kind)
