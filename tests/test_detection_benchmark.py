"""Tests for the planted-shortcut detection benchmark (benchmarks/detection).

The smoke test runs the ``--quick`` mode's smallest case end to end (one variant, one
seed, 200 studies, a few training steps, performance + probing); the scorer is tested
on hand-made reports with known right answers; the generator's benchmark keywords are
tested on a few studies; bad input must be refused with exit status 2.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.detection.run import main, score_report, summarise
from benchmarks.detection.variants import VARIANTS, Expectation, Variant
from mmaudit.sample.generate import generate_sample


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "out"
    rc = main(["--out", str(out), "--quick", "--variants", "clean", "--seeds", "1"])
    assert rc == 0
    return out


def test_quick_smoke_writes_tables(quick_run: Path) -> None:
    for name in ("results.json", "results.md", "dose_response.png"):
        assert (quick_run / name).is_file()
    res = json.loads((quick_run / "results.json").read_text())
    assert res["settings"]["checks"] == ["performance", "probing"]
    assert [(r["variant"], r["seed"]) for r in res["runs"]] == [("clean", 0)]
    run = res["runs"][0]
    assert set(run["status"]) == {"performance", "probing"}
    assert run["reasons"] == {}, f"a check did not run: {run['reasons']}"
    assert set(res["summary"]) == {"tpr", "fpr", "dose_response"}
    fpr = {r["check"]: r for r in res["summary"]["fpr"]}
    assert set(fpr) == {"performance", "probing"} and all(r["n"] == 1 for r in fpr.values())
    md = (quick_run / "results.md").read_text()
    assert "| check | runs | fail rate | warn-or-fail rate |" in md
    assert "| effect | check | rule | expected | primary | runs | correct |" in md
    assert (quick_run / "dose_response.png").read_bytes()[:4] == b"\x89PNG"


def test_rescore_rejudges_stored_metrics(
    quick_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmaudit.checks.contract import ThresholdRule
    from mmaudit.checks.registry import get_check

    copy = tmp_path / "copy"
    shutil.copytree(quick_run, copy)
    before = json.loads((copy / "results.json").read_text())
    assert main(["--out", str(copy), "--rescore"]) == 0
    same = json.loads((copy / "results.json").read_text())
    assert same["summary"] == before["summary"]  # unchanged thresholds, unchanged verdicts
    assert "Rescored" in (copy / "results.md").read_text()
    # a limit no model can meet: the stored AUROC is now a fail, without re-auditing
    perf = get_check("performance")
    strict = {
        **perf.default_thresholds,
        "auroc_low": ThresholdRule(metric="auroc*", fail_below=1.1),
    }
    monkeypatch.setattr(perf, "default_thresholds", strict)
    assert main(["--out", str(copy), "--rescore"]) == 0
    after = json.loads((copy / "results.json").read_text())
    assert after["runs"][0]["status"]["performance"] == "fail"
    assert after["runs"][0]["alarms"]["performance"]["fail"] is True
    assert main(["--out", str(tmp_path / "nothing"), "--rescore"]) == 2
    # an interrupted benchmark has run folders but no results.json; a check audited again
    (copy / "results.json").unlink()
    monkeypatch.undo()
    assert main(["--out", str(copy), "--rescore", "--recheck", "performance"]) == 0
    again = json.loads((copy / "results.json").read_text())
    assert [(r["variant"], r["seed"]) for r in again["runs"]] == [("clean", 0)]
    assert "interrupted" in again["command"] and "performance" in again["rescored"]
    assert again["runs"][0]["status"]["performance"] == before["runs"][0]["status"]["performance"]
    assert main(["--out", str(copy), "--recheck", "performance"]) == 2
    assert main(["--out", str(copy), "--rescore", "--recheck", "nonsense"]) == 2


def _report(findings: list[tuple[str, str, str, str]], checks: list[str]) -> SimpleNamespace:
    """A stand-in for mmaudit.report.writer.Report with the fields the scorer reads."""
    per = {c: [] for c in checks}
    for check, rule, metric, sev in findings:
        per[check].append(SimpleNamespace(check=check, rule=rule, metric=metric, severity=sev))
    return SimpleNamespace(
        checks={c: SimpleNamespace(status="pass", findings=f) for c, f in per.items()}
    )


def test_scorer_hits_planted_and_counts_false_alarms() -> None:
    marker = VARIANTS["marker_rho90"]
    flagged = _report(
        [("probing", "used", "encoded_and_used.site", "fail")], ["probing", "performance"]
    )
    s = score_report(marker, flagged)
    by = {(e["check"], e["rule"]): e for e in s["expectations"]}
    assert by[("probing", "used")]["outcome"] == "hit"
    assert by[("saliency", "hotspot_used")]["outcome"] == "not_run"
    assert s["alarms"]["probing"] == {"fail": False, "warn": False}  # explained by the plant
    quiet = score_report(marker, _report([], ["probing"]))
    assert {e["outcome"] for e in quiet["expectations"] if e["check"] == "probing"} == {"miss"}
    # the same finding on the clean variant is a false alarm; a warn elsewhere is only a warn
    clean = score_report(
        VARIANTS["clean"],
        _report(
            [
                ("probing", "used", "encoded_and_used.site", "fail"),
                ("performance", "ece_high", "ece", "warn"),
            ],
            ["probing", "performance"],
        ),
    )
    assert clean["alarms"]["probing"] == {"fail": True, "warn": True}
    assert clean["alarms"]["performance"] == {"fail": False, "warn": True}
    runs = [
        {"variant": "clean", "kind": "clean", "rho": None, "seed": 0, **clean},
        {"variant": "marker_rho90", "kind": "planted", "rho": 0.9, "seed": 0, **s},
    ]
    summ = summarise(runs)
    assert {r["check"]: r["fail_rate"] for r in summ["fpr"]} == {"performance": 0.0, "probing": 1.0}
    assert summ["dose_response"]["probing.used"] == {"0.0": 1.0, "0.9": 1.0}


def test_absent_expectation_scores_no_flag_as_hit() -> None:
    v = Variant(
        "x",
        "",
        "planted",
        expect=(Expectation("syn", "ablation", "no_interaction", present=False),),
    )
    assert score_report(v, _report([], ["ablation"]))["expectations"][0]["outcome"] == "hit"
    hit = score_report(
        v, _report([("ablation", "no_interaction", "emap.gap", "warn")], ["ablation"])
    )
    assert hit["expectations"][0]["outcome"] == "miss"


def test_registry_covers_the_issue_and_fits_the_generator() -> None:
    need = {
        "clean",
        "marker_rho50",
        "marker_rho70",
        "marker_rho90",
        "marker_rho99",
        "site_signature",
        "text_site_token",
        "tabular_site_column",
        "sex_encoded",
        "sex_used",
        "redundant_text",
        "synergy",
        "random_init",
        "shuffled_labels",
        "seed_pair",
    }
    assert need <= set(VARIANTS)
    params = set(inspect.signature(generate_sample).parameters)
    positions = {VARIANTS["marker_rho90"].generator_kwargs(s)["marker_pos"] for s in range(4)}
    assert len(positions) == 4
    for v in VARIANTS.values():
        assert set(v.generator_kwargs(0)) <= params, v.name
        if v.kind == "planted" and (v.rho is None or v.rho >= 0.9):  # the 90 % target
            assert any(e.primary for e in v.expect), v.name


def test_generator_benchmark_keywords(tmp_path: Path) -> None:
    n = 40
    base = generate_sample(tmp_path / "base", n=n, seed=5)
    generate_sample(tmp_path / "sig", n=n, seed=5, site_signature=1.0)
    same = [
        (tmp_path / "base" / p).read_bytes() == (tmp_path / "sig" / p).read_bytes()
        for p in base.image_path
    ]
    assert np.array_equal(np.array(same), (base.site == "A").to_numpy())  # only site B changes
    tab = generate_sample(
        tmp_path / "tab", n=n, seed=5, site_coded_lab="lactate", site_lab_shift=2.5
    )
    ratio = (tab.lactate / base.lactate).groupby(base.site).median()
    assert ratio["A"] == pytest.approx(1.0) and ratio["B"] > 2.0
    syn = generate_sample(tmp_path / "syn", n=n, seed=5, synergy=True)
    assert syn.label.equals(base.label)  # labels unchanged; what images / labs show changes
    with pytest.raises(ValueError, match="site_coded_lab"):
        generate_sample(tmp_path / "bad", n=n, seed=5, site_coded_lab="nope")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variants", "clean,nope"], "unknown variant 'nope'"),
        (["--seeds", "0"], "--seeds must be between 1"),
        (["--seeds", "two"], "--seeds must be a whole number"),
        (["--checks", "bogus"], "unknown check 'bogus'"),
    ],
)
def test_refuses_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["--out", str(tmp_path / "o"), "--quick", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_refuses_existing_out_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    assert main(["--out", str(tmp_path / "o"), "--quick", "--variants", "clean"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "o" / "keep.txt").is_file()


def test_signature_scored_on_the_across_checks_summary() -> None:
    from mmaudit.report.agreement import CrossCheck

    sig = VARIANTS["site_signature"]
    checks = ["probing", "saliency", "embedding"]
    blind = _report([("probing", "used", "encoded_and_used.site", "fail")], checks)
    outcome = {e["rule"]: e for e in score_report(sig, blind)["expectations"]}
    assert outcome["saliency_blind"]["outcome"] == "miss"  # the summary says nothing
    blind.cross_checks = [
        CrossCheck(attribute="site", used={"probing": ["used"]}, image_hotspot=False)
    ]
    outcome = {e["rule"]: e for e in score_report(sig, blind)["expectations"]}
    assert outcome["saliency_blind"]["outcome"] == "hit"
    assert outcome["used"]["outcome"] == "hit" and outcome["hotspot_used"]["outcome"] == "hit"
    alone = _report([], ["probing"])
    outcome = {e["rule"]: e for e in score_report(sig, alone)["expectations"]}
    assert outcome["saliency_blind"]["outcome"] == "not_run"


def test_variant_the_model_did_not_learn_is_left_out() -> None:
    syn = VARIANTS["synergy"]
    assert syn.learned == (("performance", "auroc", 0.7),)
    weak = _report(
        [("ablation", "no_interaction", "emap.gap", "warn")], ["ablation", "performance"]
    )
    weak.checks["performance"].metrics = {"auroc": {"value": 0.52}}
    scored = score_report(syn, weak)
    assert {e["outcome"] for e in scored["expectations"]} == {"invalid"}
    assert scored["unmet"] == ["performance auroc 0.52 < 0.7"]
    learned = _report([], ["ablation", "performance"])
    learned.checks["performance"].metrics = {"auroc": {"value": 0.9}}
    assert {e["outcome"] for e in score_report(syn, learned)["expectations"]} == {"hit"}
    runs = [{"variant": "synergy", "kind": "planted", "rho": None, "seed": 0, **scored}]
    assert summarise(runs)["tpr"] == []


def test_marker_place_variants_plant_every_corner_and_size(tmp_path: Path) -> None:
    """The ``marker_<corner>`` and ``marker_size<NN>`` variants (issue 20) draw their marker
    where and as large as they say: the marker box of a marked site-B image is far brighter
    than the same box on an unmarked one. Data only (no training), so it stays cheap."""
    import pandas as pd
    from PIL import Image

    from benchmarks.detection.variants import MARKER_SIZES
    from mmaudit.sample.generate import MARKER_POSITIONS, marker_box

    corners = [f"marker_{p.replace('-', '_')}" for p in MARKER_POSITIONS]
    sizes = [f"marker_size{s:02d}" for s in MARKER_SIZES]
    assert set(corners + sizes) <= set(VARIANTS)
    seen_pos, seen_size = set(), set()
    for name in corners + sizes:
        v = VARIANTS[name]
        assert v.rho is None  # the rho dose-response curve stays as it was
        assert all(e.effect == name for e in v.expect) and any(e.primary for e in v.expect)
        kw = v.generator_kwargs(3)
        folder = tmp_path / name
        man = generate_sample(folder, n=24, seed=3, **kw)
        truth = pd.read_csv(folder / "ground_truth.csv")
        pos, size = kw.get("marker_pos", "top-left"), kw.get("marker_size", 6)
        seen_pos.add(pos)
        seen_size.add(size)
        r0, r1, c0, c1 = marker_box(pos, size)
        marked = man.image_path[truth.marker.to_numpy() == 1]
        plain = man.image_path[truth.marker.to_numpy() == 0]
        assert len(marked) and len(plain)

        means = [
            np.mean([np.asarray(Image.open(folder / p))[r0:r1, c0:c1].mean() for p in paths])
            for paths in (marked, plain)
        ]
        assert means[0] > means[1] + 50, name
    assert seen_pos == set(MARKER_POSITIONS) and seen_size >= {6, *MARKER_SIZES}
