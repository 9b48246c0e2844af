"""Tests for mmaudit.methods.stats: correctness against reference implementations, and
statistical sanity (coverage, null uniformity) on small fast simulations."""

from __future__ import annotations

import json
import math
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

from mmaudit.methods import stats
from mmaudit.methods.stats import (
    Estimate,
    adjust_pvalues,
    auroc,
    auroc_bootstrap,
    bootstrap_ci,
    bootstrap_groups,
    expected_calibration_error,
    multiclass_ece,
    paired_bootstrap_diff,
    permutation_pvalue,
)

TRUE_BINORMAL_AUC = float(sps.norm.cdf(1 / math.sqrt(2)))  # pos ~ N(1, 1), neg ~ N(0, 1)


def _binormal(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    return y, rng.normal(size=n) + y


def _mean(x: np.ndarray) -> float:
    if x.size == 0:
        raise ValueError("empty")
    return float(np.mean(x))


# ----------------------------------------------------------------------------- Estimate


def test_to_dict_maps_nan_and_inf_to_none_and_numpy_to_python() -> None:
    est = Estimate(float("nan"), np.float64(0.25), float("inf"), np.int64(7), None)
    d = est.to_dict()
    assert d == {"value": None, "ci_low": 0.25, "ci_high": None, "n": 7, "null_p": None}
    assert type(d["ci_low"]) is float and type(d["n"]) is int
    json.dumps(d, allow_nan=False)
    assert Estimate(-float("inf")).to_dict()["value"] is None


# -------------------------------------------------------------------------------- AUROC


@settings(max_examples=60, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(min_value=0, max_value=5)), min_size=2, max_size=60
    )
)
def test_auroc_equals_sklearn_with_ties(pairs: list[tuple[bool, int]]) -> None:
    y = np.array([p[0] for p in pairs], dtype=int)
    s = np.array([p[1] for p in pairs], dtype=float) / 3.0  # small integer grid: many ties
    assume(0 < y.sum() < len(y))
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auroc(y.astype(bool), s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auroc_random_continuous_and_degenerate() -> None:
    rng = np.random.default_rng(3)
    y, s = _binormal(500, rng)
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert math.isnan(auroc(np.ones(5), np.arange(5.0)))
    assert math.isnan(auroc(np.array([], dtype=int), np.array([])))
    with pytest.raises(ValueError):
        auroc(np.array([0, 2, 1]), np.arange(3.0))
    with pytest.raises(ValueError):
        auroc(np.array([0, 1]), np.array([0.1, np.nan]))


@pytest.mark.parametrize("grouping", ["none", "str", "missing"])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_auroc_bootstrap_equals_looped_bootstrap_ci(grouping: str, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = 120
    y = (rng.random(n) < 0.08).astype(int)  # few positives: some resamples have one class
    s = np.round(rng.normal(size=n) + y, 1)  # ties
    groups = None
    if grouping == "str":
        groups = np.array([f"patient-{i // 3}" for i in rng.permutation(n)], dtype=object)
    elif grouping == "missing":
        groups = np.array([None if i % 5 == 0 else f"p{i // 4}" for i in range(n)], dtype=object)
    fast = auroc_bootstrap(y, s, groups=groups, n_boot=300, seed=seed)
    slow = bootstrap_ci(auroc, y, s, groups=groups, n_boot=300, seed=seed)
    assert fast.ci_low is not None and slow.ci_low is not None
    assert fast.value == pytest.approx(slow.value, abs=1e-12)
    assert fast.ci_low == pytest.approx(slow.ci_low, abs=1e-12)
    assert fast.ci_high == pytest.approx(slow.ci_high, abs=1e-12)


def test_auroc_bootstrap_multi_block_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocked drawing (large n) must give the same resamples on both paths."""
    monkeypatch.setattr(stats, "_BLOCK_ELEMS", 200)  # n=50 -> 4 resamples per block
    rng = np.random.default_rng(5)
    y, s = _binormal(50, rng)
    groups = np.arange(50) // 2
    for g in (None, groups):
        fast = auroc_bootstrap(y, s, groups=g, n_boot=37, seed=2)
        slow = bootstrap_ci(auroc, y, s, groups=g, n_boot=37, seed=2)
        assert (fast.ci_low, fast.ci_high) == pytest.approx((slow.ci_low, slow.ci_high), abs=1e-12)


def test_auroc_bootstrap_coverage() -> None:
    covered = 0
    for seed in range(50):
        y, s = _binormal(200, np.random.default_rng(seed))
        est = auroc_bootstrap(y, s, n_boot=200, seed=seed)
        assert est.ci_low is not None and est.ci_high is not None
        covered += est.ci_low <= TRUE_BINORMAL_AUC <= est.ci_high
    assert covered >= 42  # nominal 95%: expect ~47.5 of 50


# ---------------------------------------------------------------------------- bootstrap


def test_bootstrap_groups_resamples_whole_groups() -> None:
    sizes = np.array([1, 2, 5, 3, 1, 4])
    groups = np.repeat(np.array([f"p{i}" for i in range(len(sizes))]), sizes)
    perm = np.random.default_rng(0).permutation(len(groups))
    groups = groups[perm]
    n, g = len(groups), len(sizes)
    rng = np.random.default_rng(11)
    resamples = list(bootstrap_groups(n, groups, 200, rng))
    assert len(resamples) == 200
    size_of = {f"p{i}": int(sizes[i]) for i in range(g)}
    lengths = set()
    for idx in resamples:
        labels, counts = np.unique(groups[idx], return_counts=True)
        draws = [c / size_of[lab] for lab, c in zip(labels, counts, strict=True)]
        assert all(d == int(d) for d in draws)  # whole groups only
        assert sum(draws) == g  # G groups drawn, not n rows
        lengths.add(len(idx))
    assert len(lengths) > 1  # varying length: groups are of unequal size
    rows = list(bootstrap_groups(n, None, 5, np.random.default_rng(0)))
    assert all(len(idx) == n and idx.min() >= 0 and idx.max() < n for idx in rows)


def test_bootstrap_groups_is_deterministic_and_handles_empty() -> None:
    a = list(bootstrap_groups(30, np.arange(30) % 7, 10, np.random.default_rng(4)))
    b = list(bootstrap_groups(30, np.arange(30) % 7, 10, np.random.default_rng(4)))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    empty = list(bootstrap_groups(0, None, 3, np.random.default_rng(0)))
    assert len(empty) == 3 and all(e.size == 0 for e in empty)
    with pytest.raises(ValueError):
        bootstrap_groups(5, np.arange(4), 3, np.random.default_rng(0))


def test_group_codes_mixed_types_and_missing() -> None:
    groups = np.array(["a", None, "a", 3, None, float("nan"), 3], dtype=object)
    codes = stats._group_codes(groups, len(groups))
    assert codes[0] == codes[2] and codes[3] == codes[6] and codes[0] != codes[3]
    assert len({codes[1], codes[4], codes[5]}) == 3  # each missing id is its own group
    assert len(set(codes.tolist())) == 5


def test_grouped_bootstrap_wider_than_row_bootstrap_on_duplicates() -> None:
    rng = np.random.default_rng(8)
    n_pat, dup = 40, 5
    x = np.repeat(rng.normal(size=n_pat), dup)  # every patient row duplicated exactly
    pid = np.repeat(np.arange(n_pat), dup)
    row = bootstrap_ci(_mean, x, n_boot=400, seed=1)
    grp = bootstrap_ci(_mean, x, groups=pid, n_boot=400, seed=1)
    assert row.value == grp.value
    width_row = row.ci_high - row.ci_low
    width_grp = grp.ci_high - grp.ci_low
    assert width_grp > 1.6 * width_row  # expected ratio sqrt(5) ~ 2.24

    y = np.repeat(rng.integers(0, 2, n_pat), dup)
    s = np.repeat(rng.normal(size=n_pat), dup) + y
    a_row = auroc_bootstrap(y, s, n_boot=400)
    a_grp = auroc_bootstrap(y, s, groups=pid, n_boot=400)
    assert a_grp.ci_high - a_grp.ci_low > 1.6 * (a_row.ci_high - a_row.ci_low)


def test_bootstrap_ci_determinism_and_seed_dependence() -> None:
    x = np.random.default_rng(0).normal(size=80)
    assert bootstrap_ci(_mean, x, seed=3, n_boot=200) == bootstrap_ci(_mean, x, seed=3, n_boot=200)
    assert bootstrap_ci(_mean, x, seed=3, n_boot=200) != bootstrap_ci(_mean, x, seed=4, n_boot=200)


def test_bootstrap_small_inputs_give_none_ci() -> None:
    for est in (
        bootstrap_ci(_mean, np.array([])),
        bootstrap_ci(_mean, np.array([2.0])),
        bootstrap_ci(_mean, np.arange(6.0), groups=np.zeros(6)),  # one patient
        auroc_bootstrap(np.array([], dtype=int), np.array([])),
        auroc_bootstrap(np.array([1]), np.array([0.3])),
        auroc_bootstrap(np.array([0, 1, 0, 1]), np.arange(4.0), groups=["a"] * 4),
        paired_bootstrap_diff(_mean, (np.array([1.0]),), (np.array([2.0]),)),
    ):
        assert est.ci_low is None and est.ci_high is None
    assert math.isnan(bootstrap_ci(_mean, np.array([])).value)
    assert bootstrap_ci(_mean, np.array([2.0])).value == 2.0
    assert bootstrap_ci(_mean, np.array([2.0])).n == 1


def test_bootstrap_ci_none_when_most_resamples_undefined() -> None:
    x = np.zeros(40)
    x[0] = 1.0

    def needs_exactly_one_marker(v: np.ndarray) -> float:
        if np.count_nonzero(v) != 1:  # P(marker drawn exactly once) ~ 1/e < 1/2
            raise ValueError("undefined")
        return float(v.mean())

    est = bootstrap_ci(needs_exactly_one_marker, x, n_boot=300)
    assert est.value == pytest.approx(1 / 40)
    assert est.ci_low is None and est.ci_high is None


def test_bootstrap_ci_multiple_and_2d_arrays() -> None:
    rng = np.random.default_rng(2)
    probs = rng.dirichlet([1, 1, 1], size=100)
    labels = rng.integers(0, 3, 100)
    est = bootstrap_ci(multiclass_ece, labels, probs, n_boot=50)
    assert est.ci_low is not None and est.ci_low <= est.value <= est.ci_high
    with pytest.raises(ValueError):
        bootstrap_ci(_mean, np.arange(3.0), np.arange(4.0))


# ---------------------------------------------------------------------- paired bootstrap


def test_paired_diff_of_identical_inputs_is_exactly_zero() -> None:
    y, s = _binormal(150, np.random.default_rng(9))
    groups = np.arange(150) // 3
    for g in (None, groups):
        est = paired_bootstrap_diff(auroc, (y, s), (y, s.copy()), groups=g, n_boot=200)
        assert (est.value, est.ci_low, est.ci_high) == (0.0, 0.0, 0.0)
        assert est.null_p == 1.0


def test_paired_diff_uses_same_resamples() -> None:
    x = np.random.default_rng(1).normal(size=60)
    est = paired_bootstrap_diff(_mean, (x,), (x + 0.5,), n_boot=200)
    # mean(x[idx] + .5) - mean(x[idx]) = .5 on every resample only if indices are shared
    assert est.value == pytest.approx(0.5)
    assert est.ci_low == pytest.approx(0.5) and est.ci_high == pytest.approx(0.5)
    assert est.null_p == pytest.approx(2 / 201)


def test_paired_diff_detects_planted_improvement() -> None:
    rng = np.random.default_rng(21)
    y = rng.integers(0, 2, 300)
    latent = rng.normal(size=300)
    weak = 0.4 * y + latent
    strong = 1.5 * y + latent
    est = paired_bootstrap_diff(auroc, (y, weak), (y, strong), n_boot=400, seed=1)
    assert est.value > 0 and est.ci_low > 0
    assert est.null_p is not None and est.null_p < 0.01
    flipped = paired_bootstrap_diff(auroc, (y, strong), (y, weak), n_boot=400, seed=1)
    assert flipped.value == pytest.approx(-est.value) and flipped.ci_high < 0


# ---------------------------------------------------------------------------- permutation


def test_permutation_pvalue_formula() -> None:
    null = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    assert permutation_pvalue(3.0, null) == pytest.approx(3 / 5)
    assert permutation_pvalue(3.0, null, "less") == pytest.approx(4 / 5)
    assert permutation_pvalue(3.0, null, "two-sided") == 1.0
    assert permutation_pvalue(10.0, null, "two-sided") == pytest.approx(2 / 5)
    assert permutation_pvalue(3.0 + 1e-15, null) == pytest.approx(3 / 5)  # fp tie
    assert math.isnan(permutation_pvalue(float("nan"), null))
    assert math.isnan(permutation_pvalue(1.0, np.array([])))
    with pytest.raises(ValueError):
        permutation_pvalue(1.0, null, "bigger")  # type: ignore[arg-type]


def _perm_test_mean_diff(x: np.ndarray, lab: np.ndarray, n_perm: int, seed: int) -> float:
    def stat(labels: np.ndarray) -> np.ndarray:
        labels = np.atleast_2d(labels)
        return (x * labels).sum(1) / labels.sum(1) - (x * ~labels).sum(1) / (~labels).sum(1)

    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.broadcast_to(lab, (n_perm, lab.size)), axis=1)
    return permutation_pvalue(float(stat(lab)[0]), stat(perms))


def test_permutation_pvalue_planted_effect_is_small() -> None:
    rng = np.random.default_rng(0)
    lab = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    x = rng.normal(size=100) + 0.9 * lab
    assert _perm_test_mean_diff(x, lab, 999, seed=1) < 0.01


def test_permutation_pvalue_is_uniform_without_effect() -> None:
    lab = np.r_[np.ones(15, bool), np.zeros(15, bool)]
    ps = np.array(
        [
            _perm_test_mean_diff(np.random.default_rng(s).normal(size=30), lab, 199, seed=s + 1000)
            for s in range(200)
        ]
    )
    assert 0.42 < ps.mean() < 0.58
    assert sps.kstest(ps, "uniform").pvalue > 1e-3
    assert np.mean(ps < 0.05) < 0.1


# --------------------------------------------------------------------------- multiplicity


@settings(max_examples=80, deadline=None, database=None)
@given(
    st.lists(
        st.one_of(
            st.floats(min_value=0, max_value=1),
            st.sampled_from([0.0, 0.01, 0.05, 1.0]),  # ties and boundaries
            st.just(float("nan")),
        ),
        min_size=1,
        max_size=25,
    ),
    st.sampled_from([("holm", "holm"), ("bh", "fdr_bh"), ("by", "fdr_by")]),
)
def test_adjust_pvalues_match_statsmodels_and_pass_nan(
    pvals: list[float], method: tuple[str, str]
) -> None:
    p = np.array(pvals)
    out = adjust_pvalues(p, method[0])  # type: ignore[arg-type]
    ok = ~np.isnan(p)
    assert np.array_equal(np.isnan(out), ~ok)
    if ok.any():
        # statsmodels' Holm calls gc.collect() each time (slow); irrelevant to the result
        with mock.patch("gc.collect"):
            expected = multipletests(p[ok], method=method[1])[1]
        np.testing.assert_allclose(out[ok], expected, rtol=1e-12, atol=0)


def test_adjust_pvalues_none_and_errors() -> None:
    p = [0.01, float("nan"), 0.2]
    np.testing.assert_array_equal(adjust_pvalues(p, "none"), np.array(p))
    assert adjust_pvalues([], "holm").size == 0
    assert np.isnan(adjust_pvalues([float("nan")], "bh")).all()
    with pytest.raises(ValueError):
        adjust_pvalues([0.5, 1.2])
    with pytest.raises(ValueError):
        adjust_pvalues([0.5], "bonferroni")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- calibration


def test_ece_hand_computed() -> None:
    y = np.array([0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.9, 0.95])
    # bin [0, .5): acc .5, conf .15 -> .35 * 2/4; bin [.5, 1]: acc 1, conf .925 -> .075 * 2/4
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.2125)
    assert expected_calibration_error(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0
    assert math.isnan(expected_calibration_error(np.array([], dtype=int), np.array([])))
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([0, 1]), np.array([0.5, 1.5]))


def test_ece_calibrated_small_miscalibrated_large() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.02
    logit = np.log(p / (1 - p))
    overconfident = 1 / (1 + np.exp(-4 * logit))
    assert expected_calibration_error(y, overconfident) > 0.1


def test_multiclass_ece() -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([0.7, 0.7, 0.7, 0.7], size=20000)
    y = (probs.cumsum(1) < rng.random((20000, 1))).sum(1)  # y ~ Categorical(probs)
    assert multiclass_ece(y, probs) < 0.02
    sharp = probs**4 / (probs**4).sum(1, keepdims=True)
    assert multiclass_ece(y, sharp) > 0.1
    # hand example: confidences .9 (right), .6 (wrong), both in bin [.5, 1] -> |.5 - .75|
    hand = multiclass_ece(np.array([0, 2]), np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1]]), 2)
    assert hand == pytest.approx(0.25)
    assert math.isnan(multiclass_ece(np.array([], dtype=int), np.empty((0, 3))))
    with pytest.raises(ValueError):
        multiclass_ece(np.array([3]), np.array([[0.2, 0.3, 0.5]]))


def test_estimate_round_trips_through_its_dict() -> None:
    from mmaudit.methods.stats import Estimate

    e = Estimate(0.25, 0.1, 0.4, 12, 0.03)
    assert Estimate.from_dict(e.to_dict()) == e
    back = Estimate.from_dict(Estimate(float("nan"), n=3).to_dict())
    assert np.isnan(back.value) and back.n == 3 and back.ci_low is None
