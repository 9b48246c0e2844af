"""LEACE in closed form, tested against the properties that define it (Belrose et al., 2023):
the erased embedding has zero cross-covariance with the attribute (so a probe falls to chance),
and no other affine eraser with that property changes the embedding less, in any norm."""

from __future__ import annotations

import numpy as np
import pytest

from mmaudit.methods.erasure import indicator_matrix, leace_fit, random_subspace_eraser
from mmaudit.methods.probes import run_probe


def _planted(n: int, d: int, delta: float, seed: int, levels: int = 2):
    """Correlated Gaussian embeddings with attribute ``z`` shifting them along one direction
    per level by ``delta`` (noise SD 1 along it)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    z = rng.integers(0, levels, n)
    shifts = rng.normal(size=(levels, d))
    shifts /= np.linalg.norm(shifts, axis=1, keepdims=True)
    x = rng.normal(size=(n, d)) @ mix + delta * shifts[z]
    return x, z


def _cost(x: np.ndarray, erased: np.ndarray, m: np.ndarray) -> float:
    diff = x - erased
    return float(np.einsum("ij,jk,ik->", diff, m, diff) / x.shape[0])


@pytest.mark.parametrize("levels", [2, 3])
def test_cross_covariance_with_the_attribute_is_zero(levels: int) -> None:
    x, z = _planted(600, 8, 1.5, seed=levels, levels=levels)
    zz = indicator_matrix(z)
    eraser = leace_fit(x, zz)
    erased = eraser(x)
    cross = (erased - erased.mean(0)).T @ (zz - zz.mean(0)) / len(x)
    assert np.abs(cross).max() < 1e-10
    assert eraser.rank == levels - 1
    assert np.allclose(eraser(erased), erased, atol=1e-9), "an eraser is a projection"
    assert np.allclose(erased.mean(0), x.mean(0)), "the mean is kept"


def test_continuous_attribute_is_erased_with_rank_one() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    age = x @ rng.normal(size=6) + rng.normal(size=400)
    eraser = leace_fit(x, age)
    erased = eraser(x)
    assert eraser.rank == 1
    ec, ac = erased - erased.mean(0), age - age.mean()
    assert np.abs(ec.T @ ac / len(x)).max() < 1e-10
    # so the least-squares read-out of age from the erased embedding is zero
    assert np.abs(np.linalg.lstsq(ec, ac, rcond=None)[0]).max() < 1e-8


def test_leace_changes_the_embedding_least_in_every_norm() -> None:
    """Among affine erasers x - A(x - mu) with zero cross-covariance (A S_xz = S_xz), LEACE has
    the smallest E||r(x) - x||_M^2 for M = I, a random PSD M and the Mahalanobis M."""
    rng = np.random.default_rng(3)
    x, z = _planted(3000, 6, 2.0, seed=3)
    zz = indicator_matrix(z)
    leace = leace_fit(x, zz)
    xc = x - x.mean(0)
    cross = xc.T @ (zz - zz.mean(0)) / len(x)
    q = np.linalg.qr(cross[:, :1])[0]
    orthogonal = x - xc @ (q @ q.T).T  # the plain projection along the mean difference
    b = rng.normal(size=(6, 6))
    metrics = [np.eye(6), b @ b.T, np.linalg.inv(xc.T @ xc / len(x))]
    for m in metrics:
        best = _cost(x, leace(x), m)
        assert best < _cost(x, orthogonal, m)
        for _ in range(50):
            # any other feasible eraser: A' = A + B (I - P_S) keeps A' S_xz = S_xz
            other = leace.proj + 0.1 * rng.normal(size=(6, 6)) @ (np.eye(6) - q @ q.T)
            assert best <= _cost(x, x - xc @ other.T, m) + 1e-12


def test_after_leace_the_probe_falls_to_chance() -> None:
    """Out of sample: the eraser is fitted on each training fold and the probe is scored on
    the erased held-out fold (an eraser fitted on all rows would leave the held-out rows
    anti-correlated with the training rows, and the score below chance)."""
    x, z = _planted(1000, 8, 2.0, seed=5)
    zz = indicator_matrix(z)
    before = run_probe(x, z, "categorical", n_permutations=200, n_control=0, seed=0)
    assert before.score > 0.8 and before.p_value < 0.01
    after = run_probe(
        x,
        z,
        "categorical",
        n_permutations=200,
        n_control=0,
        seed=0,
        fold_transform=lambda train: leace_fit(x[train], zz[train]),
    )
    assert abs(after.score - 0.5) < 0.03
    assert after.p_value > 0.05


def test_within_classes_erases_the_attribute_but_keeps_the_label() -> None:
    """A site associated with the label: plain LEACE takes the label signal with it, LEACE
    within label classes removes only what differs between sites inside each class."""
    rng = np.random.default_rng(7)
    n = 2000
    y = rng.integers(0, 2, n)
    site = np.where(rng.random(n) < 0.8, y, 1 - y)  # prevalence 0.8 at one site, 0.2 at the other
    x = rng.normal(size=(n, 5))
    x[:, 0] += 1.5 * y  # the disease feature
    x[:, 1] += 2.0 * site  # the site feature
    plain = leace_fit(x, site)(x)
    within = leace_fit(x, site, within=y)(x)
    corr_plain = abs(np.corrcoef(plain[:, 0], y)[0, 1])
    corr_within = abs(np.corrcoef(within[:, 0], y)[0, 1])
    assert corr_within > 0.5 and corr_within > corr_plain + 0.1
    for cls in (0, 1):
        rows = y == cls
        assert abs(np.corrcoef(within[rows, 1], site[rows])[0, 1]) < 0.05


def test_random_subspace_removes_as_much_whitened_variance() -> None:
    x, z = _planted(800, 7, 1.0, seed=2, levels=3)
    leace = leace_fit(x, indicator_matrix(z))
    other = random_subspace_eraser(x, leace.rank, np.random.default_rng(0))
    xc = x - x.mean(0)
    inv_cov = np.linalg.inv(xc.T @ xc / len(x))
    # the removed part, measured in whitened units, has exactly `rank` units of variance
    for eraser in (leace, other):
        assert eraser.rank == 2
        assert _cost(x, eraser(x), inv_cov) == pytest.approx(2.0, rel=1e-6)


def test_degenerate_inputs() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(200, 3))
    x = np.hstack([base, base[:, :1]])  # a duplicated unit: singular covariance
    z = (base[:, 0] > 0).astype(float)
    eraser = leace_fit(x, z)
    erased = eraser(x)
    assert np.isfinite(erased).all()
    assert abs(np.corrcoef(erased[:, 0], z)[0, 1]) < 1e-8
    assert leace_fit(x, np.ones(200)).rank == 0, "a constant attribute leaves nothing to erase"
    with pytest.raises(ValueError, match="same n"):
        leace_fit(x, z[:10])
