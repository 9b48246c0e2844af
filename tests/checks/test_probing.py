"""Probes and the ``probing`` check: planted directions with known answers, an analytic head
whose use of an attribute is known, bad inputs, and the bundled sample's planted truth."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import byo_model_config, tiny_config, write_tiny_dataset

from mmaudit.checks.contract import AuditContext, build_params
from mmaudit.checks.findings import judge
from mmaudit.checks.probing import random_weights
from mmaudit.checks.probing.attributes import collinear_with_target, prepare_attribute
from mmaudit.checks.probing.check import ProbingCheck
from mmaudit.checks.probing.effects import erasure_effects
from mmaudit.checks.probing.random_weights import reinitialise
from mmaudit.checks.probing.records import Attribute, ErasureRow
from mmaudit.checks.probing.verdicts import excess_significant, used_by_head
from mmaudit.engine.config import AttributeConfig
from mmaudit.engine.sweep_outputs import SweepResult
from mmaudit.methods.probe_bootstrap import score_estimate
from mmaudit.methods.probe_fitting import (
    fit_logistic,
    indicator_targets,
    ridge_fold,
    ridge_out_of_fold,
)
from mmaudit.methods.probe_folds import make_folds
from mmaudit.methods.probe_nulls import null_scores, shuffler
from mmaudit.methods.probe_result import ProbeError
from mmaudit.methods.probe_scores import (
    auroc_columns,
    auroc_columns_within,
    fold_score,
    r2_columns_within,
)
from mmaudit.methods.probes import _beyond_target_features, run_probe
from mmaudit.methods.stats import auroc, bootstrap_ci, paired_bootstrap_diff
from mmaudit.runner import Overrides, run_audit

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- probes


def test_folds_are_grouped_and_stratified() -> None:
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(60), rng.integers(1, 4, 60))
    label = (rng.random(60) < 0.3).astype(int)[patients]  # constant within patient
    folds = make_folds(label, patients, 5, seed=0)
    assert set(folds) == set(range(5))
    for p in np.unique(patients):
        assert len(set(folds[patients == p])) == 1, "a patient lies in one fold"
    for f in range(5):
        assert set(label[folds == f]) == {0, 1}, "every fold holds both classes"
    with pytest.raises(ProbeError, match="fewer samples than folds"):
        make_folds(np.array([0, 0, 0, 1]), None, 5, seed=0)


def test_logistic_matches_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 5))
    y = (x @ rng.normal(size=5) + rng.normal(size=300) > 0).astype(float)
    lam = 1e-2
    w = fit_logistic(x, y[:, None], lam)[:, 0]
    ref = LogisticRegression(C=1 / (lam * len(x)), tol=1e-10, max_iter=10000).fit(x, y)
    assert np.allclose(w[:-1], ref.coef_[0], atol=1e-5)
    assert w[-1] == pytest.approx(ref.intercept_[0], abs=1e-5)


def test_auroc_columns_equal_auroc() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, (50, 4))
    scores = np.round(rng.normal(size=(50, 4)), 1)  # ties
    expected = [auroc(labels[:, k], scores[:, k]) for k in range(4)]
    assert np.allclose(auroc_columns(labels, scores), expected)


@pytest.mark.parametrize("kind", ["categorical", "continuous"])
def test_vectorised_null_equals_refitting_each_permutation(kind: str) -> None:
    """One matrix product per fold gives exactly what refitting the ridge probe on each
    shuffled label would give."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 6))
    values = rng.integers(0, 3, 80) if kind == "categorical" else rng.normal(size=80)
    strata = values if kind == "categorical" else (values > 0).astype(int)
    folds = make_folds(strata, None, 4, seed=0)
    lams = [0.1, 1.0, 0.1, 10.0]
    maps = [ridge_fold(x, folds == f, lams[f]) for f in range(4)]
    perm = shuffler(values, folds, None, by_patient=False)(np.random.default_rng(0), 3)
    null = null_scores(kind, maps, perm, 3 if kind == "categorical" else 0)  # type: ignore[arg-type]
    for b in range(3):
        if kind == "categorical":
            y = (perm[b][:, None] == np.arange(3)).astype(float)
            expected = np.nanmean(auroc_columns(y, ridge_out_of_fold(x, y, folds, lams)))
        else:
            y = perm[b][:, None]
            pred = ridge_out_of_fold(x, y, folds, lams)
            expected = 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()
        assert null[b] == pytest.approx(expected, abs=1e-10)
        for f in range(4):  # labels only move within a fold
            assert sorted(perm[b][folds == f]) == sorted(values[folds == f])


