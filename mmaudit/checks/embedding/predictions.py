"""The model's predictions in the terms the maps and exemplars show: predicted level
names, correctness, how confident each error is, and the score."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mmaudit.checks.embedding.inputs import EmbeddingInputs


@dataclass
class Predictions:
    """Predicted level names, correctness and how confident each error is."""

    names: np.ndarray
    correct: np.ndarray
    error_confidence: np.ndarray
    score: np.ndarray


def predictions(inp: EmbeddingInputs) -> Predictions | None:
    """Predictions from the probabilities for the target kind (None without probabilities)."""
    if inp.probs is None:
        return None
    prob = np.asarray(inp.probs, dtype=float)
    y = np.asarray(inp.target)
    names_ = list(inp.class_names)
    if y.ndim == 2:
        pred = prob >= 0.5
        correct = (pred == (y == 1)).all(1)
        err = np.where(pred != (y == 1), np.abs(prob - y), 0.0).max(1)
        label = np.array(
            [
                "+".join(n for n, on in zip(names_, row, strict=False) if on) or "none"
                for row in pred
            ],
            dtype=object,
        )
        return Predictions(label, correct, np.where(correct, 0.0, err), prob.max(1))
    if inp.target_kind == "multiclass" and prob.shape[1] > 1:
        pred_i = prob.argmax(1)
        conf = prob.max(1)
    else:
        score = prob[:, -1]
        pred_i = (score >= 0.5).astype(np.int64)
        conf = np.abs(score - 0.5) * 2
    correct = pred_i == y
    label = np.array([names_[i] if i < len(names_) else str(i) for i in pred_i], dtype=object)
    score = prob[:, -1] if prob.shape[1] <= 2 else prob.max(1)
    return Predictions(label, correct, np.where(correct, 0.0, conf), score)
