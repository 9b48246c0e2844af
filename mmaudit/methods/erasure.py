"""Linear concept erasure: LEACE in closed form (Belrose et al., 2023).

Why: a probe that decodes an attribute from an embedding says the information is
*there*; it does not say the model *uses* it. To test use, remove the attribute
from the embedding with the smallest possible change, feed the result to the head
and see whether the predictions move. LEACE ("LEAst-squares Concept Erasure") is
that smallest change among linear erasers:

    r(x) = x - W^+ P W (x - E[X]),   W = (Sigma_XX^{1/2})^+,   P = proj onto col(W Sigma_XZ)

where ``Sigma_XZ`` is the cross-covariance between the embedding and the attribute
(one-hot for a categorical attribute, the value for a continuous one). Two defining
properties, both checked by the tests:

* *erasure*: the cross-covariance between ``r(X)`` and ``Z`` is exactly zero, so
  no linear predictor of ``Z`` from ``r(X)`` beats a constant (linear guardedness);
* *least change*: among all affine erasers with that property it minimises
  ``E ||r(X) - X||_M^2`` for every positive semi-definite ``M`` at once.

The eraser is fitted in-sample (exact on the rows it was fitted on). A comparison
eraser of the same rank (``random_subspace_eraser``) removes a random subspace of
the whitened embedding, so "erasing the attribute changed predictions" can be read
against "erasing *anything* of that size changes predictions this much".

Implemented here rather than taken from the ``concept-erasure`` package, which is
not a dependency; the formula is short and the tests check its properties.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LinearEraser", "indicator_matrix", "leace_fit", "random_subspace_eraser"]


@dataclass(frozen=True)
class LinearEraser:
    """An affine eraser ``r(x) = x - (x - mean) @ proj.T``.

    Attributes:
        mean: the embedding mean the eraser was fitted around, shape (d,).
        proj: the (d, d) oblique projection removed from the centred embedding.
        rank: the dimension of the removed subspace (0: nothing to erase).
    """

    mean: np.ndarray
    proj: np.ndarray
    rank: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Erase ``x`` (n, d); returns a new float64 array."""
        x = np.asarray(x, dtype=np.float64)
        return x - (x - self.mean) @ self.proj.T


def indicator_matrix(labels: np.ndarray) -> np.ndarray:
    """One column per level of a categorical label (n, K) in {0, 1}, levels sorted."""
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    codes = np.asarray(codes).reshape(-1)
    out = np.zeros((codes.shape[0], int(codes.max()) + 1 if codes.size else 0))
    out[np.arange(codes.shape[0]), codes] = 1.0
    return out


def _within(values: np.ndarray, strata: np.ndarray | None) -> np.ndarray:
    """``values`` centred on their stratum means (``strata`` None: on the overall mean)."""
    if strata is None:
        return values - values.mean(axis=0)
    _, codes = np.unique(np.asarray(strata), return_inverse=True)
    codes = np.asarray(codes).reshape(-1)
    counts = np.bincount(codes).astype(np.float64)
    sums = np.zeros((counts.size, values.shape[1]))
    np.add.at(sums, codes, values)
    return values - (sums / counts[:, None])[codes]


def _whitening(xc: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From centred rows: the whitening matrix ``(Sigma^{1/2})^+``, its pseudo-inverse
    ``Sigma^{1/2}``, and an orthonormal basis (d, r) of the covariance's range.

    Directions whose variance is below ``tol`` times the largest are treated as absent
    (pseudo-inverse), so collinear or dead embedding units do not blow up.
    """
    cov = xc.T @ xc / max(xc.shape[0], 1)
    evals, evecs = np.linalg.eigh(cov)
    keep = evals > tol * max(float(evals.max()), np.finfo(float).tiny)
    v = evecs[:, keep]
    root = np.sqrt(evals[keep])
    return (v / root) @ v.T, (v * root) @ v.T, v


def _check(x: np.ndarray, strata: np.ndarray | None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"need embeddings (n, d), got shape {x.shape}")
    if strata is not None and np.asarray(strata).shape[0] != x.shape[0]:
        raise ValueError("within must give one stratum per row")
    return x


def leace_fit(
    x: np.ndarray, z: np.ndarray, within: np.ndarray | None = None, tol: float = 1e-10
) -> LinearEraser:
    """The LEACE eraser of attribute ``z`` from embeddings ``x``.

    Args:
        x: embeddings (n, d).
        z: the attribute, (n,) numeric or (n, k); pass ``indicator_matrix(labels)`` for a
            categorical attribute (its k columns give rank at most k - 1 after centring).
        within: optional strata (e.g. the target classes). Covariances are then pooled
            *within* strata, so what is erased is how the embedding varies with ``z``
            among samples of the same stratum: when the attribute is associated with the
            target (a site with a higher prevalence), the target's own signal is not erased
            along with it. The guarantee becomes a zero pooled within-stratum
            cross-covariance.
        tol: relative eigenvalue / singular-value cut-off for pseudo-inverses.

    Returns:
        A ``LinearEraser`` centred on the overall mean; ``rank`` is the rank of the
        cross-covariance (0 when the attribute is constant or uncorrelated with every
        direction: nothing is erased).
    """
    x = _check(x, within)
    z = np.asarray(z, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if z.shape[0] != x.shape[0]:
        raise ValueError(f"need x (n, d) and z (n, k) with the same n; got {x.shape}, {z.shape}")
    xc, zc = _within(x, within), _within(z, within)
    whiten, unwhiten, _ = _whitening(xc, tol)
    cross = xc.T @ zc / x.shape[0]
    u, s, _ = np.linalg.svd(whiten @ cross, full_matrices=False)
    keep = s > tol * max(float(s.max()) if s.size else 0.0, np.finfo(float).tiny)
    if not s.size or float(s.max()) < 1e-12:
        keep[:] = False
    basis = u[:, keep]
    proj = unwhiten @ basis @ basis.T @ whiten
    return LinearEraser(mean=x.mean(axis=0), proj=proj, rank=int(keep.sum()))


def random_subspace_eraser(
    x: np.ndarray,
    rank: int,
    rng: np.random.Generator,
    within: np.ndarray | None = None,
    tol: float = 1e-10,
) -> LinearEraser:
    """An eraser of the same form as LEACE removing a random ``rank``-dim whitened subspace.

    The subspace is uniformly random in the whitened coordinates (whitened within
    ``within`` strata when given, as in ``leace_fit``), so it removes as much whitened
    variance as a LEACE eraser of that rank: the fair "erase something of this size"
    comparison for the used-or-only-encoded test.
    """
    x = _check(x, within)
    whiten, unwhiten, span = _whitening(_within(x, within), tol)
    rank = min(max(int(rank), 0), span.shape[1])
    mean = x.mean(axis=0)
    if rank == 0:
        return LinearEraser(mean=mean, proj=np.zeros((x.shape[1], x.shape[1])), rank=0)
    # uniformly random orthonormal directions inside the whitened span
    basis, _ = np.linalg.qr(span @ rng.standard_normal((span.shape[1], rank)))
    proj = unwhiten @ basis @ basis.T @ whiten
    return LinearEraser(mean=mean, proj=proj, rank=rank)