def _planted(delta: float, seed: int, n: int = 1200, d: int = 4):
    """Two rows per patient; the attribute (constant per patient) shifts the embedding by
    ``delta`` noise SDs along one random direction."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n // 2), 2)
    z = rng.integers(0, 2, n // 2)[patients]
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    return rng.normal(size=(n, d)) + delta * z[:, None] * u, z, patients


def test_planted_direction_detected_at_half_sd_not_at_zero() -> None:
    """Decision as in the check: permutation p < 0.05 and AUROC >= min_auroc (0.55).
    delta = 0.5: detected in every one of 20 seeds; delta = 0: false-positive rate <= 5 %
    (the raw permutation test alone must also stay within 5 %)."""
    min_auroc = ProbingCheck.Params().min_auroc
    hits = {0.0: 0, 0.5: 0}
    raw_hits = 0
    for delta in hits:
        for seed in range(20):
            x, z, patients = _planted(delta, seed)
            r = run_probe(
                x, z, "categorical", groups=patients, n_permutations=200, n_control=0, seed=seed
            )
            hits[delta] += int(r.p_value < 0.05 and r.score >= min_auroc)
            raw_hits += int(delta == 0.0 and r.p_value < 0.05)
    assert hits[0.5] == 20
    assert hits[0.0] <= 1 and raw_hits <= 1


def test_three_levels_use_macro_one_vs_rest_auroc() -> None:
    rng = np.random.default_rng(6)
    z = rng.integers(0, 3, 600)
    centres = np.eye(3, 5) * 1.5
    x = rng.normal(size=(600, 5)) + centres[z]
    r = run_probe(x, np.array(["a", "b", "c"])[z], "categorical", n_permutations=200, seed=0)
    assert r.levels == ["a", "b", "c"] and r.oof.shape == (600, 3)
    per_level = [auroc(z == k, r.oof[:, k]) for k in range(3)]
    assert r.score == pytest.approx(np.mean(per_level))
    assert r.score > 0.75 and r.p_value < 0.01 and abs(r.control - 0.5) < 0.05
    noise = run_probe(rng.normal(size=(600, 5)), z, "categorical", n_permutations=200, seed=0)
    assert noise.p_value > 0.05


# ----------------------------------------------------------------------------- beyond the target


def _tied(
    delta: float, seed: int, kind: str = "categorical", n: int = 300, d: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two rows per patient; the label shifts embedding dim 0 by 2 SDs; the attribute z
    (constant per patient) depends on the label only -- P(z = 1 | y) = 0.2 / 0.8, or
    z = 1.5 y + N(0, 1) -- unless ``delta`` > 0 plants it on dim 1 as well (beyond the
    label). Returns x, z, y, patients."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n // 2), 2)
    y_p = rng.integers(0, 2, n // 2)
    if kind == "categorical":
        z_p = (rng.random(n // 2) < np.where(y_p == 1, 0.8, 0.2)).astype(float)
    else:
        z_p = 1.5 * y_p + rng.normal(size=n // 2)
    y, z = y_p[patients], z_p[patients]
    x = rng.normal(size=(n, d))
    x[:, 0] += 2.0 * y
    x[:, 1] += delta * z
    return x, z, y, patients


@pytest.mark.parametrize(
    ("kind", "floor", "planted"),
    [("categorical", ProbingCheck.Params().min_auroc, 1.0), ("continuous", 0.05, 0.5)],
)
def test_an_attribute_tied_to_the_label_only_is_not_encoded_beyond_it(
    kind: str, floor: float, planted: float
) -> None:
    """Known answer: the embedding is label signal + noise and the attribute depends on the
    label only, so the layer carries nothing about it beyond the label. A plain probe
    decodes it every time (through the label); the probe beyond the target (``within``)
    calls it encoded (p < 0.05, score at the check's floor) in at most 1 of 10 seeds --
    and in every seed once it is planted beyond the label too."""
    hits = {0.0: 0, planted: 0}
    for delta in hits:
        for seed in range(10):
            x, z, y, patients = _tied(delta, seed, kind)
            args = {"groups": patients, "n_permutations": 200, "n_control": 0, "seed": seed}
            beyond = run_probe(x, z, kind, within=y, **args)  # type: ignore[arg-type]
            assert beyond.conditional and beyond.permuted == "patients"
            hits[delta] += int(beyond.p_value < 0.05 and beyond.score >= floor)
            if delta == 0.0 and seed < 3:
                plain = run_probe(x, z, kind, **args)  # type: ignore[arg-type]
                assert not plain.conditional
                assert plain.p_value < 0.01 and plain.score > floor
                assert abs(beyond.score - beyond.chance) < 0.1
    assert hits[0.0] <= 1
    assert hits[planted] == 10


def test_scores_within_classes_have_known_values() -> None:
    """Pooled within-class AUROC = pair-weighted mean of the per-class AUROCs; a score that
    only tells the classes apart is at chance; R^2 within classes ignores class offsets."""
    rng = np.random.default_rng(4)
    c = rng.integers(0, 3, 200)
    lab = (rng.random(200) < 0.3 + 0.2 * c).astype(int)
    score = rng.normal(size=200) + lab + 3 * c
    pairs = [lab[c == k].sum() * (c == k).sum() - lab[c == k].sum() ** 2 for k in range(3)]
    per = [auroc(lab[c == k], score[c == k]) for k in range(3)]
    expected = np.dot(pairs, per) / np.sum(pairs)
    assert auroc_columns_within(lab[:, None], score[:, None], c)[0] == pytest.approx(expected)
    # the class alone: above chance for the plain AUROC, at chance within classes
    assert auroc(lab, c) > 0.6
    assert auroc_columns_within(lab[:, None], c[:, None].astype(float), c)[0] == 0.5
    y = rng.normal(size=(200, 1)) + c[:, None]
    assert r2_columns_within(y, y + 5 * c[:, None], c)[0] == pytest.approx(1.0)
    offsets = np.array([y[c == k].mean() for k in range(3)])[c][:, None]
    assert r2_columns_within(y, offsets, c)[0] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["categorical", "continuous"])
def test_vectorised_null_within_classes_equals_refitting(kind: str) -> None:
    """Beyond the target: labels move only within (fold x class) blocks, and one matrix
    product per fold gives what refitting the ridge probe on the class-centred features
    and scoring within classes would give."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(90, 5))
    c = rng.integers(0, 2, 90)
    values = rng.integers(0, 3, 90) if kind == "categorical" else rng.normal(size=90) + c
    folds = make_folds(values if kind == "categorical" else c, None, 3, seed=0)
    xs = [_beyond_target_features(x, c, folds != f) for f in range(3)]
    assert all(
        np.allclose(xf[folds != f, :5].T @ np.eye(2)[c[folds != f]], 0) for f, xf in enumerate(xs)
    )  # centred within each class on the training rows
    lams = [0.1, 1.0, 10.0]
    maps = [ridge_fold(xs[f], folds == f, lams[f]) for f in range(3)]
    blocks = folds * 2 + c
    perm = shuffler(values, blocks, None, by_patient=False)(np.random.default_rng(0), 3)
    levels = 3 if kind == "categorical" else 0
    null = null_scores(kind, maps, perm, levels, c)  # type: ignore[arg-type]
    for b in range(3):
        y = indicator_targets(perm[b], 3) if kind == "categorical" else perm[b][:, None]
        expected = fold_score(kind, y, ridge_out_of_fold(xs, y, folds, lams), c)  # type: ignore[arg-type]
        assert null[b] == pytest.approx(expected, abs=1e-10)
        for blk in np.unique(blocks):
            assert sorted(perm[b][blocks == blk]) == sorted(values[blocks == blk])


@pytest.mark.parametrize("kind", ["two", "three", "continuous"])
def test_within_bootstrap_equals_stats(kind: str) -> None:
    """The vectorised CI of a probe beyond the target draws the resamples of
    ``stats.bootstrap_ci`` and gives its Estimate."""
    x, z, y, patients = _tied(1.0, 0, "continuous" if kind == "continuous" else "categorical")
    if kind == "three":
        z = np.random.default_rng(1).integers(0, 3, len(z) // 2)[patients]
    probe_kind = "continuous" if kind == "continuous" else "categorical"
    r = run_probe(x, z, probe_kind, groups=patients, n_permutations=0, n_control=0, within=y)  # type: ignore[arg-type]
    fast = score_estimate(r, patients, n_boot=300, seed=2)
    if kind == "continuous":

        def stat(lab: np.ndarray, s: np.ndarray, c: np.ndarray) -> float:
            return float(r2_columns_within(lab[:, None], s[:, None], c)[0])

    else:
        n_levels = len(r.levels)

        def stat(lab: np.ndarray, s: np.ndarray, c: np.ndarray) -> float:
            scores = s.reshape(len(lab), -1)
            return float(
                np.nanmean(auroc_columns_within(indicator_targets(lab, n_levels), scores, c))
            )

    ref = bootstrap_ci(stat, r.labels, r.oof, r.within, groups=patients, n_boot=300, seed=2)
    assert fast.value == pytest.approx(r.score) and fast.value == pytest.approx(ref.value)
    assert (fast.ci_low, fast.ci_high) == pytest.approx((ref.ci_low, ref.ci_high), abs=1e-12)


def test_probe_bad_inputs_raise_clear_errors() -> None:
    x = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(ProbeError, match="one level only"):
        run_probe(x, np.array(["A"] * 40), "categorical")
    with pytest.raises(ProbeError, match="constant"):
        run_probe(x, np.ones(40), "continuous")
    with pytest.raises(ProbeError, match="NaN"):
        run_probe(x, np.r_[np.nan, np.ones(39)], "continuous")
    with pytest.raises(ProbeError, match="constant within every target class"):
        run_probe(x, np.arange(40) % 2, "categorical", within=np.arange(40) % 2)
    bad = x.copy()
    bad[3, 1] = np.inf
    with pytest.raises(ProbeError, match="infinite"):
        run_probe(bad, np.arange(40) % 2, "categorical")


def test_prepare_attribute_notes() -> None:
    attr, note = prepare_attribute(
        "ward", np.array(["a"] * 30 + ["b"] * 30 + ["c"] * 3), "categorical", 20, 10
    )
    assert attr is not None and attr.known.sum() == 60 and "c (n=3)" in note
    attr, note = prepare_attribute("scanner", np.array(["X"] * 20), "categorical", 20, 10)
    assert attr is None and "one level only" in note
    attr, note = prepare_attribute(
        "bmi", np.r_[np.nan, np.nan, np.arange(20.0)], "continuous", 20, 10
    )
    assert attr is not None and attr.known.sum() == 20 and "2 rows with no value" in note


def test_vectorised_erasure_bootstrap_equals_stats() -> None:
    """The weighted-resample bootstrap draws the same patients as ``stats`` for the seed and
    gives the same intervals as its per-resample loop."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 120)
    patients = np.repeat(np.arange(60), 2)
    base = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 120), 0, 1)[:, None]
    erased = np.clip(base + rng.normal(0, 0.1, (120, 1)), 0, 1)
    boot = {"groups": patients, "n_boot": 200, "alpha": 0.05, "seed": 3}
    mine = erasure_effects(y, base, erased, [base], "binary", **boot)
    ref = paired_bootstrap_diff(auroc, (y, base[:, 0]), (y, erased[:, 0]), **boot)
    assert mine["dauroc"].value == pytest.approx(ref.value)
    assert mine["dauroc"].ci_low == pytest.approx(ref.ci_low)
    assert mine["dauroc"].ci_high == pytest.approx(ref.ci_high)
    dp = np.abs(erased - base)[:, 0]
    ref_dp = bootstrap_ci(np.mean, dp, **boot)
    assert (mine["dp"].ci_low, mine["dp"].ci_high) == pytest.approx((ref_dp.ci_low, ref_dp.ci_high))
    assert mine["dp_random"].value == 0 and mine["excess"].value == pytest.approx(dp.mean())


def test_excess_dp_p_is_one_sided() -> None:
    """ "Used" means erasing the attribute moves predictions *more* than a random subspace:
    moving them less is no evidence (p > 0.5), however clearly less."""
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 200)
    base = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.1, 200), 0.01, 0.99)[:, None]
    small = np.clip(base + rng.normal(0, 0.01, (200, 1)), 0, 1)
    large = np.clip(base + rng.normal(0, 0.1, (200, 1)), 0, 1)
    boot = {"groups": None, "n_boot": 200, "alpha": 0.05, "seed": 0}
    less = erasure_effects(y, base, small, [large], "binary", **boot)["excess"]
    more = erasure_effects(y, base, large, [small], "binary", **boot)["excess"]
    assert less.value < 0 and less.ci_high < 0 and less.null_p > 0.999
    assert more.value > 0 and more.ci_low > 0 and more.null_p < 1e-6


def _moved(base: np.ndarray, scales: list[float], seed: int) -> list[np.ndarray]:
    """Predictions after an erasure that moves each one by noise of SD ``scale`` (mean |dp|
    about 0.8 scale): one array per scale."""
    rng = np.random.default_rng(seed)
    return [np.clip(base + rng.normal(0, s, base.shape), 0, 1) for s in scales]


def _erasure_row(
    y: np.ndarray, base: np.ndarray, erased: np.ndarray, randoms: list[np.ndarray]
) -> ErasureRow:
    """The check's ErasureRow for one attribute (Holm over one test: p_holm = p)."""
    boot = {"groups": None, "n_boot": 400, "alpha": 0.05, "seed": 0}
    effects = erasure_effects(y, base, erased, randoms, "binary", **boot)
    draws = np.array([np.abs(r - base).mean() for r in randoms])
    row = ErasureRow(attribute="z", rank=1, residual=np.nan, dp_draws=draws, **effects)
    row.p_holm = row.excess.null_p
    return row


def _binary_base(n: int = 400, seed: int = 9) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.1, n), 0.05, 0.95)[:, None]


