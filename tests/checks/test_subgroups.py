"""The ``subgroups`` check: metrics equal a hand computation, a planted gap is flagged and its
clean counterpart is not, bad inputs become notes, and the sample's shortcut shows up as a
site gap in error rates."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mmaudit.checks.contract import AuditContext, CheckOutput, build_params
from mmaudit.checks.findings import judge
from mmaudit.checks.subgroups.analysis import analyse_groups
from mmaudit.checks.subgroups.check import SubgroupsCheck
from mmaudit.checks.subgroups.grouping import assign_groups, equal_prevalence_rows
from mmaudit.checks.subgroups.operating_point import operating_threshold
from mmaudit.checks.subgroups.publish import gap_metrics, holm_corrected
from mmaudit.engine.config import AttributeConfig
from mmaudit.engine.sweep_outputs import SweepResult
from mmaudit.methods.stats import Estimate

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- by hand

Y = np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0])
S = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.7, 0.4, 0.5, 0.35, 0.3, 0.2])
G = np.array(["A"] * 6 + ["B"] * 6)


def test_group_metrics_equal_a_hand_computation() -> None:
    """At threshold 0.5 and 2 calibration bins ([0, .5), [.5, 1]):
    A: TPR 2/3, FPR 1/3, AUROC 8/9 (pairs won: 3 + 3 + 2 of 9),
       ECE (|1 - 0.6| + |2 - 2.3|) / 6 = 0.7 / 6;
    B: TPR 1/2, FPR 1/4, AUROC 7/8 (4 + 3 of 8), ECE (|1 - 1.25| + |1 - 1.2|) / 6 = 0.45 / 6."""
    grouping = assign_groups("g", G, "categorical")
    res = analyse_groups(
        grouping,
        Y,
        S[:, None],
        None,
        "binary",
        0.5,
        n_boot=50,
        ece_bins=2,
        min_group_size=1,
        min_class_size=1,
    )
    v = res.values
    assert res.n == [6, 6] and res.n_pos == [3, 2]
    assert v["tpr"] == pytest.approx([2 / 3, 1 / 2])
    assert v["fpr"] == pytest.approx([1 / 3, 1 / 4])
    assert v["auroc"] == pytest.approx([8 / 9, 7 / 8])
    assert v["ece"] == pytest.approx([0.7 / 6, 0.45 / 6])
    assert res.gaps["auroc"].value == pytest.approx(8 / 9 - 7 / 8)
    assert res.gaps["tpr"].value == pytest.approx(1 / 6)
    assert res.gaps["fpr"].value == pytest.approx(1 / 12)
    assert res.gaps["ece"].value == pytest.approx(0.25 / 6)
    assert res.gaps["eod"].value == res.gaps["tpr"].value, "equalised odds: the larger gap"


def test_operating_thresholds_by_hand() -> None:
    # positives 0.9 0.8 0.7 0.4 0.3, negatives 0.6 0.5 0.35 0.3 0.2 0.2 0.1. J = TPR - FPR:
    # t=0.7: 3/5 - 0 = 0.60 (best); t=0.4: 4/5 - 2/7 = 0.51; t=0.3: 1 - 4/7 = 0.43.
    # FPR <= 0.15: TPR 3/5 at best (t = 0.7 or 0.6), the higher is taken; FPR <= 0.3: t=0.4.
    assert operating_threshold(Y, S, "youden", 0.1, 0.5) == pytest.approx(0.7)
    assert operating_threshold(Y, S, "target_fpr", 0.15, 0.5) == pytest.approx(0.7)
    assert operating_threshold(Y, S, "target_fpr", 0.3, 0.5) == pytest.approx(0.4)
    assert operating_threshold(Y, S, "fixed", 0.1, 0.42) == 0.42


def test_continuous_attributes_are_binned() -> None:
    age = np.array([30, 40, 59.9, 60, 75, 90, np.nan])
    g = assign_groups("age", age, "continuous", bins=[40, 60, 75])
    assert g.codes.tolist() == [0, 1, 1, 2, 3, 3, -1]
    assert g.labels == ["<40", "40-60", "60-75", ">=75"]
    assert g.keys == ["lt40", "40to60", "60to75", "ge75"]
    assert g.missing == 1
    empty_bin = assign_groups("age", np.array([30.0, 35, 80]), "continuous", bins=[40, 60, 75])
    assert empty_bin.labels == ["<40", ">=75"] and empty_bin.codes.tolist() == [0, 0, 1]
    quartiles = assign_groups("age", np.arange(100.0), "continuous", quantile_bins=4)
    assert np.bincount(quartiles.codes).tolist() == [25, 25, 25, 25]


def test_equal_prevalence_resampling() -> None:
    rng = np.random.default_rng(0)
    codes = np.repeat([0, 1], 200)
    y = np.r_[rng.random(200) < 0.2, rng.random(200) < 0.8].astype(int)
    overall = y.mean()
    kept = equal_prevalence_rows(y, codes, rng)
    for g in (0, 1):
        rows = kept[codes[kept] == g]
        assert y[rows].mean() == pytest.approx(overall, abs=0.01)
    assert len(np.unique(kept)) == len(kept)


# ----------------------------------------------------------------------------- the check


def synthetic_context(gap: float, seed: int = 0, n: int = 800) -> AuditContext:
    """Two sites, 2 rows per patient; site B's scores lose ``gap`` of their signal.
    Extra attributes: one level, a tiny group, NaN values, a continuous one."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n // 2), 2)
    site = rng.choice(["A", "B"], n // 2)[patients]
    y = rng.integers(0, 2, n)
    strength = np.where(site == "B", 2.0 * (1 - gap), 2.0)
    logit = strength * (y - 0.5) * 2 + rng.normal(0, 1, n)
    ward = np.where(np.arange(n) < 6, "icu", rng.choice(["a", "b"], n))
    sex = rng.choice(["F", "M"], n).astype(object)
    sex[:9] = None
    attributes = pd.DataFrame(
        {
            "site": site,
            "scanner": ["X"] * n,
            "ward": ward,
            "sex": sex,
            "age": rng.normal(60, 15, n),
        }
    )
    kinds = {"age": "continuous"}
    config = SimpleNamespace(
        data=SimpleNamespace(
            target=SimpleNamespace(kind="binary"),
            attributes={c: AttributeConfig(kind=kinds.get(c, "categorical")) for c in attributes},
        )
    )
    dataset = SimpleNamespace(attributes=attributes, target=y, patients=patients.astype(str))
    cache = SimpleNamespace(sweep=lambda: SweepResult(logit[:, None]))
    return AuditContext(config=config, dataset=dataset, adapter=None, cache=cache, seed=seed)  # type: ignore[arg-type]


def _run(ctx: AuditContext, **params: Any):
    check = SubgroupsCheck(build_params(SubgroupsCheck, {"n_boot": 200, **params}, "subgroups"))
    out = check.run(ctx)
    assert set(out.figures) == {"group_metrics", "roc"}
    import matplotlib.pyplot as plt

    for fig in out.figures.values():
        plt.close(fig)
    return out, judge("subgroups", out.metrics, SubgroupsCheck.default_thresholds)


def test_planted_gap_fails_and_clean_counterpart_passes() -> None:
    out, findings = _run(synthetic_context(gap=0.6))
    gap = out.metrics["gap.auroc.site"]
    assert gap.ci_low > 0 and gap.null_p < 0.05
    assert any(f.severity == "fail" and f.metric == "gap.auroc.site" for f in findings)
    clean, clean_findings = _run(synthetic_context(gap=0.0))
    assert clean.metrics["gap.auroc.site"].ci_low < 0 < clean.metrics["gap.auroc.site"].ci_high
    assert not [f for f in clean_findings if f.severity in ("warn", "fail")]


def test_bad_inputs_are_notes_not_crashes() -> None:
    out, _ = _run(synthetic_context(gap=0.0))
    notes = " | ".join(out.notes)
    assert "scanner: one group only" in notes
    assert "sex: 9 rows with no value" in notes
    small = [f for f in out.findings if f.rule == "small_group"]
    assert small and all(f.severity == "note" for f in small)
    assert "icu" in small[0].message and "too small to judge" in small[0].message
    assert out.metrics["group.ward.icu.n"] == 6
    assert out.metrics["small_groups.ward"] == 1
    assert "gap.auroc.ward" in out.metrics, "the two judged wards are still compared"
    age_groups = {k.split(".")[2] for k in out.metrics if k.startswith("group.age.")}
    assert len(age_groups) == 4, "quartile bins without configured edges"
    tiny, _ = _run(synthetic_context(gap=0.0), attributes=["ward"], min_group_size=500)
    assert "fewer than two groups large enough" in " | ".join(tiny.notes)
    assert "gap.auroc.ward" not in tiny.metrics


def test_equal_prevalence_option_runs() -> None:
    out, _ = _run(synthetic_context(gap=0.0), attributes=["site"], equal_prevalence=True)
    assert "resampled to the overall prevalence" in " | ".join(out.notes)


# ----------------------------------------------------------------------------- the sample


def test_sample_shortcut_shows_a_site_gap_in_error_rates() -> None:
    """The shortcut model calls site B positive far more often: at one global threshold the
    false-positive rates of the two sites differ (equalised odds fails), while AUROC within
    each site stays similar."""
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
    ctx = AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)
    out, findings = _run(ctx, n_boot=1000)  # the defaults: 29 site-B negatives, a wide CI
    assert out.metrics["group.site.B.fpr"].value > out.metrics["group.site.A.fpr"].value + 0.15
    assert any(f.severity == "fail" and f.metric == "eod.site" for f in findings)
    assert out.metrics["gap.auroc.site"].ci_low < 0.05


