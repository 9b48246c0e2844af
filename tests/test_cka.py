"""Linear CKA: identity, invariances, agreement with the Gram-matrix definition, independence."""

from __future__ import annotations

import numpy as np
import pytest

from mmaudit.cka import linear_cka


def gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook definition through n x n centred Gram matrices (HSIC ratio)."""
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k = h @ (x @ x.T) @ h
    l_ = h @ (y @ y.T) @ h
    return float(np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_)))


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
