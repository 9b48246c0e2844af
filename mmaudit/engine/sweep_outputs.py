"""What one sweep over the dataset produces: ``SweepResult`` (logits and captured layer
outputs in dataset order), the ``LOGITS`` key that names the logits among a sweep's outputs,
and ``logits_to_probs``.

Kept apart from ``InferenceCache`` because the per-rank shard files and the non-finite
output reporting name sweep outputs too, and checks read results without running anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# the key of the logits among a sweep's outputs (layer outputs are keyed by layer name)
LOGITS = "__logits__"


@dataclass
class SweepResult:
    """What one pass over the dataset produced, in dataset order."""

    logits: np.ndarray
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def probs(self) -> np.ndarray:
        return logits_to_probs(self.logits)


def logits_to_probs(logits: np.ndarray, kind: str = "auto") -> np.ndarray:
    """Sigmoid for one column (binary) or multilabel, softmax for several classes."""
    if kind == "multilabel" or (kind == "auto" and logits.shape[1] == 1):
        return 1.0 / (1.0 + np.exp(-logits))
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
