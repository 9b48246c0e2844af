"""Linear centred kernel alignment (CKA) between two representations of the same samples.

Used by ``mmaudit diff`` to ask whether a retrained checkpoint represents the data the
same way (Kornblith et al. 2019). The debiased form (Nguyen et al. 2021) removes the
positive bias of the plain estimator at small n. Written in numpy on feature space
(d x d products), so it never builds an n x n Gram matrix.
"""

from __future__ import annotations

import numpy as np


def _debiased_dot(
    xty: float, rows_x: np.ndarray, rows_y: np.ndarray, norm_x: float, norm_y: float, n: int
) -> float:
    """Unbiased HSIC numerator from feature-space quantities."""
    return float(xty - n / (n - 2.0) * rows_x.dot(rows_y) + norm_x * norm_y / ((n - 1) * (n - 2)))


def linear_cka(x: np.ndarray, y: np.ndarray, debiased: bool = False) -> float:
    """CKA of ``x`` (n, d1) and ``y`` (n, d2), rows the same samples; 1 = same geometry up to
    rotation and isotropic scaling. NaN when a representation is constant."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same samples: {x.shape[0]} vs {y.shape[0]} rows")
    n = x.shape[0]
    x = x.reshape(n, -1) - x.reshape(n, -1).mean(0, keepdims=True)
    y = y.reshape(n, -1) - y.reshape(n, -1).mean(0, keepdims=True)
    cross = float(np.linalg.norm(x.T @ y) ** 2)
    self_x = float(np.linalg.norm(x.T @ x))
    self_y = float(np.linalg.norm(y.T @ y))
    if debiased:
        if n < 4:
            return float("nan")
        rows_x = np.einsum("ij,ij->i", x, x)
        rows_y = np.einsum("ij,ij->i", y, y)
        norm_x, norm_y = float(rows_x.sum()), float(rows_y.sum())
        cross = _debiased_dot(cross, rows_x, rows_y, norm_x, norm_y, n)
        sx = _debiased_dot(self_x**2, rows_x, rows_x, norm_x, norm_x, n)
        sy = _debiased_dot(self_y**2, rows_y, rows_y, norm_y, norm_y, n)
        if sx <= 0 or sy <= 0:
            return float("nan")
        self_x, self_y = float(np.sqrt(sx)), float(np.sqrt(sy))
    if self_x == 0 or self_y == 0:
        return float("nan")
    return cross / (self_x * self_y)
