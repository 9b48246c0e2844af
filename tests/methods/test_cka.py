"""Linear CKA: identity, invariances, agreement with the Gram-matrix definition, independence."""

from __future__ import annotations

import numpy as np
import pytest

from mmaudit.methods.cka import linear_cka


def gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook definition through n x n centred Gram matrices (HSIC ratio)."""
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k = h @ (x @ x.T) @ h
    l_ = h @ (y @ y.T) @ h
    return float(np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_)))


def unbiased_hsic(k: np.ndarray, l_: np.ndarray) -> float:
    """Song et al. (2012), eq. 5: the unbiased HSIC estimator on n x n kernel matrices."""
    n = len(k)
    k, l_ = k.copy(), l_.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l_, 0.0)
    one = np.ones(n)
    return float(
        (
            np.trace(k @ l_)
            + (one @ k @ one) * (one @ l_ @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ k @ l_ @ one)
        )
        / (n * (n - 3))
    )


def debiased_gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Debiased linear CKA (Nguyen et al. 2021): unbiased HSIC of linear kernels, normalised."""
    k, l_ = x @ x.T, y @ y.T
    return unbiased_hsic(k, l_) / np.sqrt(unbiased_hsic(k, k) * unbiased_hsic(l_, l_))


def test_debiased_matches_unbiased_hsic_definition() -> None:
    rng = np.random.default_rng(3)
    for n, d1, d2 in [(12, 3, 5), (40, 8, 8), (25, 30, 2)]:
        x = rng.normal(size=(n, d1)) + 2.0  # uncentred: the estimator must not care
        y = x[:, :1] @ rng.normal(size=(1, d2)) + rng.normal(size=(n, d2))
        assert linear_cka(x, y, debiased=True) == pytest.approx(debiased_gram_cka(x, y), rel=1e-9)
    assert np.isnan(linear_cka(x[:3], y[:3], debiased=True))  # needs n >= 4


def test_identity_and_invariances() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0)
    assert linear_cka(x, x, debiased=True) == pytest.approx(1.0)


def test_matches_gram_definition() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 8))
    y = x @ rng.normal(size=(8, 5)) + 0.5 * rng.normal(size=(60, 5))
    assert linear_cka(x, y) == pytest.approx(gram_cka(x, y), rel=1e-9)


def test_independent_representations_score_low_and_debiased_near_zero() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(300, 32)), rng.normal(size=(300, 32))
    assert linear_cka(x, y) < 0.2
    assert abs(linear_cka(x, y, debiased=True)) < 0.03


def test_constant_representation_is_nan() -> None:
    x = np.ones((10, 3))
    assert np.isnan(linear_cka(x, np.random.default_rng(0).normal(size=(10, 3))))