def test_p_beyond_the_permutation_resolution_is_shown_as_a_bound() -> None:
    """A planted gap no shuffle reaches gets an extrapolated p (kept in the metric, so Holm
    can reach 0.05); the figure and the notes show it as below 1/(B+1), never its digits."""
    import matplotlib.pyplot as plt

    from mmaudit.checks.subgroups.figures import p_text

    assert p_text(8.6e-19, 1000) == "< 0.001" and p_text(0.003, 1000) == "0.003"
    assert p_text(0.0009, 2000) == "0.0009"  # resolvable with 2000 shuffles

    def titles(gap: float) -> tuple[str, list[str], float]:
        check = SubgroupsCheck(
            build_params(SubgroupsCheck, {"n_boot": 100, "n_permutations": 100}, "subgroups")
        )
        out = check.run(synthetic_context(gap=gap))
        fig = out.figures["group_metrics"]
        text = " ".join(ax.get_title() for ax in fig.axes)
        for f in out.figures.values():
            plt.close(f)
        return text, out.notes, out.metrics["eod.site"].null_p

    planted, notes, p = titles(0.9)
    assert p < 1 / 101  # the tail extrapolation, kept for report.json
    assert "(p < 0.01)" in planted and "e-" not in planted
    assert any("extrapolated" in n for n in notes)
    clean, clean_notes, clean_p = titles(0.0)
    assert clean_p > 1 / 101 and "(p < " not in clean
    assert not any("extrapolated" in n for n in clean_notes)


