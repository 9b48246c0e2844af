"""What one linear probe returns (``ProbeResult``) and the error that makes a probe
meaningless (``ProbeError``); see ``mmaudit.methods.probes`` for how a probe is run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = [
    "ProbeError",
    "ProbeKind",
    "ProbeResult",
]

ProbeKind = Literal["categorical", "continuous"]


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