def test_random_reference_carries_the_spread_of_its_draws() -> None:
    """Each resample redraws the J random subspaces too: with three draws that disagree
    (mean |dp| about 0.01, 0.04, 0.16) the reference's CI is about as wide as the bootstrap
    of their mean (SD / sqrt(J)), far wider than patient resampling alone gives (the clean
    counterpart: three draws of the same size). An attribute a little above their mean
    (noise SD 0.12) is then no evidence of use; with the draws held fixed, as before, its
    excess had p < 1e-6."""
    y, base = _binary_base()
    attr = _moved(base, [0.12], seed=1)[0]
    spread = _erasure_row(y, base, attr, _moved(base, [0.01, 0.05, 0.2], seed=2))
    same = _erasure_row(y, base, attr, _moved(base, [0.05, 0.05, 0.05], seed=2))
    half_width = np.std(spread.dp_draws) / np.sqrt(3)  # bootstrap SE of a mean of 3 draws
    width = spread.dp_random.ci_high - spread.dp_random.ci_low
    assert width > 2 * half_width
    assert spread.dp_random.ci_low <= np.sort(spread.dp_draws)[1] <= spread.dp_random.ci_high
    assert same.dp_random.ci_high - same.dp_random.ci_low < 0.2 * width
    assert spread.dp_random_sd == pytest.approx(np.std(spread.dp_draws, ddof=1))
    # the excess is tested against that uncertain reference: not significant here
    assert spread.excess.value > 0 and spread.excess.null_p > 0.05
    assert not used_by_head(spread, 0.05, 0.0)
    assert same.excess.value > 0 and same.excess.null_p < 1e-6


