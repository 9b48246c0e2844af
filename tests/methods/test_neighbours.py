"""Blocked neighbours equal brute force; agreement and silhouette nulls are calibrated."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.stats import kstest
from sklearn.metrics import silhouette_samples

from mmaudit.methods import neighbours as nb
from mmaudit.methods.stats import permutation_pvalue


@pytest.fixture(scope="module")
def cloud() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 12))
    patients = rng.integers(0, 120, size=240)  # about two rows per patient
    return x, patients


# (metric, shared offset, scale): a large offset with a small spread cancels in fp32
SHAPES = [
    ("euclidean", 0.0, 1.0),
    ("cosine", 0.0, 1.0),
    ("euclidean", 1e3, 0.1),
    ("euclidean", 1e4, 1.0),
]


@pytest.mark.parametrize(("metric", "offset", "scale"), SHAPES)
@pytest.mark.parametrize("budget_mb", [256.0, 0.001])
def test_knn_equals_brute_force(
    cloud: tuple[np.ndarray, np.ndarray],
    metric: str,
    offset: float,
    scale: float,
    budget_mb: float,
) -> None:
    x, patients = cloud
    x = offset + scale * x
    fast = nb.knn(x, 7, groups=patients, metric=metric, memory_budget_mb=budget_mb)  # type: ignore[arg-type]
    slow = nb.brute_force_knn(x, 7, groups=patients, metric=metric)  # type: ignore[arg-type]
    np.testing.assert_array_equal(fast.indices, slow.indices)
    np.testing.assert_allclose(fast.distances, slow.distances, rtol=1e-12, atol=1e-12)
    # never the row itself nor a row of the same patient
    assert not (patients[fast.indices] == patients[:, None]).any()


def test_tiny_budget_splits_references_and_respects_the_budget(
    cloud: tuple[np.ndarray, np.ndarray],
) -> None:
    x, _ = cloud
    budget_mb = 0.001
    out = nb.knn(x, 5, memory_budget_mb=budget_mb)
    qb, rb = out.block
    assert rb < len(x), "references must be split when a full row block does not fit"
    elements = max(int(budget_mb * 2**20) // nb._BYTES_PER_ELEMENT, nb._MIN_ELEMENTS)
    assert qb * (rb + 5 + 8) <= elements
    assert nb.block_shape(100_000, 100_000, 20, 256.0)[0] * 100_020 <= 256 * 2**20 // 16


def test_separate_reference_and_too_few_candidates() -> None:
    rng = np.random.default_rng(1)
    q, ref = rng.normal(size=(30, 4)), rng.normal(size=(6, 4))
    fast = nb.knn(q, 8, reference=ref)
    slow = nb.brute_force_knn(q, 8, reference=ref)
    np.testing.assert_array_equal(fast.indices, slow.indices)
    assert (fast.indices[:, 6:] == -1).all() and np.isinf(fast.distances[:, 6:]).all()
    # self-query with fewer rows than neighbours: padded, no crash
    small = nb.knn(ref, 10)
    assert (small.indices[:, 5:] == -1).all()


def test_ties_are_broken_by_index() -> None:
    x = np.array([[0.0], [1.0], [-1.0], [1.0], [2.0]])
    out = nb.knn(x, 3)
    np.testing.assert_array_equal(out.indices[0], [1, 2, 3])
    np.testing.assert_array_equal(out.indices, nb.brute_force_knn(x, 3).indices)


def test_agreement_by_hand() -> None:
    idx = np.array([[1, 2], [0, 2], [0, 1], [0, -1]])
    codes = np.array([0, 0, 1, -1])
    got = nb.agreement(idx, codes)
    np.testing.assert_allclose(got[:3], [0.5, 0.5, 0.0])
    assert np.isnan(got[3])
    assert nb.chance_agreement(np.array([0, 0, 1, 1, -1])) == pytest.approx(0.5)


def test_agreement_null_centres_on_exact_chance() -> None:
    rng = np.random.default_rng(2)
    n = 400
    codes = rng.integers(0, 3, size=n)
    idx = nb.knn(rng.normal(size=(n, 5)), 10).indices
    null = nb.agreement_null(idx, codes, 300, rng)
    counts = np.bincount(codes)
    exact = float((counts * (counts - 1)).sum() / (n * (n - 1)))
    assert null.mean() == pytest.approx(exact, abs=0.004)


class _Unshuffled:
    """A generator stand-in whose 'permutations' leave the codes in place."""

    def permuted(self, a: np.ndarray, axis: int) -> np.ndarray:
        return a


def test_agreement_null_of_the_identity_is_the_observed_agreement() -> None:
    rng = np.random.default_rng(7)
    codes = np.where(rng.random(200) < 0.15, -1, rng.integers(0, 3, 200))
    idx = nb.knn(rng.normal(size=(200, 4)), 6).indices
    idx[::7, -1] = -1  # rows with fewer neighbours
    observed = float(np.nanmean(nb.agreement(idx, codes)))
    null = nb.agreement_null(idx, codes, 3, _Unshuffled())  # type: ignore[arg-type]
    np.testing.assert_allclose(null, observed, rtol=1e-12)


def test_agreement_pvalues_are_uniform_on_random_embeddings() -> None:
    """Calibration: under no structure the permutation p-values are uniform."""
    rng = np.random.default_rng(3)
    pvals = []
    for _ in range(200):
        x = rng.normal(size=(60, 6))
        codes = rng.integers(0, 2, size=60)
        idx = nb.brute_force_knn(x, 5).indices  # equal to knn (tested above), cheaper here
        observed = float(np.nanmean(nb.agreement(idx, codes)))
        pvals.append(permutation_pvalue(observed, nb.agreement_null(idx, codes, 99, rng)))
    p = np.asarray(pvals)
    assert kstest(p, "uniform").pvalue > 0.01
    assert np.mean(p <= 0.05) < 0.1
    # and a planted label is found
    x = rng.normal(size=(60, 6))
    codes = (x[:, 0] > 0).astype(int)
    idx = nb.knn(x, 5).indices
    observed = float(np.nanmean(nb.agreement(idx, codes)))
    assert permutation_pvalue(observed, nb.agreement_null(idx, codes, 99, rng)) == 0.01


@pytest.mark.parametrize(("offset", "scale"), [(1e3, 0.1), (1e4, 1.0)])
def test_offset_embeddings_match_sklearn_in_fp32(offset: float, scale: float) -> None:
    """The default fp32 paths centre first, so a shared offset changes nothing."""
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(8)
    base = rng.normal(size=(300, 16))
    lab = np.repeat([0, 1], 150)
    base[lab == 1, 0] += 2.0
    x = offset + scale * base
    sil = nb.silhouette_with_null(x, [lab], 0, rng, memory_budget_mb=0.01)[0]
    np.testing.assert_allclose(sil.per_row, silhouette_samples(x, lab), atol=2e-5)
    ours = nb.knn(x, 5)
    theirs = NearestNeighbors(n_neighbors=6, algorithm="brute").fit(x).kneighbors(x)[1][:, 1:]
    np.testing.assert_array_equal(np.sort(ours.indices, 1), np.sort(theirs, 1))
    # Euclidean retrieval: pairs 0.05 * scale apart in a cloud of spread `scale`
    other = x + 0.05 * scale * rng.normal(size=x.shape)
    closer, _ = nb.matched_ranks(x, other, metric="euclidean", memory_budget_mb=0.001)
    d = np.sqrt(((base[:, None, :] - (other - offset)[None, :, :] / scale) ** 2).sum(-1))
    np.testing.assert_array_equal(closer, (d < np.diag(d)[:, None]).sum(1))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_silhouette_equals_sklearn(metric: str) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(150, 8))
    x[:50] += 2.0
    a = np.repeat([0, 1, 2], 50)
    b = np.where(rng.random(150) < 0.2, -1, rng.integers(0, 2, 150))
    out = nb.silhouette_with_null(
        x,
        [a, b],
        20,
        rng,
        metric=metric,
        dtype=torch.float64,
        memory_budget_mb=0.01,  # type: ignore[arg-type]
    )
    np.testing.assert_allclose(out[0].per_row, silhouette_samples(x, a, metric=metric), atol=1e-10)
    ok = b >= 0
    np.testing.assert_allclose(
        out[1].per_row[ok], silhouette_samples(x[ok], b[ok], metric=metric), atol=1e-10
    )
    assert np.isnan(out[1].per_row[~ok]).all()
    assert out[0].null.shape == (20,) and out[0].value > out[0].null.max()


def test_silhouette_pvalues_are_uniform_on_random_embeddings() -> None:
    rng = np.random.default_rng(5)
    pvals = []
    for _ in range(120):
        x = rng.normal(size=(40, 4))
        codes = rng.integers(0, 2, size=40)
        r = nb.silhouette_with_null(x, [codes], 49, rng)[0]
        pvals.append(permutation_pvalue(r.value, r.null))
    assert kstest(np.asarray(pvals), "uniform").pvalue > 0.01


def test_matched_ranks_against_brute_force() -> None:
    rng = np.random.default_rng(6)
    a = rng.normal(size=(80, 16))
    b = a + 0.8 * rng.normal(size=a.shape)
    closer, ties = nb.matched_ranks(a, b, memory_budget_mb=0.001)
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    sim = an @ bn.T
    expected = (sim > np.diag(sim)[:, None]).sum(1)
    np.testing.assert_array_equal(closer, expected)
    assert (ties == 0).all()
    assert nb.recall_at(closer, ties, 1).mean() == pytest.approx(np.mean(expected == 0))
    # identical rows: every candidate ties, recall@k is k / n in expectation
    c2, t2 = nb.matched_ranks(np.ones((10, 3)), np.ones((10, 3)))
    np.testing.assert_allclose(nb.recall_at(c2, t2, 3), 0.3)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize(("n", "budget_mb"), [(84, 0.001), (4100, 256.0)])
def test_matched_ranks_keeps_exact_ties_of_duplicate_references(
    metric: nb.Metric, n: int, budget_mb: float
) -> None:
    """30 identical reference rows (the same report text) at the end, where the last
    query block is small (at 0.001 MB: blocks of 64, the last of 20 rows, and the
    duplicates span two reference blocks; at 256 MB: 4092 + 8 rows): each of their
    matches ties with the 29 others, exactly as in float64."""
    rng = np.random.default_rng(11)
    b = rng.normal(size=(n, 16))
    b[-30:] = b[-1]
    a = b + 0.3 * rng.normal(size=b.shape)  # every match well inside the other rows
    closer, ties = nb.matched_ranks(a, b, metric=metric, memory_budget_mb=budget_mb)
    d = cdist(a, b, metric)
    own = np.diag(d)[:, None]
    np.testing.assert_array_equal(ties[-30:], 29)
    np.testing.assert_array_equal(ties[:-30], 0)
    np.testing.assert_array_equal(closer, (d < own).sum(1))


def test_every_distance_path_keeps_its_blocks_within_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    budget_mb = 0.001  # the 4096-element floor: 300 references do not fit beside 64 queries
    elements = nb._MIN_ELEMENTS
    seen: list[tuple[int, int]] = []
    real = nb.pairwise_distances

    def recording(a: torch.Tensor, b: torch.Tensor, metric: nb.Metric) -> torch.Tensor:
        seen.append((a.shape[0], b.shape[0]))
        return real(a, b, metric)

    monkeypatch.setattr(nb, "pairwise_distances", recording)
    rng = np.random.default_rng(9)
    n = 300
    x = rng.normal(size=(n, 8))
    codes = rng.integers(0, 3, n)
    nb.silhouette_with_null(x, [codes], 3, rng, memory_budget_mb=budget_mb)
    columns = 3 * (3 + 1)  # levels x (observed + permutations)
    assert max(r for _, r in seen) < n
    assert all(q * (r + columns) <= elements for q, r in seen)
    seen.clear()
    nb.matched_ranks(x, x + rng.normal(size=x.shape), memory_budget_mb=budget_mb)
    assert max(r for _, r in seen) < n
    assert all(q * r <= elements for q, r in seen)

    chunks: list[int] = []

    class Recording:
        def permuted(self, a: np.ndarray, axis: int) -> np.ndarray:
            chunks.append(a.shape[0])
            return rng.permuted(a, axis=axis)

    idx = nb.knn(x, 5).indices
    null_mb = 0.1
    null = nb.agreement_null(idx, codes, 50, Recording(), memory_budget_mb=null_mb)  # type: ignore[arg-type]
    assert len(chunks) > 1 and sum(chunks) == 50 and null.shape == (50,)
    # int8 codes (3 levels): 1 B gathered + 2 B of comparisons per entry
    assert max(chunks) * n * 5 * 3 <= null_mb * 2**20
    chunks.clear()
    many = rng.integers(0, 200, n)  # int32 codes: 4 B gathered + 2 B of comparisons
    nb.agreement_null(idx, many, 50, Recording(), memory_budget_mb=null_mb)  # type: ignore[arg-type]
    assert max(chunks) * n * 5 * 6 <= null_mb * 2**20