def test_best_minus_worst_gap_is_tested_against_shuffled_groups() -> None:
    """Six groups with one and the same (label, score) distribution: the best-minus-worst
    TPR gap is positive and its bootstrap CI mostly excludes zero (the pair was picked on
    the same data), yet the permutation p must stay calibrated (about 5 % below 0.05)."""
    seeds = range(12)
    ci_above_zero, significant = 0, 0
    for seed in seeds:
        rng = np.random.default_rng(seed)
        n = 360
        y = rng.integers(0, 2, n)
        score = 1 / (1 + np.exp(-(1.2 * (2 * y - 1) + rng.normal(0, 1.5, n))))
        grouping = assign_groups("g", np.repeat(list("ABCDEF"), n // 6), "categorical")
        res = analyse_groups(
            grouping,
            y,
            score[:, None],
            None,
            "binary",
            0.5,
            n_boot=50,
            n_permutations=200,
            seed=seed,
        )
        eod = res.gaps["eod"]
        ci_above_zero += int(eod.ci_low > 0)
        significant += int(eod.null_p < 0.05)
    assert ci_above_zero >= 6  # the selection bias the permutation null corrects
    assert significant <= 2


def test_shuffled_codes_keep_patients_whole() -> None:
    from mmaudit.checks.subgroups.analysis import code_shuffler

    codes = np.array([0, 0, 1, 1, 1, 2, 2, 0])
    patients = np.array(["p", "p", "q", "q", "q", "r", "r", "s"])
    rng = np.random.default_rng(0)
    for _ in range(20):
        shuffled = code_shuffler(codes, patients)(rng)
        for pid in np.unique(patients):
            assert len(set(shuffled[patients == pid])) == 1
        assert sorted(np.unique(shuffled, return_counts=False)) == sorted(set(shuffled.tolist()))
    # a patient with two groups: rows are shuffled instead
    mixed = np.array([0, 1, 1, 1, 1, 2, 2, 0])
    assert sorted(code_shuffler(mixed, patients)(rng)) == sorted(mixed)


def test_vectorised_group_table_equals_the_per_group_metrics() -> None:
    from mmaudit.checks.subgroups.group_metrics import binary_group_table, task_metrics

    rng = np.random.default_rng(3)
    n, g = 400, 5
    y = rng.integers(0, 2, n)
    score = np.round(rng.uniform(0, 1, n), 2)  # ties on purpose
    score[:7] = 1.0
    codes = rng.integers(0, g, n)
    table = binary_group_table(codes, y, score, 0.42, 10, g)
    for k in range(g):
        sel = codes == k
        want = task_metrics(y[sel], score[sel, None], "binary", 0.42, 10)
        for m in ("auroc", "tpr", "fpr", "ece"):
            assert table[m][k] == pytest.approx(want[m], abs=1e-12), (m, k)


# ----------------------------------------------------------------------------- gap rules


def _one_gap(ci_low: float) -> CheckOutput:
    """The check's published metrics for one AUROC gap of 0.15 (above the fail limit 0.10)
    with permutation p 0.001 and a CI [ci_low, 0.31]."""
    grouping = assign_groups("site", G, "categorical")
    res = analyse_groups(
        grouping, Y, S[:, None], None, "binary", 0.5, n_boot=50, min_group_size=1, min_class_size=1
    )
    res.gaps = {"auroc": Estimate(0.15, ci_low, 0.31, 12, 0.001)}
    out = CheckOutput()
    out.metrics.update(gap_metrics(holm_corrected([res])))
    return out


def test_a_gap_fails_only_when_its_ci_excludes_zero() -> None:
    """Issue 5: "a gap whose CI excludes zero and exceeds the threshold -> fail". A gap above
    the limit that beats the permutation null but whose CI includes zero is no finding."""
    straddles = _one_gap(ci_low=-0.05)
    assert straddles.metrics["gap.auroc.site"].null_p == pytest.approx(0.001)
    assert not judge("subgroups", straddles.metrics, SubgroupsCheck.default_thresholds)
    above = _one_gap(ci_low=0.02)
    assert above.metrics["gap.auroc.site"].null_p == pytest.approx(0.001)
    findings = judge("subgroups", above.metrics, SubgroupsCheck.default_thresholds)
    assert [(f.severity, f.metric) for f in findings] == [("fail", "gap.auroc.site")]


def test_equalised_odds_ci_bootstraps_the_larger_gap_per_resample() -> None:
    """Two groups whose TPR and FPR gaps are both 0.15: the CI of max(TPR gap, FPR gap) is
    that of the per-resample maximum, above either gap's own CI (taking the larger gap's
    CI, as before, would equal one of them)."""
    rng = np.random.default_rng(5)
    group = np.repeat(["A", "B"], 400)
    y = np.tile(np.repeat([0, 1], 200), 2)
    called = np.zeros(800, dtype=bool)
    for g, shift in (("A", 0.0), ("B", 0.15)):  # TPR .70 / .85, FPR .20 / .35: exactly
        for cls, rate in ((1, 0.7 + shift), (0, 0.2 + shift)):
            cell = np.flatnonzero((group == g) & (y == cls))
            called[cell] = rng.permutation(cell.size) < round(rate * cell.size)
    score = np.where(called, 0.6, 0.4) + rng.uniform(-0.05, 0.05, 800)
    res = analyse_groups(
        assign_groups("g", group, "categorical"), y, score[:, None], None, "binary", 0.5,
        n_boot=400, n_permutations=50,
    )  # fmt: skip
    tpr, fpr, eod = res.gaps["tpr"], res.gaps["fpr"], res.gaps["eod"]
    assert tpr.value == pytest.approx(0.15) and fpr.value == pytest.approx(0.15)
    assert eod.value == max(tpr.value, fpr.value)
    per_resample = np.maximum(
        res.boot["tpr"][:, res.pairs["tpr"][0]] - res.boot["tpr"][:, res.pairs["tpr"][1]],
        res.boot["fpr"][:, res.pairs["fpr"][0]] - res.boot["fpr"][:, res.pairs["fpr"][1]],
    )
    assert (eod.ci_low, eod.ci_high) == pytest.approx(np.quantile(per_resample, [0.025, 0.975]))
    assert eod.ci_low > max(tpr.ci_low, fpr.ci_low)
    assert eod.ci_high >= max(tpr.ci_high, fpr.ci_high)


def prevalence_context(seed: int = 0) -> AuditContext:
    """Site A (1200 rows, prevalence 0.5) and site B (400 rows, 0.9); one score model for
    both, calibrated at prevalence 0.5. Site B's calibration gap is prevalence alone."""
    rng = np.random.default_rng(seed)
    site = np.repeat(["A", "B"], [1200, 400])
    y = (rng.random(1600) < np.where(site == "A", 0.5, 0.9)).astype(int)
    logit = 2 * rng.normal(2 * y - 1, 1.0)  # the true log-odds at prevalence 0.5
    config = SimpleNamespace(
        data=SimpleNamespace(
            target=SimpleNamespace(kind="binary"), attributes={"site": AttributeConfig()}
        )
    )
    dataset = SimpleNamespace(
        attributes=pd.DataFrame({"site": site}), target=y, patients=np.arange(1600).astype(str)
    )
    cache = SimpleNamespace(sweep=lambda: SweepResult(logit[:, None]))
    return AuditContext(config=config, dataset=dataset, adapter=None, cache=cache, seed=seed)  # type: ignore[arg-type]


def test_equal_prevalence_removes_a_prevalence_driven_gap() -> None:
    ctx = prevalence_context()
    overall = float(ctx.target.mean())
    raw, raw_findings = _run(ctx, n_permutations=200)
    assert raw.metrics["gap.ece.site"].value > 0.12
    assert [f.metric for f in raw_findings if f.severity == "warn"] == ["gap.ece.site"]
    fair, fair_findings = _run(ctx, n_permutations=200, equal_prevalence=True)
    for g in ("A", "B"):
        assert fair.metrics[f"group.site.{g}.prevalence"] == pytest.approx(overall, abs=0.01)
    assert fair.metrics["gap.ece.site"].value < 0.05
    assert not [f for f in fair_findings if f.severity in ("warn", "fail")]


def test_no_gap_judged_is_a_skip_reason_with_the_group_sizes() -> None:
    """24 rows: no site has min_group_size (20) rows, so no gap is judged; the check says
    so with every attribute's group sizes (the runner then reports it skipped, not pass)."""
    ctx = synthetic_context(gap=0.0, n=24)
    out, findings = _run(ctx, attributes=["site", "scanner"], n_permutations=50)
    assert out.judged == 0 and out.rows_used == 0 and not findings
    a, b = (int((ctx.dataset.attributes["site"] == s).sum()) for s in ("A", "B"))
    assert a + b == 24
    assert out.skip_reason == (
        "no gap could be judged: no attribute has two groups of at least min_group_size = 20"
        " rows with at least min_class_size = 5 positives and negatives each"
        f" (scanner: one group only (X); site: A {a} / B {b} rows)"
    )


def test_partly_judged_attributes_are_coverage_notes_with_counts() -> None:
    """800 rows: site, ward, sex and age are compared (AUROC, EOD, ECE gap each: 12 tests);
    the notes with counts say what the gaps leave out (the 6 ICU rows, 9 rows without sex)
    and that scanner has one group only."""
    out, _ = _run(synthetic_context(gap=0.0), n_permutations=50)
    assert out.judged == 12
    assert out.rows_used == 800  # every row is in some compared group
    assert "ward: 2 of 3 groups compared, on 794 of 800 rows; too small to judge: icu" in (
        " | ".join(out.coverage)
    )
    assert "sex: 2 of 2 groups compared, on 791 of 800 rows" in out.coverage
    assert any(
        c.startswith("gaps judged for 4 of 5 attributes; not for scanner: one group only (X)")
        for c in out.coverage
    )
    assert not any(c.startswith("site:") for c in out.coverage), "site is covered whole"