def test_attribute_within_the_random_spread_is_not_used() -> None:
    """16 random subspaces whose effects range widely (noise SD 0.02 to 0.3): an attribute at
    SD 0.25 lies inside that spread -- above the draws' mean, so the excess over the mean is
    significant, but erasing it does no more than erasing a typical direction: not used. An
    attribute at SD 0.6, beyond every draw, is used."""
    y, base = _binary_base()
    randoms = _moved(base, list(np.linspace(0.02, 0.3, 16)), seed=3)
    inside, beyond = _moved(base, [0.25, 0.6], seed=4)
    row = _erasure_row(y, base, inside, randoms)
    assert row.dp_draws.min() < row.dp.value < row.dp_draws.max()
    assert excess_significant(row, 0.05, 0.02), "the mean test alone would call it used"
    assert not used_by_head(row, 0.05, 0.02)
    used = _erasure_row(y, base, beyond, randoms)
    assert used.dp.value > used.dp_draws.max() and used_by_head(used, 0.05, 0.02)


def test_multiclass_erasure_auroc_matches_stats() -> None:
    """Non-binary targets: the per-resample AUROC loop draws the patients of ``stats``."""
    from mmaudit.checks.probing.predictions import task_auroc

    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 150)
    patients = np.repeat(np.arange(75), 2)
    logits = rng.normal(size=(150, 3)) + 1.5 * np.eye(3)[y]
    base = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    erased = np.roll(base, 1, axis=0) * 0.3 + base * 0.7
    boot = {"groups": patients, "n_boot": 100, "alpha": 0.05, "seed": 2}
    mine = erasure_effects(y, base, erased, [base, erased], "multiclass", **boot)

    def task(yy: np.ndarray, pp: np.ndarray) -> float:
        return task_auroc(yy, pp, "multiclass")

    ref = paired_bootstrap_diff(task, (y, base), (y, erased), **boot)
    assert mine["dauroc"].value == pytest.approx(ref.value)
    assert (mine["dauroc"].ci_low, mine["dauroc"].ci_high) == pytest.approx(
        (ref.ci_low, ref.ci_high)
    )


def test_heatmap_shows_the_tested_score_beside_its_null() -> None:
    """The permutation null belongs to the ridge read-out; the heatmap prints that score next
    to the band (and the reported logistic AUROC above it), and the two agree closely."""
    from mmaudit.checks.probing.figures import heatmap, heatmap_label
    from mmaudit.checks.probing.records import ProbeRow
    from mmaudit.methods.stats import Estimate

    x, z, patients = _planted(0.5, 0, n=600)
    r = run_probe(x, z, "categorical", groups=patients, n_permutations=200, n_control=0)
    assert abs(r.score - r.test_score) < 0.02
    row = ProbeRow("z", "embedding", r, Estimate(r.score), p_holm=r.p_value)
    lo, hi = r.null_band()
    label = heatmap_label(row, 0.05)
    assert f"AUROC {r.score:.2f}" in label
    assert f"ridge {r.test_score:.2f}* vs null [{lo:.2f}, {hi:.2f}]" in label
    fig = heatmap([row], ["embedding"], 0.05)
    assert [t.get_text() for t in fig.axes[0].texts] == [label]
    import matplotlib.pyplot as plt

    plt.close(fig)


# ----------------------------------------------------------------------------- analytic head


class LinearHeadCache:
    """A stand-in cache: the fused embedding is given and the head is ``x @ w + b``."""

    def __init__(self, embedding: np.ndarray, w: np.ndarray, logits: np.ndarray | None = None):
        self.embedding = embedding
        self.w = w
        self.logits = embedding @ w[:, None] if logits is None else logits
        self.passes = 0

    def sweep(self) -> SweepResult:
        return SweepResult(self.logits, {"embedding": self.embedding})

    def embeddings(self, name: str) -> np.ndarray:
        return self.embedding if name == "embedding" else self.embedding[:, :3]

    def logits_with_layer(
        self, layer: str, values: np.ndarray, key: str | None = None
    ) -> np.ndarray:
        assert layer == "embedding"
        self.passes += 1
        return np.asarray(values, dtype=np.float64) @ self.w[:, None]


