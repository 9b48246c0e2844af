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
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.detection.family2_data import generate_family2, marker_mask
from benchmarks.detection.intervention import USED_MIN_FLIP, measure, truth_verdict
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
    assert {"tpr", "fpr", "dose_response", "truth", "side_by_side"} <= set(res["summary"])
    assert res["command"].startswith("python -m benchmarks.detection.run --out ")
    fpr = {r["check"]: r for r in res["summary"]["fpr"]}
    assert set(fpr) == {"performance", "probing"} and all(r["n"] == 1 for r in fpr.values())
    md = (quick_run / "results.md").read_text()
    assert f"Command: `{res['command']}`" in md
    assert "| family | check | runs | false fails | rate | Wilson 95 % |" in md
    assert "## Detection per planted effect, both families side by side" in md
    assert (quick_run / "dose_response.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_keeps_finished_runs_and_refuses_other_settings(
    quick_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--resume`` with the same settings runs nothing already finished (the stored record
    is kept as it was, the command is appended); other settings are refused in one line."""
    copy = tmp_path / "copy"
    shutil.copytree(quick_run, copy)
    before = json.loads((copy / "results.json").read_text())
    args = ["--out", str(copy), "--quick", "--variants", "clean", "--seeds", "1"]
    assert main([*args, "--resume"]) == 0
    after = json.loads((copy / "results.json").read_text())
    assert after["runs"] == before["runs"]
    assert after["commands"] == [
        before["command"],
        "python -m benchmarks.detection.run " + " ".join([*args, "--resume"]),
    ]
    # fewer seeds or other variants than the earlier runs: those runs stay in the tables
    fewer = ["--out", str(copy), "--quick", "--variants", "clean", "--seeds", "1", "--resume"]
    (copy / "runs" / "clean" / "seed0").rename(copy / "runs" / "clean" / "seed5")
    kept = json.loads((copy / "results.json").read_text())
    kept["runs"][0]["seed"] = 5
    (copy / "results.json").write_text(json.dumps(kept))
    shutil.copytree(copy / "runs" / "clean" / "seed5", copy / "runs" / "clean" / "seed0")
    record = {**kept["runs"][0], "seed": 0}
    kept["runs"].insert(0, record)
    (copy / "results.json").write_text(json.dumps(kept))
    assert main(fewer) == 0
    seeds = [r["seed"] for r in json.loads((copy / "results.json").read_text())["runs"]]
    assert seeds == [0, 5]
    # the same checks in another order are the same settings
    again = [*args, "--resume", "--checks", "probing,performance"]
    assert main(again) == 0
    assert main([*args, "--resume", "--n", "240"]) == 2
    err = capsys.readouterr().err.strip()
    assert "n = 200" in err and "240" in err and len(err.splitlines()) == 1
    assert main([*args, "--resume", "--force"]) == 2
    assert main(["--out", str(tmp_path / "none"), "--quick", "--resume"]) == 2


def test_identical_runs_count_once_in_the_false_alarm_tally() -> None:
    """``clean`` and ``sex_encoded`` of family 1 share data and training: at one seed they
    are the same model, so a false alarm on it counts once, in one run."""
    checks = ["probing"]
    alarm = _report([("probing", "used", "encoded_and_used.sex", "fail")], checks)
    runs = [
        {"variant": v, "family": 1, "kind": VARIANTS[v].kind, "rho": 0.0, "seed": 7}
        | score_report(VARIANTS[v], alarm)
        for v in ("clean", "sex_encoded")
    ] + [
        {"variant": "clean", "family": 1, "kind": "clean", "rho": 0.0, "seed": 8}
        | score_report(VARIANTS["clean"], _report([], checks))
    ]
    fpr = {r["check"]: r for r in summarise(runs)["fpr"]}
    assert (fpr["probing"]["n"], fpr["probing"]["fails"]) == (2, 1)


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
        checks={c: SimpleNamespace(status="pass", findings=f, metrics={}) for c, f in per.items()}
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
    f2_params = set(inspect.signature(generate_family2).parameters)
    for v in VARIANTS.values():
        assert set(v.generator_kwargs(0)) <= (params if v.family == 1 else f2_params), v.name
        assert v.cue_off is None or set(v.cue_off) <= (params if v.family == 1 else f2_params)
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
        (["--n", "10"], "--n must be at least 60"),
        (["--steps", "x"], "--steps must be a whole number"),
        (["--false-alarms", "--variants", "f2_nope"], "unknown variant 'f2_nope'"),
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


# --- truth by intervention, family 2, false-alarm tables (issue 18) ----------------------


class _MarkerReader(torch.nn.Module):
    """Analytic model: its logit is the mean brightness of the ring marker's pixels, so
    removing the marker must flip every marked study."""

    def __init__(self, corner: str) -> None:
        super().__init__()
        self.register_buffer("mask", torch.from_numpy(marker_mask("ring", 7, corner)))

    def forward(self, image, text, text_mask, tabular):  # type: ignore[no-untyped-def]
        return 5.0 * image[:, 0][:, self.mask].mean(dim=1, keepdim=True)


class _LabReader(torch.nn.Module):
    """Analytic model that ignores the image (and so the marker): logit = first lab."""

    def forward(self, image, text, text_mask, tabular):  # type: ignore[no-untyped-def]
        return tabular[:, :1]


def build_marker_reader(corner: str) -> torch.nn.Module:
    return _MarkerReader(corner)


def build_lab_reader() -> torch.nn.Module:
    return _LabReader()


class _WordReader(torch.nn.Module):
    """Analytic model that reads one report token: logit +4 when ``token_id`` is among the
    report's tokens, -4 otherwise (images and labs ignored)."""

    def __init__(self, token_id: int) -> None:
        super().__init__()
        self.token_id = token_id

    def forward(self, image, text, text_mask, tabular):  # type: ignore[no-untyped-def]
        seen = ((text == self.token_id) & text_mask.bool()).any(dim=1, keepdim=True)
        return 8.0 * seen.float() - 4.0


class _ColumnReader(torch.nn.Module):
    """Analytic model whose logit is 4 x one normalised lab column (``column``'s index)."""

    def __init__(self, column: int) -> None:
        super().__init__()
        self.column = column

    def forward(self, image, text, text_mask, tabular):  # type: ignore[no-untyped-def]
        return 4.0 * tabular[:, self.column : self.column + 1]


def build_word_reader(token_id: int) -> torch.nn.Module:
    return _WordReader(token_id)


def build_column_reader(column: int) -> torch.nn.Module:
    return _ColumnReader(column)


def _f2_config(
    run: Path, factory: str, kwargs: dict[str, object], variant: str = "f2_ring"
) -> Path:
    import yaml

    from benchmarks.detection.family2_data import family2_data_config
    from benchmarks.detection.family2_run import generate_without_cue, prepare_family2

    v = VARIANTS[variant]
    prep = prepare_family2(v, 0, run / "data", 48)
    generate_without_cue(v, 0, run / "data_nocue", 48)
    data = family2_data_config(run / "data", ["test"], prep["stats"], Path(prep["tokenizer"]))
    cfg = {
        "model": {
            "factory": factory,
            "kwargs": kwargs,
            "python_path": [str(Path(__file__).parent)],
            "inputs": {"image": "image", "text": "text", "text_mask": "text_mask"}
            | {"tabular": "tabular"},
        },
        "data": data.model_dump(mode="json"),
        "runtime": {"device": "cpu", "progress": False},
    }
    path = run / f"{factory.partition(':')[2]}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_intervention_measures_use_not_recipe(tmp_path: Path) -> None:
    """One family-2 marker recipe, two models with known behaviour: the one that reads the
    marker is measured ``used`` (every marked decision flips), the one that ignores the image
    ``not used`` (nothing moves), whatever the recipe says."""
    corner = VARIANTS["f2_ring"].generator_kwargs(0)["marker_corner"]
    reader = _f2_config(
        tmp_path, "test_detection_benchmark:build_marker_reader", {"corner": corner}
    )
    used = measure(reader, tmp_path / "data", tmp_path / "data_nocue")
    frame = pd.read_csv(tmp_path / "data" / "manifest.csv")
    test = frame[frame.split == "test"]
    assert used.n_test == len(test) and used.n_changed == int((test.site == "south").sum()) > 0
    assert used.verdict == "used" and used.flip_rate == 1.0 and used.mean_abs_dp > 0.9
    ignores = _f2_config(tmp_path, "test_detection_benchmark:build_lab_reader", {})
    quiet = measure(ignores, tmp_path / "data", tmp_path / "data_nocue")
    assert quiet.n_changed == used.n_changed
    assert quiet.verdict == "not_used" and quiet.flip_rate == 0.0 and quiet.mean_abs_dp == 0.0
    assert measure(ignores, tmp_path / "data", None).verdict == "no_cue"
    assert truth_verdict(USED_MIN_FLIP, 0.1) == "used"
    assert truth_verdict(0.02, 0.01) == "between" and truth_verdict(0.0, 0.05) == "between"


def test_cue_free_render_changes_only_the_cue(tmp_path: Path) -> None:
    """The counterfactual is the same study without its cue: family 1's marker rows (and only
    their marker box) change; family 2's south rows change only in the marker's pixels, the
    phrase and the coded lab."""
    from PIL import Image

    from benchmarks.detection.intervention import changed_rows
    from mmaudit.sample.generate import marker_box

    v = VARIANTS["marker_rho90"]
    kw = v.generator_kwargs(1)
    a = generate_sample(tmp_path / "a", n=24, seed=1, **kw)
    generate_sample(tmp_path / "b", n=24, seed=1, **{**kw, **v.cue_off})
    marked = pd.read_csv(tmp_path / "a" / "ground_truth.csv").marker.to_numpy() == 1
    ids = a.id.tolist()
    assert np.array_equal(changed_rows(tmp_path / "a", tmp_path / "b", ids), marked)
    r0, r1, c0, c1 = marker_box(kw["marker_pos"])
    for p in a.image_path[marked]:
        x = np.asarray(Image.open(tmp_path / "a" / p)).astype(int)
        y = np.asarray(Image.open(tmp_path / "b" / p)).astype(int)
        x[r0:r1, c0:c1] = y[r0:r1, c0:c1]
        assert np.array_equal(x, y)
    kw2 = {"rho": 0.5, "marker": "glyph", "marker_size": 8, "phrase": True, "lab_cue": "albumin"}
    f = generate_family2(tmp_path / "c", 30, 2, marker_corner="bottom-right", **kw2)
    g = generate_family2(tmp_path / "d", 30, 2, marker_corner="bottom-right", cue=False, **kw2)
    south = (f.site == "south").to_numpy()
    assert np.array_equal(changed_rows(tmp_path / "c", tmp_path / "d", f.id.tolist()), south)
    assert (f.albumin - g.albumin)[south].gt(0.8).all() and (f.albumin == g.albumin)[~south].all()
    assert (
        f.report[south].str.endswith("scanner.").all() and not g.report.str.contains("south").any()
    )
    mask = marker_mask("glyph", 8, "bottom-right")
    for p in f.image_path[south]:
        x = np.asarray(Image.open(tmp_path / "c" / p)).astype(int)
        y = np.asarray(Image.open(tmp_path / "d" / p)).astype(int)
        assert (x[mask] > 200).mean() > 0.9 and np.array_equal(x[~mask], y[~mask])


def _vocab_id(tokenizer: Path, word: str) -> int:
    return (tokenizer / "vocab.txt").read_text().splitlines().index(word)


def test_text_and_lab_cues_measured_by_intervention(tmp_path: Path) -> None:
    """Family 2's report and lab cues, truth by intervention on models with a known answer:
    a model that reads the site sentence's word 'south' is measured ``used`` on the phrase
    variant (every south decision flips) and ``not used`` on the lab variant (no report
    changes); a model that reads albumin the other way round. The variants are the
    independent ones (rho 0): the truth is what the model does, not what the recipe says."""
    from benchmarks.detection.family2_data import LAB_COLUMNS

    albumin = {"column": LAB_COLUMNS.index("albumin")}
    phrase, lab = tmp_path / "phrase", tmp_path / "lab"
    for run, variant in ((phrase, "f2_phrase_indep"), (lab, "f2_lab_indep")):
        cfg = _f2_config(run, "test_detection_benchmark:build_column_reader", albumin, variant)
        # the lab variant's reports have no site sentence: its reader reads 'liver'
        token = "south" if run == phrase else "liver"
        word = {"token_id": _vocab_id(run / "data" / "tokenizer", token)}
        reads_word = _f2_config(run, "test_detection_benchmark:build_word_reader", word, variant)
        frame = pd.read_csv(run / "data" / "manifest.csv")
        n_south = int((frame[frame.split == "test"].site == "south").sum())
        by_lab = measure(cfg, run / "data", run / "data_nocue")
        by_word = measure(reads_word, run / "data", run / "data_nocue")
        assert by_lab.n_changed == by_word.n_changed == n_south > 0
        if run == phrase:
            assert by_word.verdict == "used" and by_word.flip_rate == 1.0
            assert by_word.mean_abs_dp > 0.9
            assert by_lab.verdict == "not_used" and by_lab.mean_abs_dp == 0.0
        else:
            assert by_lab.verdict == "used" and by_lab.flip_rate > 0.3
            assert by_lab.mean_abs_dp > 0.3
            assert by_word.verdict == "not_used" and by_word.mean_abs_dp == 0.0


def test_family2_header_phrase_and_other_lab_column(tmp_path: Path) -> None:
    """The weaker text and lab variants plant what they say: a different site sentence at the
    *start* of south reports, INR shifted by 1.5 SD on south; the cue-free twin differs in
    exactly those south rows and nothing else."""
    from benchmarks.detection.family2_data import SITE_PHRASES
    from benchmarks.detection.intervention import changed_rows

    header = SITE_PHRASES["header"][1]
    kw = VARIANTS["f2_phrase_header_rho60"].generator_kwargs(0)
    f = generate_family2(tmp_path / "a", 30, 4, **kw)
    g = generate_family2(tmp_path / "b", 30, 4, **kw, cue=False)
    south = (f.site == "south").to_numpy()
    assert f.report[south].str.startswith(header + " ").all()
    assert not g.report.str.contains("Southgate").any() and f.report[~south].equals(
        g.report[~south]
    )
    assert (f.report[south].str.removeprefix(header + " ") == g.report[south]).all()
    assert np.array_equal(changed_rows(tmp_path / "a", tmp_path / "b", f.id.tolist()), south)
    kw = VARIANTS["f2_lab_inr_rho60"].generator_kwargs(0)
    f = generate_family2(tmp_path / "c", 30, 4, **kw)
    g = generate_family2(tmp_path / "d", 30, 4, **kw, cue=False)
    assert np.allclose((f.inr - g.inr)[south], 1.5 * 0.12) and (f.inr == g.inr)[~south].all()
    assert f.report.equals(g.report) and f.albumin.equals(g.albumin)
    with pytest.raises(ValueError, match="phrase must be one of"):
        generate_family2(tmp_path / "e", 10, 4, phrase="banner")


def test_family2_text_and_lab_variants_strong_and_independent() -> None:
    """Each of family 2's report and lab cues has a strong (rho >= 0.9) variant and an
    independent one (rho 0, a negative); all have a removable cue, and their claims of use
    (attribution's site rule for that modality, probing's ``used``) follow the truth."""
    for cue, rule in (("phrase", "site_word"), ("lab", "site_feature")):
        f2 = [
            v for n, v in VARIANTS.items() if n.startswith(f"f2_{cue}") and v.model == "gated_cnn"
        ]
        assert any(v.kind == "planted" and (v.rho or 0) >= 0.9 for v in f2), cue
        indep = [v for v in f2 if v.rho == 0.0]
        assert indep and all(v.kind == "clean" for v in indep), cue
        for v in f2:
            assert v.cue_off == {"cue": False}
            claims = {(e.check, e.rule) for e in v.expect if e.use}
            assert claims == {("attribution", rule), ("probing", "used")}, v.name
            assert all(e.present == (v.kind == "planted") for e in v.expect), v.name
        assert f"{indep[0].name}_minilm" in VARIANTS


def test_text_and_lab_claims_scored_against_the_truth_side_by_side() -> None:
    """A site-word warn on the independent phrase variant is wrong when the phrase is
    measured not used (a miss, and a negative run's unexplained warn) and right when it is
    measured used; a site-feature flag on another lab column does not count for albumin;
    family 1's and family 2's phrase detections land in one row of the side-by-side table."""
    not_used = {"verdict": "not_used", "flip_rate": 0.0, "mean_abs_dp": 0.004}
    used = {"verdict": "used", "flip_rate": 0.3, "mean_abs_dp": 0.2}
    checks = ["attribution", "probing"]
    word = _report([("attribution", "site_word", "text.site_word_share.south", "warn")], checks)
    indep = VARIANTS["f2_phrase_indep"]
    wrong = score_report(indep, word, not_used)
    by = {(e["check"], e["rule"]): e for e in wrong["expectations"]}
    assert by[("attribution", "site_word")]["outcome"] == "miss"
    assert by[("probing", "used")]["outcome"] == "hit"
    assert wrong["alarms"]["attribution"] == {"fail": False, "warn": True}
    right = score_report(indep, word, used)
    by = {(e["check"], e["rule"]): e for e in right["expectations"]}
    assert by[("attribution", "site_word")]["outcome"] == "hit"
    assert right["alarms"]["attribution"] == {"fail": False, "warn": False}
    lab = VARIANTS["f2_lab"]
    for column, outcome in (("alt", "miss"), ("albumin", "hit")):
        rep = _report(
            [("attribution", "site_feature", f"tabular.site_feature_share.{column}", "fail")],
            checks,
        )
        by = {(e["check"], e["rule"]): e for e in score_report(lab, rep, used)["expectations"]}
        assert by[("attribution", "site_feature")]["outcome"] == outcome, column
    runs = [
        {
            "variant": "text_site_token",
            "family": 1,
            "kind": "planted",
            "rho": 0.9,
            "seed": 0,
            **score_report(VARIANTS["text_site_token"], word, used),
        },
        {
            "variant": "f2_phrase",
            "family": 2,
            "kind": "planted",
            "rho": 0.9,
            "seed": 0,
            **score_report(VARIANTS["f2_phrase"], _report([], checks), used),
        },
        {"variant": "f2_phrase_indep", "family": 2, "kind": "clean", "rho": 0.0, "seed": 0} | wrong,
    ]
    summ = summarise(runs)
    row = next(
        r
        for r in summ["side_by_side"]
        if (r["effect"], r["check"], r["rule"]) == ("text_site_token", "attribution", "site_word")
    )
    assert (row["f1_n"], row["f1_rate"], row["f2_n"], row["f2_rate"]) == (1, 1.0, 1, 0.0)
    assert row["f2_flip"] == 0.3
    rules = {(r["family"], r["check"], r["rule"]): r for r in summ["fpr_rules"]}
    assert (
        rules[(2, "attribution", "site_word")]["n"],
        rules[(2, "attribution", "site_word")]["k"],
    ) == (1, 1)
    assert rules[(2, "attribution", "site_feature")]["k"] == 0


def test_use_the_check_could_not_test_is_its_own_outcome() -> None:
    """Probing's ``encoded_use_untested`` on site (erasure skipped: site collinear with the
    label), like attribution's site rule left unjudged for want of off-diagonal studies, is
    neither a miss of a used cue nor a correct silence: it is scored ``untested``,
    kept out of the rate and counted apart in the table; a real verdict is still scored."""
    used = {"verdict": "used", "flip_rate": 0.36, "mean_abs_dp": 0.39}
    checks = ["attribution", "probing"]
    untested = _report([], checks)
    untested.checks["probing"].metrics = {"verdict.site": "encoded_use_untested"}
    lab = VARIANTS["f2_lab"]
    by = {(e["check"], e["rule"]): e for e in score_report(lab, untested, used)["expectations"]}
    assert by[("probing", "used")]["outcome"] == "untested"
    assert by[("attribution", "site_feature")]["outcome"] == "miss"
    tested = _report([], checks)
    tested.checks["probing"].metrics = {"verdict.site": "encoded_not_used"}
    by = {(e["check"], e["rule"]): e for e in score_report(lab, tested, used)["expectations"]}
    assert by[("probing", "used")]["outcome"] == "miss"
    runs = [
        {"variant": "f2_lab", "family": 2, "kind": "planted", "rho": 0.9, "seed": seed}
        | score_report(lab, rep, used)
        for seed, rep in enumerate((untested, tested))
    ]
    row = next(
        r for r in summarise(runs)["side_by_side"] if (r["check"], r["rule"]) == ("probing", "used")
    )
    assert (row["f2_n"], row["f2_untested"], row["f2_rate"]) == (1, 1, 0.0)
    # attribution's site rule left unjudged (its exemption note): untested, not a miss
    unjudged = _report([], checks)
    unjudged.checks["attribution"].findings = [
        SimpleNamespace(
            check="attribution",
            rule="site_feature",
            metric=None,
            severity="note",
            evidence="tabular.site_feature_share.albumin = 0.46; not judged",
        )
    ]
    by = {(e["check"], e["rule"]): e for e in score_report(lab, unjudged, used)["expectations"]}
    assert by[("attribution", "site_feature")]["outcome"] == "untested"


def test_family2_marker_shapes_differ() -> None:
    shapes = {s: marker_mask(s, 9, "top-left") for s in ("ring", "glyph", "bar")}
    assert len({m.tobytes() for m in shapes.values()}) == 3
    assert shapes["bar"][:5, :].any(axis=0).sum() == 18  # twice as wide as tall
    assert not marker_mask("ring", 7, "top-left")[64 - 9 :, :].any()
    assert marker_mask("ring", 7, "bottom-right")[64 - 9 :, 64 - 9 :].any()
    with pytest.raises(ValueError, match="marker shape"):
        marker_mask("star", 7, "top-left")


def test_claims_of_use_scored_against_the_measured_truth() -> None:
    """A marker recipe whose model is measured not to use the marker: a probing ``used``
    finding is now wrong; in between, the claim is left out; saliency's scan rule is only
    scored when the audit reports ``scan.*`` metrics."""
    marker = VARIANTS["marker_rho90"]
    flagged = _report([("probing", "used", "encoded_and_used.site", "fail")], ["probing"])
    not_used = {"verdict": "not_used", "flip_rate": 0.0, "mean_abs_dp": 0.001}
    by = {
        (e["check"], e["rule"]): e for e in score_report(marker, flagged, not_used)["expectations"]
    }
    assert by[("probing", "used")]["outcome"] == "miss" and not by[("probing", "used")]["present"]
    quiet = _report([], ["probing"])
    by = {(e["check"], e["rule"]): e for e in score_report(marker, quiet, not_used)["expectations"]}
    assert by[("probing", "used")]["outcome"] == "hit"
    between = {"verdict": "between", "flip_rate": 0.02, "mean_abs_dp": 0.03}
    by = {
        (e["check"], e["rule"]): e for e in score_report(marker, flagged, between)["expectations"]
    }
    assert by[("probing", "used")]["outcome"] == "excluded"
    assert by[("probing", "used")]["detected"] is True  # kept for the dose by measured effect
    # a negative whose cue is measured not used: the probing fail is a false alarm
    indep = score_report(VARIANTS["marker_indep"], flagged, not_used)
    assert indep["alarms"]["probing"]["fail"] is True
    used = {"verdict": "used", "flip_rate": 0.4, "mean_abs_dp": 0.3}
    assert (
        score_report(VARIANTS["marker_indep"], flagged, used)["alarms"]["probing"]["fail"] is False
    )
    sal = _report([("saliency", "scan_used", "scan.top_left", "warn")], ["saliency"])
    by = {(e["check"], e["rule"]): e for e in score_report(marker, sal, used)["expectations"]}
    assert by[("saliency", "scan_used")]["outcome"] == "not_run"  # no scan.* metric: old audit
    sal.checks["saliency"].metrics = {"scan.n_boxes": 12}
    by = {(e["check"], e["rule"]): e for e in score_report(marker, sal, used)["expectations"]}
    assert by[("saliency", "scan_used")]["outcome"] == "hit"


def _negative_run(
    family: int, fail: bool, verdict: str, excess: float, seed: int = 0
) -> dict[str, object]:
    return {
        "variant": "clean" if family == 1 else "f2_clean",
        "family": family,
        "kind": "clean",
        "rho": None,
        "seed": seed,
        "status": {"probing": "pass"},
        "truth": {"verdict": verdict, "flip_rate": 0.0, "mean_abs_dp": 0.0},
        "findings": [
            {
                "check": "probing",
                "rule": "used",
                "metric": "encoded_and_used.site",
                "severity": "fail",
            }
        ]
        if fail
        else [],
        "expectations": [],
        "alarms": {"probing": {"fail": fail, "warn": fail}},
        "erasure": {"erasure.excess_dp.site": excess},
    }


def test_false_alarm_rates_carry_wilson_intervals_and_the_leace_floor() -> None:
    """0 false fails in 59 runs bounds the rate below 5 % (exact one-sided 95 %); 3 in 20 is
    15 % with the Wilson interval 5.2-36.0 %; the LEACE table holds the not-used runs only."""
    runs = [_negative_run(1, False, "not_used", 0.01 * k, seed=k) for k in range(59)]
    runs += [
        _negative_run(2, k < 3, "between" if k == 0 else "not_used", 0.5, seed=k) for k in range(20)
    ]
    s = summarise(runs)
    fpr = {(r["family"], r["check"]): r for r in s["fpr"]}
    f1, f2 = fpr[(1, "probing")], fpr[(2, "probing")]
    assert (
        f1["n"] == 59
        and f1["fails"] == 0
        and f1["upper95"] < 0.05 < fpr[(1, "probing")]["wilson_high"]
    )
    assert f2["fail_rate"] == pytest.approx(0.15)
    assert f2["wilson_low"] == pytest.approx(0.0524, abs=1e-3)
    assert f2["wilson_high"] == pytest.approx(0.3604, abs=1e-3)
    rules = {(r["family"], r["check"], r["rule"]): r for r in s["fpr_rules"]}
    assert (rules[(2, "probing", "used")]["n"], rules[(2, "probing", "used")]["k"]) == (20, 3)
    assert rules[(1, "probing", "used")]["k"] == 0
    leace = {(r["family"], r["attribute"]): r for r in s["erasure_not_used"]}
    assert leace[(1, "site")]["n"] == 59 and leace[(1, "site")]["max"] == pytest.approx(0.58)
    assert leace[(2, "site")]["n"] == 19 and leace[(2, "site")]["probing_used"] == 2


def test_minilm_variants_skip_cleanly_when_the_extra_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks.detection import family2_models

    monkeypatch.setattr(family2_models, "minilm_available", lambda: False)
    out = tmp_path / "o"
    assert main(["--out", str(out), "--variants", "f2_clean_minilm", "--seeds", "1"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["runs"] == [] and "not installed" in res["skipped"]["f2_clean_minilm"]
    assert "Skipped `f2_clean_minilm`" in (out / "results.md").read_text()


@pytest.fixture(scope="module")
def family2_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from benchmarks.detection.family2_models import minilm_available

    out = tmp_path_factory.mktemp("bench2") / "out"
    names = "f2_ring,f2_phrase_indep,f2_lab_indep,f2_synergy"
    names += ",f2_phrase_minilm" if minilm_available() else ""
    args = ["--out", str(out), "--variants", names, "--seeds", "1", "--n", "120"]
    assert main([*args, "--steps", "25", "--checks", "performance"]) == 0
    return out


def test_family2_tiny_run_through_the_factory_path(family2_run: Path) -> None:
    """Family 2 end to end at tiny size: its own generator, a model loaded through
    ``model.factory``, the cue-free twin measured, the tables side by side."""
    from mmaudit.report.document import load_report

    res = json.loads((family2_run / "results.json").read_text())
    first = res["runs"][0]
    assert first["variant"] == "f2_ring" and first["family"] == 2 and first["reasons"] == {}
    truth = first["truth"]
    assert truth["verdict"] in ("used", "not_used", "between") and truth["n_changed"] > 0
    report = load_report(family2_run / "runs" / "f2_ring" / "seed0" / "report")
    assert "factory:benchmarks.detection.family2_models:build_gated_cnn" in json.dumps(
        report.model_dump(mode="json")
    )
    md = (family2_run / "results.md").read_text()
    assert "| f2_ring | 1 |" in md and "family 2 (own generator, factory models)" in md
    # the report and lab cues (the MiniLM model's too, when the extra is installed): built,
    # trained, their cue removed and measured, audited through the factory path
    from benchmarks.detection.family2_models import minilm_available

    text_lab = {"f2_phrase_indep", "f2_lab_indep"} | (
        {"f2_phrase_minilm"} if minilm_available() else set()
    )
    assert {r["variant"] for r in res["runs"][1:]} == text_lab | {"f2_synergy"}
    # the interaction recipe: its six renders measured, the truth beside the audit's metrics
    synergy = next(r for r in res["runs"] if r["variant"] == "f2_synergy")
    assert synergy["truth"] is None and synergy["reasons"] == {}
    inter = synergy["interaction"]
    assert set(inter["auroc"]) == {"full", "no_a", "no_b", "no_ab"}
    assert inter["redundant"] in ("present", "absent", "between")
    assert inter["additive"] in ("present", "absent", "between")
    stored = family2_run / "runs" / "f2_synergy" / "seed0" / "interaction.json"
    assert json.loads(stored.read_text())["n_test"] == inter["n_test"] > 0
    for r in res["runs"][1:]:
        if r["variant"] == "f2_synergy":
            continue
        assert r["reasons"] == {} and r["truth"]["n_changed"] > 0
        assert r["truth"]["verdict"] in ("used", "not_used", "between")
        assert f"| {r['variant']} | 1 |" in md


# --- interactions validated by intervention (issue 18) ------------------------------------


class _StateReader(torch.nn.Module):
    """Analytic model of the interaction recipes' two states: ``a`` = +1 when the report
    holds the word ``token_id`` ('dilated'), -1 when it holds the other state's sentence
    ('normal'), 0 when neither; ``b`` = normalised bilirubin (about +/-0.8 for the two
    states, 0 when removed). ``how``: ``xor`` (logit -4 a b: a pure interaction),
    ``sum`` (4 (a + b): additive, and either state alone decides), ``text`` (4 a)."""

    def __init__(self, token_id: int, other_id: int, column: int, how: str) -> None:
        super().__init__()
        self.ids, self.column, self.how = (token_id, other_id), column, how

    def forward(self, image, text, text_mask, tabular):  # type: ignore[no-untyped-def]
        has = [((text == t) & text_mask.bool()).any(dim=1).float() for t in self.ids]
        a = (has[0] - has[1]).unsqueeze(1)
        b = tabular[:, self.column : self.column + 1]
        if self.how == "xor":
            return -4.0 * a * b  # the label is A XOR B: positive when the states differ
        return 4.0 * (a + b) if self.how == "sum" else 4.0 * a


def build_state_reader(token_id: int, other_id: int, column: int, how: str) -> torch.nn.Module:
    return _StateReader(token_id, other_id, column, how)


def _interaction_run(run: Path, variant: str) -> tuple[dict[str, Path], Path, dict[str, Any]]:
    """Generate an interaction recipe's studies and renders; the data section's YAML
    (without a model) for the readers."""
    from benchmarks.detection.family2_data import family2_data_config
    from benchmarks.detection.family2_run import generate_interaction_renders, prepare_family2

    v = VARIANTS[variant]
    prep = prepare_family2(v, 0, run / "data", 80)
    renders = generate_interaction_renders(v, 0, run, 80)
    data = family2_data_config(run / "data", ["test"], prep["stats"], Path(prep["tokenizer"]))
    return renders, run / "data" / "tokenizer", data.model_dump(mode="json")


def _reader_config(run: Path, data: dict[str, Any], tokenizer: Path, how: str) -> Path:
    import yaml

    from benchmarks.detection.family2_data import LAB_COLUMNS, STATE_LAB

    kwargs = {
        "token_id": _vocab_id(tokenizer, "dilated"),
        "other_id": _vocab_id(tokenizer, "normal"),
        "column": LAB_COLUMNS.index(STATE_LAB),
        "how": how,
    }
    cfg = {
        "model": {
            "factory": "test_detection_benchmark:build_state_reader",
            "kwargs": kwargs,
            "python_path": [str(Path(__file__).parent)],
            "inputs": {"image": "image", "text": "text", "text_mask": "text_mask"}
            | {"tabular": "tabular"},
        },
        "data": data,
        "runtime": {"device": "cpu", "progress": False},
    }
    path = run / f"reader_{how}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_interaction_truth_on_models_with_known_answers(tmp_path: Path) -> None:
    """The interaction truth measured on analytic readers of the two states: XOR is a pure
    interaction (index about 1, ``no_interaction`` must stay quiet); a sum learns nothing of
    an XOR (both claims left out), and on the redundant recipe it is additive (index 0, the
    rule must flag) and redundant (either state alone keeps the AUROC); a reader of the
    report alone is not redundant (removing the report costs everything)."""
    from benchmarks.detection.interaction import measure_interaction

    renders, tok, data = _interaction_run(tmp_path / "syn", "f2_synergy")
    xor = measure_interaction(_reader_config(tmp_path / "syn", data, tok, "xor"), renders)
    # about 1 (exactly 1 were the flipped bilirubin exactly the mirror of the drawn one)
    assert xor.interaction_index is not None and xor.interaction_index > 0.8
    assert xor.additive == "absent"
    assert xor.auroc["full"] > 0.9
    # a sum of the states cannot rank an XOR: nothing learned, both claims left out
    added = measure_interaction(_reader_config(tmp_path / "syn", data, tok, "sum"), renders)
    assert added.auroc["full"] < 0.7 and added.redundant == added.additive == "between"

    renders, tok, data = _interaction_run(tmp_path / "red", "f2_redundant")
    both = measure_interaction(_reader_config(tmp_path / "red", data, tok, "sum"), renders)
    assert both.auroc["no_ab"] == pytest.approx(0.5, abs=0.15)  # bilirubin noise only
    assert both.redundancy_ratio is not None and both.redundancy_ratio >= 0.9
    assert both.redundant == "present"
    assert both.interaction_index == pytest.approx(0.0, abs=1e-3)  # float32 logits
    assert both.additive_gap == pytest.approx(0.0, abs=1e-3) and both.additive == "present"
    text = measure_interaction(_reader_config(tmp_path / "red", data, tok, "text"), renders)
    assert text.auroc["no_a"] == pytest.approx(0.5) and text.redundant == "absent"
    assert text.redundancy_ratio == pytest.approx(0.0)


def test_interaction_verdict_bounds() -> None:
    """The verdict bands of the two interaction truths, on hand-made numbers."""
    from benchmarks.detection.interaction import additivity_truth, redundancy_truth

    assert redundancy_truth({"full": 0.95, "no_a": 0.94, "no_b": 0.93, "no_ab": 0.5}) == (
        pytest.approx(1 - 0.02 / 0.45),
        "present",
    )
    assert redundancy_truth({"full": 0.95, "no_a": 0.9, "no_b": 0.93, "no_ab": 0.5})[1] == (
        "between"
    )
    assert redundancy_truth({"full": 0.95, "no_a": 0.5, "no_b": 0.95, "no_ab": 0.5})[1] == (
        "absent"
    )
    assert redundancy_truth({"full": 0.55, "no_a": 0.5, "no_b": 0.5, "no_ab": 0.5}) == (
        None,
        "absent",
    )
    y = np.array([1, 0, 1, 0])
    f = np.array([2.0, -2.0, 1.0, -1.0])
    # a pure XOR: index 1, and its EMAP on the state grid is flat (AUROC 0.5)
    index, gap, verdict = additivity_truth(y, f, -f, -f, f)
    assert (index, gap, verdict) == (pytest.approx(1.0), pytest.approx(0.5), "absent")
    index, gap, verdict = additivity_truth(y, f, f - 1, f - 2, f - 3)
    assert (index, gap, verdict) == (pytest.approx(0.0), pytest.approx(0.0), "present")
    # a contrast too small to change any ranking: additive in the currency of decisions
    assert additivity_truth(y, f, f - 1, f - 1, f - 1.6)[1:] == (pytest.approx(0.0), "present")
    assert additivity_truth(y, f, f, f, f)[0] is None


def test_interaction_claims_scored_against_the_measured_truth() -> None:
    """``redundant_pair`` and ``no_interaction`` on an interaction recipe follow the
    checkpoint's measured verdicts, not the recipe: the same findings are hits or misses
    depending on what the model does."""
    v = VARIANTS["f2_redundant"]
    report = _report(
        [("ablation", "redundant_pair", "redundancy.text_x_tabular", "warn")], ["ablation"]
    )
    redundant = {"redundant": "present", "additive": "absent"}
    scored = score_report(v, report, None, redundant)
    outcome = {e["rule"]: e["outcome"] for e in scored["expectations"]}
    assert outcome == {"redundant_pair": "hit", "no_interaction": "hit"}
    assert scored["interaction"]["audit_redundancy"] is None  # no metric in the fake report
    not_redundant = {"redundant": "absent", "additive": "present"}
    scored = score_report(v, report, None, not_redundant)
    outcome = {e["rule"]: e["outcome"] for e in scored["expectations"]}
    assert outcome == {"redundant_pair": "miss", "no_interaction": "miss"}
    between = {"redundant": "between", "additive": "between"}
    outcome = {e["outcome"] for e in score_report(v, report, None, between)["expectations"]}
    assert outcome == {"excluded"}