def analytic_context(head: str, seed: int = 0, n: int = 600, logits: str = "head") -> AuditContext:
    """Embedding dims: 0 disease, 1 site, 2 sex, 3-5 noise. The head reads disease only
    (``clean``) or disease and site (``shortcut``). Extra attributes carry bad inputs."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n // 2), 2)
    per = n // 2
    y = rng.integers(0, 2, per)[patients]
    site = rng.choice(["A", "B"], per)[patients]
    sex = rng.choice(["F", "M"], per)[patients]
    x = rng.normal(size=(n, 6))
    if logits != "hidden":  # hidden: the probed "embedding" lacks what the head reads
        x[:, 0] += 2.0 * y
    x[:, 1] += 2.0 * (site == "B")
    x[:, 2] += 1.5 * (sex == "M")
    w = np.array([3.0, 3.0 if head == "shortcut" else 0.0, 0, 0, 0, 0])
    b = -3.0 - (3.0 if head == "shortcut" else 0.0)
    x_head = x + b / (w @ w) * w  # fold the bias into the embedding offset
    age = rng.normal(60, 15, per)[patients]
    age[:7] = np.nan
    ward = np.where(np.arange(n) < 4, "icu", np.where(np.arange(n) % 2, "a", "b"))  # tiny level
    first = patients < 6  # 12 rows that become one patient: a level with too few patients
    patient_ids = np.where(first, "p0", np.char.add("p", patients.astype(str)))
    attributes = pd.DataFrame(
        {
            "site": site,
            "sex": sex,
            "age": age,
            "scanner": ["X"] * n,  # one level
            "ward": ward,
            "device": np.where(first, "new", "old"),  # 12 rows, 1 patient: fewer than folds
        }
    )
    logit_values = None
    if logits == "hidden":  # the head reads a feature the probed layer does not contain
        logit_values = (4.0 * (y - 0.5) + rng.normal(0, 1, n))[:, None]
    cache = LinearHeadCache(x_head, w, logit_values)
    return linear_head_context(
        cache, attributes, y, patient_ids, "factory:analytic", seed, continuous=("age",)
    )


def linear_head_context(
    cache: LinearHeadCache,
    attributes: pd.DataFrame,
    y: np.ndarray,
    patients: np.ndarray,
    source: str,
    seed: int,
    continuous: tuple[str, ...] = (),
) -> AuditContext:
    """The AuditContext a probing check sees for a linear-head model over an image input."""
    kinds = {c: "continuous" if c in continuous else "categorical" for c in attributes}
    config = SimpleNamespace(
        data=SimpleNamespace(
            target=SimpleNamespace(kind="binary"),
            attributes={c: AttributeConfig(kind=k) for c, k in kinds.items()},  # type: ignore[arg-type]
        )
    )
    dataset = SimpleNamespace(
        attributes=attributes, target=y, patients=patients, modalities=("image",)
    )
    adapter = SimpleNamespace(
        layers={"embedding": "fusion", "image": "image_encoder"},
        source=source,
        supports_hooks=True,
    )
    return AuditContext(config=config, dataset=dataset, adapter=adapter, cache=cache, seed=seed)  # type: ignore[arg-type]


def _run(ctx: AuditContext, **params: Any):
    check = ProbingCheck(
        build_params(ProbingCheck, {"random_baseline": False, "n_boot": 200, **params}, "probing")
    )
    return check.run(ctx)


@pytest.fixture(scope="module")
def analytic_runs() -> dict[str, Any]:
    return {head: _run(analytic_context(head)) for head in ("clean", "shortcut")}


def test_analytic_head_used_versus_only_encoded(analytic_runs: dict[str, Any]) -> None:
    clean, shortcut = analytic_runs["clean"].metrics, analytic_runs["shortcut"].metrics
    assert shortcut["verdict.site"] == "encoded_and_used"
    assert shortcut["encoded_and_used.site"] == 1
    assert clean["verdict.site"] == "encoded_not_used"
    for m in (clean, shortcut):
        assert m["verdict.sex"] == "encoded_not_used"
        assert m["verdict.age"] == "not_encoded"
        assert m["probe_auroc.site.embedding"].value > 0.8
        assert m["probe_auroc.site.embedding"].null_p < 0.05
        assert m["positive_control.passed"] == 1
    assert shortcut["erasure.excess_dp.site"].ci_low > 0.05
    assert clean["erasure.excess_dp.site"].value < 0.01
    # site is independent of the disease here, so the shortcut head is noisier for reading
    # it: erasing site moves predictions and even improves the AUROC
    assert shortcut["erasure.dauroc.site"].ci_low > 0 and shortcut["erasure.flip.site"].value > 0
    assert abs(clean["erasure.dauroc.site"].value) < 0.01


def origin_context(seed: int = 0, n: int = 400, pixels: int = 400, d: int = 8):
    """Pixels with a bright corner marker for ``site`` and a faint whole-image pattern for
    ``sex``; a randomly initialised linear encoder (d columns) and a trained one that is the
    same encoder with two columns learnt: a filter for the disease pattern (the head reads
    it) and one for the sex pattern, which lies outside the random encoder's view (orthogonal
    to its columns). So random weights expose site (the input carries it) but not sex (only
    training puts it in the embedding). Returns the context and the random-weights
    embeddings per layer."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n // 2), 2)
    y, site, sex = (rng.integers(0, 2, n // 2)[patients] for _ in range(3))
    w_random = rng.normal(size=(pixels, d)) / np.sqrt(pixels)
    q, _ = np.linalg.qr(w_random)
    unseen = rng.normal(size=pixels)
    unseen -= q @ (q.T @ unseen)  # invisible to the random encoder
    sex_pattern = unseen / np.linalg.norm(unseen)
    disease_pattern = rng.normal(size=pixels) / np.sqrt(pixels)
    image = rng.normal(size=(n, pixels))
    image[:, :20] += 3.0 * site[:, None]
    image += np.outer(2.5 * sex, sex_pattern) + np.outer(2.0 * y, disease_pattern)
    w_trained = w_random.copy()
    w_trained[:, 0], w_trained[:, 1] = disease_pattern, sex_pattern
    head = np.zeros(d)
    head[0] = 3.0
    trained = image @ w_trained - 1.0 / 3.0 * head  # logit 3 (disease filter - 1)
    random = image @ w_random
    attributes = pd.DataFrame(
        {"site": np.array(["A", "B"])[site], "sex": np.array(["F", "M"])[sex]}
    )
    cache = LinearHeadCache(trained, head)
    ctx = linear_head_context(cache, attributes, y, patients.astype(str), "factory:origin", seed)
    return ctx, {"embedding": random, "image": random[:, :3]}


def test_random_weights_tell_input_from_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Known origins: the marker is in the pixels, so a random network already exposes site
    (the trained encoder is not clearly above it): "input"; the sex pattern reaches the
    embedding only through a learnt filter: "training". Both probes of the random network
    have permutation p-values (Holm) and bootstrap CIs."""
    ctx, random = origin_context()
    monkeypatch.setattr(random_weights, "randomised_embeddings", lambda ctx, layers: random)
    out = _run(ctx, random_baseline=True)
    m = out.metrics
    assert m["probe_origin.site.embedding"] == "input"
    assert m["probe_origin.sex.embedding"] == "training"
    assert m["probe_random.site.embedding"].null_p < 0.05
    assert m["probe_random.sex.embedding"].null_p > 0.05
    assert m["probe_random.sex.embedding"].ci_high < m["probe_auroc.sex.embedding"].ci_low
    notes = " | ".join(out.notes)
    assert "site: the input carries it" in notes and "sex: training put it there" in notes
    table = out.tables["probes"].set_index(["attribute", "layer"])
    assert table.loc[("sex", "embedding"), "origin"] == "training"
    assert table.loc[("site", "embedding"), "random_p_holm"] < 0.05
    import matplotlib.pyplot as plt

    for fig in out.figures.values():
        plt.close(fig)


def test_bad_attributes_give_notes_not_crashes(analytic_runs: dict[str, Any]) -> None:
    out = analytic_runs["clean"]
    notes = " | ".join(out.notes)
    assert "scanner" in notes and "one level only" in notes
    assert "age: 7 rows with no value" in notes
    assert "icu (n=4)" in notes
    assert "fewer samples than folds" in notes and "device" in notes
    assert not any(k.startswith("probe_auroc.scanner") for k in out.metrics)
    assert "probe_auroc.ward.embedding" in out.metrics
    assert "device: no verdict" in notes and "verdict.device" not in out.metrics


def test_erasure_figure_shows_dp_flips_and_auroc(analytic_runs: dict[str, Any]) -> None:
    fig = analytic_runs["shortcut"].figures["erasure"]
    assert [ax.get_ylabel() for ax in fig.axes] == ["mean |Δp|", "flip rate", "Δ AUROC"]


def test_positive_control_failure_is_an_error_finding() -> None:
    out = _run(analytic_context("clean", logits="hidden"), attributes=["sex"])
    errors = [f for f in out.findings if f.severity == "error"]
    assert out.metrics["positive_control.passed"] == 0
    assert errors and "pipeline" in errors[0].message


# ----------------------------------------------------------------------------- the sample


@pytest.fixture(scope="module")
def sample_run() -> tuple[AuditContext, Any, dict[str, Any]]:
    """The shortcut checkpoint on the full test split (293 studies, 260 patients)."""
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

    cfg = load_config(ROOT / "configs" / "sample.yaml")
    cfg.runtime.device = "cpu"
    cfg.runtime.progress = False
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    cache = InferenceCache(adapter, ds, batch_size=128, seed=0)
    cache.request_layers([k for k in ProbingCheck.layers_wanted if k in adapter.layers])
    ctx = AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)
    before = {k: v.clone() for k, v in adapter.module.state_dict().items()}
    check = ProbingCheck(build_params(ProbingCheck, {"n_boot": 200}, "probing"))
    return ctx, check.run(ctx), before


def test_sample_site_used_sex_only_encoded(sample_run: tuple[AuditContext, Any, dict]) -> None:
    _, out, _ = sample_run
    m = out.metrics
    assert m["verdict.site"] == "encoded_and_used"
    assert m["verdict.sex"] == "encoded_not_used"
    assert m["verdict.age"] == "not_encoded"
    assert m["probe_auroc.site.embedding"].value > 0.95
    assert m["probe_auroc.sex.image"].value > 0.8 and m["probe_auroc.sex.image"].null_p < 0.05
    # site is tied to the label (prevalence 0.2 / 0.8): the text and lab encoders decode it
    # through the label only (plain probe ~0.63), so it is not encoded there beyond it
    for layer in ("text", "tabular"):
        assert m[f"probe_auroc_marginal.site.{layer}"].value > 0.6
        assert m[f"probe_auroc.site.{layer}"].null_p > 0.05
    assert m["positive_control.passed"] == 1
    # the marker and the body width are in the pixels: random weights decode them too
    assert m["probe_random.site.image"].value > 0.9
    # ... so the check says the input carries them, not training
    assert m["probe_origin.site.image"] == "input"
    assert m["probe_origin.sex.embedding"] == "input"
    assert "sex: the input carries it" in " | ".join(out.notes)
    assert not [f for f in out.findings if f.severity == "error"]
    assert {"probe_heatmap", "probe_null", "erasure"} <= set(out.figures)
    assert set(out.tables["probes"]["attribute"]) == {"site", "sex", "age"}


def test_sample_run_leaves_the_model_alone(sample_run: tuple[AuditContext, Any, dict]) -> None:
    ctx, out, before = sample_run
    assert ctx.adapter.hook_count() == 0
    after = ctx.adapter.module.state_dict()
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    import matplotlib.pyplot as plt

    for fig in out.figures.values():
        plt.close(fig)


def test_reinitialise_redraws_every_weight_deterministically() -> None:
    import torch

    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
        m.register_parameter("token", torch.nn.Parameter(torch.ones(3)))
        return m

    a, b, original = make(), make(), make()
    state = torch.random.get_rng_state()
    reinitialise(a, seed=5)
    reinitialise(b, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state), "the global RNG is untouched"
    for (name, pa), pb, po in zip(
        a.named_parameters(), b.parameters(), original.parameters(), strict=True
    ):
        assert torch.equal(pa, pb), name
        if name.endswith("weight") and "1." not in name or name == "token":
            assert not torch.equal(pa, po), name


# ----------------------------------------------------------------------------- the whole run


@pytest.fixture(scope="module")
def scanner_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset with one more attribute that has one level only."""
    manifest = write_tiny_dataset(tmp_path_factory.mktemp("tiny_scanner"))
    frame = pd.read_csv(manifest)
    frame["scanner"] = "X"
    frame.to_csv(manifest, index=False)
    return manifest


@pytest.mark.parametrize(
    ("changes", "probing_note", "subgroups_note", "statuses"),
    [
        (
            {"data": {"attributes": {"scanner": {}}}},
            "one level only",
            "scanner: one group only",
            {"probing": "skipped", "subgroups": "skipped"},
        ),
        (
            {"data": {"attributes": {}}},
            "no data.attributes",
            "no data.attributes",
            {"probing": "skipped", "subgroups": "skipped"},
        ),
        (
            # age (continuous) is still probed on 8 rows; no group reaches 20 rows
            {"runtime": {"max_samples": 8}},
            "one level only",
            "fewer than two groups",
            {"probing": "pass", "subgroups": "skipped"},
        ),
    ],
    ids=["one_level", "no_attributes", "eight_samples"],
)
def test_bad_input_runs_end_to_end_with_notes(
    changes: dict[str, Any],
    probing_note: str,
    subgroups_note: str,
    statuses: dict[str, str],
    scanner_manifest: Path,
    tiny_weights: Path,
    write_config: Any,
    tmp_path: Path,
) -> None:
    """Through the runner and the report writer (where an empty table once crashed the
    run): the report folder is complete, neither check errs, and the notes say why. Where
    nothing could be probed or compared, the checks are skipped with the reason, not
    passed."""
    cfg = tiny_config(scanner_manifest, byo_model_config(tiny_weights / "tiny.safetensors"))
    for section, value in changes.items():
        cfg[section] = {**cfg[section], **value}
    cfg["checks"] = {c: {"params": {"n_boot": 50}} for c in ("probing", "subgroups")}
    out = tmp_path / "report"
    run_audit(write_config(cfg), out, Overrides(checks=["probing", "subgroups"]))
    report = json.loads((out / "report.json").read_text())
    assert (out / "index.html").exists() and (out / "summary.md").exists()
    for name, note in (("probing", probing_note), ("subgroups", subgroups_note)):
        check = report["checks"][name]
        assert check["status"] == statuses[name], (name, check.get("reason"))
        assert (check["judged"] == 0) == (statuses[name] == "skipped"), check["judged"]
        if statuses[name] == "skipped":
            assert check["reason"], name
        assert note in " | ".join(check["notes"]), (name, check["notes"])
        for table in check["tables"].values():
            assert (out / table).read_text().strip(), f"{name} wrote an empty table {table}"


# ----------------------------------------------------------------------------- planted, check


def planted_context(
    delta: float, seed: int, n: int = 300, d: int = 64, tied: bool = False, tie: float = 0.8
) -> AuditContext:
    """An attribute z (two levels, constant per patient, 2 rows each) planted along a random
    unit direction of a d-dimensional fused embedding, shifted by ``delta`` noise SDs; the
    disease sits on dimension 0, which is all the head reads (so z is never used). ``tied``:
    z depends on the label (P(z = 1 | y) = 1 - tie / tie), as a site with a higher
    prevalence."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n // 2), 2)
    y_p = rng.integers(0, 2, n // 2)
    z_p = rng.integers(0, 2, n // 2)
    if tied:
        z_p = (rng.random(n // 2) < np.where(y_p == 1, tie, 1 - tie)).astype(int)
    y, z = y_p[patients], z_p[patients]
    u = rng.normal(size=d - 1)
    u /= np.linalg.norm(u)
    x = rng.normal(size=(n, d))
    x[:, 0] += 2.0 * y
    x[:, 1:] += delta * z[:, None] * u
    w = np.zeros(d)
    w[0] = 3.0
    cache = LinearHeadCache(x - w / 3.0, w)  # logit 3 (x0 - 1)
    attributes = pd.DataFrame({"z": np.where(z == 1, "b", "a")})
    return linear_head_context(cache, attributes, y, patients.astype(str), "factory:planted", seed)


def test_check_detects_a_planted_direction_and_not_its_absence() -> None:
    """Through ProbingCheck (Holm over the fused embedding and an encoder layer, 1000
    permutations, the judged rules): delta = 1 SD on n = 300, d = 64 is called encoded (and
    not used: the head never reads it) in every seed; delta = 0 never is. The power at
    smaller delta is in the README."""
    import matplotlib.pyplot as plt

    fast = {"random_baseline": False, "n_boot": 50, "n_control": 1, "erasure_draws": 1}
    for seed in range(3):
        for delta, verdict in ((1.0, "encoded_not_used"), (0.0, "not_encoded")):
            out = _run(planted_context(delta, seed), **fast)
            assert out.metrics["verdict.z"] == verdict, (seed, delta)
            warned = [
                f.metric for f in judge("probing", out.metrics, ProbingCheck.default_thresholds)
            ]
            assert ("probe_auroc.z.embedding" in warned) == (delta > 0), (seed, delta, warned)
            assert "encoded_and_used.z" not in warned
            for fig in out.figures.values():
                plt.close(fig)


def test_check_judges_encoded_beyond_the_target() -> None:
    """Through ProbingCheck: z tied to the label and absent from the embedding otherwise is
    not encoded (no warn, verdict not_encoded) although the plain probe, reported as
    probe_auroc_marginal, decodes it through the label; planted beyond the label it is
    encoded (1.5 SDs: within-class pairs are fewer than all pairs, so conditioning costs
    power when the attribute is tied to the label; 1 SD is found in 2 of 3 seeds).
    ``within_target: false`` judges the plain probe again (and calls it encoded)."""
    import matplotlib.pyplot as plt

    fast = {"random_baseline": False, "n_boot": 50, "n_control": 1, "erasure_draws": 1}
    floor = ProbingCheck.Params().min_auroc
    for delta, within_target, verdict in (
        (0.0, True, "not_encoded"),
        (1.5, True, "encoded_not_used"),
        (0.0, False, "encoded_not_used"),
    ):
        out = _run(planted_context(delta, 0, tied=True), within_target=within_target, **fast)
        m = out.metrics
        assert m["verdict.z"] == verdict, (delta, within_target)
        warned = [f.metric for f in judge("probing", m, ProbingCheck.default_thresholds)]
        assert ("probe_auroc.z.embedding" in warned) == (verdict != "not_encoded")
        table = out.tables["probes"].set_index(["attribute", "layer"])
        notes = " | ".join(out.notes)
        assert "z is associated with the target" in notes
        if within_target:
            assert m["probe_auroc_marginal.z.embedding"].value > floor
            assert "probe_auroc_marginal.z.embedding" not in warned  # reported, not judged
            assert table.loc[("z", "embedding"), "within_target"]
            assert table.loc[("z", "embedding"), "marginal_score"] > floor
            assert "probe scores are beyond the target" in notes
        else:
            assert not any(k.startswith("probe_auroc_marginal") for k in m)
            assert not table.loc[("z", "embedding"), "within_target"]
        if delta == 0.0 and within_target:
            assert abs(m["probe_auroc.z.embedding"].value - 0.5) < 0.1
        for fig in out.figures.values():
            plt.close(fig)


def test_an_attribute_collinear_with_the_target_is_judged_on_the_plain_probe() -> None:
    """A site that is 99.5 % one class (the detection benchmark's marker at rho 0.99) leaves
    almost no rows within a class to condition on: 'beyond the target' cannot be measured,
    so the plain probe is judged, use is not tested (within-class erasure would rest on a
    row or two) and notes say why; z at 0.8 / 0.2 is conditioned."""
    import matplotlib.pyplot as plt

    fast = {"random_baseline": False, "n_boot": 50, "n_control": 1, "erasure_draws": 1}
    out = _run(planted_context(0.0, 0, tied=True, tie=0.995), **fast)
    notes = " | ".join(out.notes)
    assert "z is nearly collinear with the target" in notes
    table = out.tables["probes"].set_index(["attribute", "layer"])
    assert not table.loc[("z", "embedding"), "within_target"]
    # the label carries it; whether the head uses z apart from the label cannot be tested
    assert out.metrics["verdict.z"] == "encoded_use_untested"
    assert "erasure of z skipped: nearly collinear" in notes
    conditioned = _run(planted_context(0.0, 0, tied=True), **fast)
    assert "nearly collinear" not in " | ".join(conditioned.notes)
    for o in (out, conditioned):
        for fig in o.figures.values():
            plt.close(fig)


def test_collinearity_needs_rows_off_the_majority_within_classes() -> None:
    y = np.repeat([0, 1], 50)
    site = np.where(y == 1, "B", "A")
    site[:5] = "B"  # five rows off their class's majority
    known = np.ones(100, dtype=bool)
    attr = Attribute("site", "categorical", known, site)
    assert "only 5 row(s)" in (collinear_with_target(attr, y, 10) or "")
    site[5:20] = "B"
    assert collinear_with_target(Attribute("site", "categorical", known, site), y, 10) is None
    age = y * 10.0 + np.random.default_rng(0).normal(0, 0.1, 100)
    assert "variance lies within" in (
        collinear_with_target(Attribute("age", "continuous", known, age), y, 10) or ""
    )
    spread = y + np.random.default_rng(0).normal(0, 1.0, 100)
    assert collinear_with_target(Attribute("age", "continuous", known, spread), y, 10) is None


@pytest.fixture(scope="module")
def twelve_rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset cut to 12 rows: sex F 8 / M 4, site A 6 / B 6."""
    return write_tiny_dataset(tmp_path_factory.mktemp("twelve_rows"), n=12)


def _probing_and_subgroups(
    manifest: Path, weights: Path, write_config: Any, out: Path
) -> dict[str, Any]:
    cfg = tiny_config(
        manifest,
        byo_model_config(weights / "tiny.safetensors"),
        data={"attributes": {"sex": {}, "site": {}}},
        checks={
            "probing": {"params": {"n_boot": 50}},
            "subgroups": {"params": {"n_boot": 50, "n_permutations": 50}},
        },
    )
    run_audit(write_config(cfg), out, Overrides(checks=["probing", "subgroups"]))
    return json.loads((out / "report.json").read_text())["checks"]


def test_nothing_probed_is_skipped_with_the_counts_not_pass(
    twelve_rows: Path, tiny_manifest: Path, tiny_weights: Path, write_config: Any, tmp_path: Path
) -> None:
    """12 rows: no attribute level reaches min_level_size (10) and no group min_group_size
    (20), so neither check tested anything: skipped, with every attribute's counts -- a
    gate must not go green on it. The 48-row counterpart is judged and passes."""
    checks = _probing_and_subgroups(twelve_rows, tiny_weights, write_config, tmp_path / "r12")
    probing, subgroups = checks["probing"], checks["subgroups"]
    assert probing["status"] == "skipped" and probing["judged"] == 0
    assert probing["reason"] == (
        "no attribute could be probed:"
        " sex (F 8 / M 4 rows, each level needs min_level_size = 10);"
        " site (A 6 / B 6 rows, each level needs min_level_size = 10)"
    )
    assert subgroups["status"] == "skipped" and subgroups["judged"] == 0
    assert "min_group_size = 20" in subgroups["reason"]
    assert "(sex: F 8 / M 4 rows; site: A 6 / B 6 rows)" in subgroups["reason"]
    assert probing["rows_used"] == subgroups["rows_used"] == 0
    assert probing["rows_total"] == 12

    clean = _probing_and_subgroups(tiny_manifest, tiny_weights, write_config, tmp_path / "r48")
    probing, subgroups = clean["probing"], clean["subgroups"]
    # two attributes x three layers (embedding, image, tabular), plus two use verdicts
    assert probing["status"] == "pass" and probing["judged"] == 8, probing
    assert probing["rows_used"] == probing["rows_total"] == 48
    assert probing["coverage"] == []
    # site A 24 / B 24 is compared (AUROC, EOD, ECE gaps); sex M has 16 rows < 20
    assert subgroups["status"] == "pass" and subgroups["judged"] == 3, subgroups
    assert subgroups["rows_used"] == 48
    assert any("gaps judged for 1 of 2 attributes" in c for c in subgroups["coverage"])


def test_an_attribute_left_out_is_a_coverage_note_with_counts(
    scanner_manifest: Path, tiny_weights: Path
) -> None:
    """One attribute probed, one with a single level: the verdict covers one of two, and a
    coverage note says so with the counts (what every view shows)."""
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.config import AuditConfig
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

    raw = tiny_config(
        scanner_manifest,
        byo_model_config(tiny_weights / "tiny.safetensors"),
        data={"attributes": {"site": {}, "scanner": {}}},
    )
    cfg = AuditConfig.model_validate(raw)
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    cache = InferenceCache(adapter, ds, batch_size=16)
    cache.request_layers(["embedding"])
    ctx = AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)
    check = ProbingCheck(
        build_params(
            ProbingCheck,
            {"n_boot": 50, "random_baseline": False, "layers": ["embedding"]},
            "probing",
        )
    )
    out = check.run(ctx)
    assert out.judged == 2  # site on the fused embedding, and its use verdict
    assert out.coverage == [
        "1 of 2 attributes probed; not probed: scanner (one level only, X 48 rows)"
    ]


def test_a_non_finite_random_model_loses_only_the_random_weights_probe(
    tiny_manifest: Path, tiny_weights: Path, write_config: Any, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Re-drawn weights that give NaN are the baseline's problem, not the checkpoint's: the
    run goes on (no exit 2 blaming the checkpoint), probing keeps its probes and notes why
    the random-weights probe did not run. The audited model's own NaN still stops the run
    (tests/test_runner.py)."""
    import torch

    def nan_weights(module: torch.nn.Module, seed: int) -> None:
        with torch.no_grad():
            for q in module.parameters():
                q.fill_(float("nan"))

    monkeypatch.setattr(random_weights, "reinitialise", nan_weights)
    cfg = tiny_config(tiny_manifest, byo_model_config(tiny_weights / "tiny.safetensors"))
    cfg["checks"] = {"probing": {"params": {"n_boot": 50, "random_baseline": True}}}
    out = tmp_path / "report"
    run_audit(write_config(cfg), out, Overrides(checks=["probing"]))
    check = json.loads((out / "report.json").read_text())["checks"]["probing"]
    assert check["status"] != "error", check.get("reason")
    notes = " | ".join(check["notes"])
    assert "random-weights probe not run: the randomised model produced non-finite" in notes
    assert "is NaN for ids" in notes
    assert any(k.startswith("probe_auroc.") for k in check["metrics"])
    assert not any(k.startswith(("probe_random.", "probe_origin.")) for k in check["metrics"])
