"""End to end: config -> one sweep -> checks -> report folder, with a model defined in the tests."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from conftest import byo_model_config, tiny_config

from mmaudit.checks.contract import (
    REGISTRY,
    AuditContext,
    Check,
    CheckOutput,
    Requirements,
    ThresholdRule,
    register,
)
from mmaudit.checks.findings import count_judged
from mmaudit.runner import Overrides, run_audit


@pytest.fixture()
def byo_config(tiny_manifest: Path, tiny_weights: Path, write_config) -> Path:
    return write_config(
        tiny_config(tiny_manifest, byo_model_config(tiny_weights / "tiny.safetensors"))
    )


def test_run_writes_complete_report(byo_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    report = run_audit(byo_config, out, Overrides(checks=["performance"]))
    names = {p.name for p in out.iterdir()}
    assert {"report.json", "config.yaml", "index.html", "summary.md", "junit.xml"} <= names
    data = json.loads((out / "report.json").read_text())
    assert data["schema_version"] == 1
    assert len(data["model"]["sha256"]) == 64 and len(data["data"]["sha256"]) == 64
    assert data["model"]["source"] == "factory:tiny_models:build_tiny"
    assert data["model"]["detected"]["gradcam"] == "img.2"
    perf = data["checks"]["performance"]
    auroc = perf["metrics"]["auroc"]
    assert auroc["ci_low"] <= auroc["value"] <= auroc["ci_high"]
    assert perf["metrics"]["missing.tabular"] == 0 and perf["metrics"]["n"] == 48
    assert "resample 24 patients" in " ".join(perf["notes"])
    # what a model without a presence mask got for missing inputs, and the lab statistics
    assert data["data"]["missing"] == {
        "applied": True,
        "image": "zero",
        "text": "empty",
        "tabular": "zero",
    }
    assert set(data["data"]["tabular_stats"]) == {"lab_a", "lab_b"}
    assert data["environment"]["precision"] == "fp32"
    # num_workers: auto on the CPU is no workers, and the report says why
    env = data["environment"]
    assert (env["num_workers"], env["num_workers_asked"], env["pin_memory"]) == (0, "auto", False)
    assert "CPU" in env["num_workers_reason"]
    # where the model-bound time went: waiting for data or in the model
    assert {"data_wait_s", "model_s", "sweep.data_wait_s", "sweep.model_s"} <= set(data["timings"])
    assert data["timings"]["sweep.model_s"] > 0
    # one batched sweep: 48 rows at batch 16 is 3 model calls, whatever the checks do
    assert report.timings["model_calls"] == 3
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["manifest"].endswith(
        "manifest.csv"
    )
    assert not list(tmp_path.glob(".report.partial-*"))


def test_embeddings_captured_once_in_the_sweep(byo_config: Path, tmp_path: Path) -> None:
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

    cfg = load_config(byo_config)
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    cache = InferenceCache(adapter, ds, batch_size=16)
    cache.request_layers(["embedding", "image", "tabular"])
    sweep = cache.sweep()
    assert sweep.logits.shape == (48, 1)
    assert sweep.embeddings["embedding"].shape == (48, 8)
    assert cache.model_calls == 3
    cache.sweep()
    cache.embeddings("image")
    assert cache.model_calls == 3  # memoised
    assert adapter.hook_count() == 0


class Exploding(Check):
    name = "exploding_test_check"
    requires: ClassVar[Requirements] = Requirements()

    def run(self, ctx: AuditContext) -> CheckOutput:
        raise RuntimeError("boom")


class Interrupting(Check):
    name = "interrupting_test_check"

    def run(self, ctx: AuditContext) -> CheckOutput:
        raise KeyboardInterrupt


class NeedsText(Check):
    name = "needs_text_test_check"
    requires: ClassVar[Requirements] = Requirements(all_modalities=["text"])

    def run(self, ctx: AuditContext) -> CheckOutput:  # pragma: no cover - never runs
        raise AssertionError


@pytest.fixture()
def test_checks():  # type: ignore[no-untyped-def]
    for cls in (Exploding, Interrupting, NeedsText):
        register(cls)
    yield
    for cls in (Exploding, Interrupting, NeedsText):
        REGISTRY.pop(cls.name, None)


def test_crashing_check_is_error_and_run_goes_on(
    byo_config: Path, tmp_path: Path, test_checks
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "r"
    report = run_audit(
        byo_config,
        out,
        Overrides(checks=["exploding_test_check", "needs_text_test_check", "performance"]),
    )
    assert report.checks["exploding_test_check"].status == "error"
    assert "boom" in (report.checks["exploding_test_check"].reason or "")
    assert report.checks["needs_text_test_check"].status == "skipped"
    assert "text" in (report.checks["needs_text_test_check"].reason or "")
    assert report.checks["performance"].status in ("pass", "warn", "fail")
    junit = (out / "junit.xml").read_text()
    assert "<error" in junit and "<skipped" in junit


def test_interrupted_run_leaves_no_report(byo_config: Path, tmp_path: Path, test_checks) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        run_audit(byo_config, out, Overrides(checks=["performance", "interrupting_test_check"]))
    assert not out.exists()
    # nothing that looks like a report; only the hidden resume state of the sweep
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r.work", "audit.yaml"]


def test_rerun_replaces_previous_report_but_refuses_foreign_folder(
    byo_config: Path, tmp_path: Path
) -> None:
    from mmaudit.engine.errors import MmauditError

    out = tmp_path / "r"
    run_audit(byo_config, out, Overrides(checks=["performance"]))
    run_audit(byo_config, out, Overrides(checks=["performance"]))
    assert (out / "report.json").is_file()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(MmauditError, match="not an mmaudit report"):
        run_audit(byo_config, foreign, Overrides(checks=["performance"]))
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_multiclass_end_to_end_and_precision_that_ran(
    tiny_manifest: Path, tmp_path: Path, write_config
) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    df = pd.read_csv(tiny_manifest)
    df["grade"] = np.array(["mild", "moderate", "severe"])[np.arange(len(df)) % 3]
    manifest = tmp_path / "m.csv"
    df.to_csv(manifest, index=False)
    model = {
        "factory": "tiny_models:build_tiny",
        "kwargs": {"n_out": 3},
        "python_path": byo_model_config(tmp_path)["python_path"],
    }
    cfg = tiny_config(manifest, model, runtime={"precision": "bf16"})
    cfg["data"]["image"]["root"] = str(tiny_manifest.parent)
    cfg["data"]["target"] = {"column": "grade", "kind": "multiclass"}
    out = tmp_path / "r"
    report = run_audit(write_config(cfg), out, Overrides(checks=["performance"]))
    m = report.checks["performance"].metrics
    assert report.checks["performance"].status in ("pass", "warn", "fail")
    preds = pd.read_parquet(out / "samples" / "predictions.parquet")
    prob = preds[["prob.0", "prob.1", "prob.2"]].to_numpy()
    y = preds["target"].to_numpy()
    assert abs(m["auroc_macro"]["value"] - roc_auc_score(y, prob, multi_class="ovr")) < 1e-9
    assert abs(m["auroc.severe"]["value"] - roc_auc_score(y == 2, prob[:, 2])) < 1e-9
    assert "auprc_macro" in m and (out / "tables" / "performance" / "confusion.csv").is_file()
    # bf16 was asked on a CPU: fp32 ran, and the report says so
    env = json.loads((out / "report.json").read_text())["environment"]
    assert env["precision"] == "fp32" and env["precision_asked"] == "bf16"
    assert "CUDA" in env["precision_note"]


def test_bring_your_own_with_dotted_layer_and_renamed_inputs(
    tiny_manifest: Path, tmp_path: Path, write_config
) -> None:  # type: ignore[no-untyped-def]
    """A user's model defined in the tests: forward(pixels, labs), fused vector at head.1."""
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from tiny_models import build_renamed

    model = build_renamed()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    save_file(model.state_dict(), tmp_path / "renamed.safetensors")
    cfg = tiny_config(
        tiny_manifest,
        {
            "factory": "tiny_models:build_renamed",
            "weights": str(tmp_path / "renamed.safetensors"),
            "python_path": byo_model_config(tmp_path)["python_path"],
            "inputs": {"image": "pixels", "tabular": "labs"},
            "layers": {"embedding": "head.1", "image": "img", "tabular": "tab"},
        },
    )
    out = tmp_path / "r"
    report = run_audit(write_config(cfg), out, Overrides(checks=["performance"]))
    assert report.model["inputs"] == {"image": "pixels", "tabular": "labs"}
    assert report.model["layers"]["embedding"] == "head.1"
    assert report.model["detected"]["gradcam"] == "img.0"
    saved = np.load(out / "samples" / "embeddings.npz")
    assert saved["embedding"].shape == (48, 6)
    # the captured head.1 output is the ReLU'd fused vector, recomputed here by hand
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset

    ds = build_dataset(load_config(write_config(cfg, "again.yaml")))
    batch = ds.collate([ds[i] for i in range(len(ds))])
    model.eval()
    with torch.no_grad():
        fused = torch.cat([model.img(batch.image), model.tab(batch.tabular)], dim=1)
        expected = torch.relu(model.head[0](fused)).numpy()
    assert np.allclose(saved["embedding"], expected, atol=2e-2)  # stored as float16


def test_checks_entries_configure_not_select(tiny_manifest: Path, tiny_weights: Path) -> None:
    """Every registered check runs unless disabled; params or thresholds for one check keep
    the others on; --checks (``only``) narrows; disabling every check is an error."""
    from mmaudit.checks.registry import load_builtin_checks
    from mmaudit.engine.config import AuditConfig
    from mmaudit.engine.errors import CheckError
    from mmaudit.runner import plan_checks

    every = sorted(load_builtin_checks())
    model = byo_model_config(tiny_weights / "tiny.safetensors")

    def planned(checks: dict, only: list[str] | None = None) -> list[str]:  # type: ignore[type-arg]
        cfg = AuditConfig.model_validate(tiny_config(tiny_manifest, model, checks=checks))
        return [p.name for p in plan_checks(cfg, only)]

    assert planned({}) == every
    tuned = planned({"subgroups": {"thresholds": {"auroc_gap": {"warn_above": 0.9}}}})
    assert tuned == every
    assert planned({"saliency": {"enabled": False}}) == [n for n in every if n != "saliency"]
    assert planned({"saliency": {"enabled": False}}, ["performance"]) == ["performance"]
    rules = plan_checks(
        AuditConfig.model_validate(
            tiny_config(
                tiny_manifest,
                model,
                checks={"subgroups": {"thresholds": {"auroc_gap": {"warn_above": 0.9}}}},
            )
        ),
        ["subgroups"],
    )[0].rules
    assert rules["auroc_gap"].warn_above == 0.9  # the override is applied, not only listed
    with pytest.raises(CheckError, match="no checks to run"):
        planned({n: {"enabled": False} for n in every})


def test_checks_not_run_and_the_config_that_reruns_the_audit(
    tiny_manifest: Path, tiny_weights: Path
) -> None:
    """Each registered check that did not run has its reason (--checks or the config), and
    the config written into the report selects exactly the checks that ran."""
    from mmaudit.checks.registry import load_builtin_checks
    from mmaudit.engine.config import AuditConfig
    from mmaudit.runner import DISABLED, NOT_REQUESTED, checks_not_run, config_as_run, plan_checks

    every = sorted(load_builtin_checks())
    model = byo_model_config(tiny_weights / "tiny.safetensors")
    checks = {"saliency": {"enabled": False}, "subgroups": {"params": {"n_boot": 60}}}
    cfg = AuditConfig.model_validate(tiny_config(tiny_manifest, model, checks=checks))

    full = plan_checks(cfg)
    assert checks_not_run(cfg, full, None) == {"saliency": DISABLED}
    # --checks naming a disabled check runs it; the others are not requested
    only = ["subgroups", "saliency", "subgroups"]  # a repeat runs once
    narrowed = plan_checks(cfg, only)
    assert [pc.name for pc in narrowed] == ["subgroups", "saliency"]
    not_run = checks_not_run(cfg, narrowed, only)
    assert not_run == {n: NOT_REQUESTED for n in every if n not in ("subgroups", "saliency")}
    narrower = plan_checks(cfg, ["performance"])
    assert checks_not_run(cfg, narrower, ["performance"])["saliency"] == DISABLED

    ran = config_as_run(cfg, narrowed)
    assert sorted(pc.name for pc in plan_checks(ran)) == ["saliency", "subgroups"]
    assert ran.checks["subgroups"].params == {"n_boot": 60}  # params kept
    assert cfg.checks["saliency"].enabled is False and "probing" not in cfg.checks  # a copy
    assert [pc.name for pc in plan_checks(config_as_run(cfg, full))] == [pc.name for pc in full]


@pytest.mark.parametrize(
    ("save_predictions", "save_embeddings"), [(False, True), (False, False), (True, False)]
)
def test_report_keeps_only_the_samples_asked_for(
    save_predictions: bool,
    save_embeddings: bool,
    tiny_manifest: Path,
    tiny_weights: Path,
    tmp_path: Path,
    write_config,  # type: ignore[no-untyped-def]
) -> None:
    import numpy as np
    import pandas as pd

    cfg = tiny_config(
        tiny_manifest,
        byo_model_config(tiny_weights / "tiny.safetensors"),
        report={"save_predictions": save_predictions, "save_embeddings": save_embeddings},
    )
    out = tmp_path / "r"
    run_audit(write_config(cfg), out, Overrides(checks=["performance"]))
    saved = json.loads((out / "report.json").read_text())["data"]["saved"]
    assert saved["predictions"] is save_predictions
    assert bool(saved["embeddings"]) is save_embeddings
    preds = out / "samples" / "predictions.parquet"
    if save_predictions:
        columns = set(pd.read_parquet(preds).columns)
        assert {"id", "patient", "target", "logit.0", "prob.0"} <= columns
    elif save_embeddings:
        # no predictions file: the embeddings carry the ids they are paired by
        assert not preds.exists()
        ids = np.load(out / "samples" / "embeddings.npz")["__ids__"]
        assert list(ids) == [f"s{i}" for i in range(48)]
    else:
        assert not preds.exists() and not (out / "samples" / "embeddings.npz").exists()


def test_dataset_notes_reach_the_report(
    tiny_manifest: Path, tiny_weights: Path, tmp_path: Path, write_config
) -> None:  # type: ignore[no-untyped-def]
    """A blank patient cell is not an error (the row is its own patient), but the run says
    so: the note is in report.json."""
    import pandas as pd

    frame = pd.read_csv(tiny_manifest)
    frame.loc[[3, 7], "patient"] = None
    manifest = tiny_manifest.parent / "blank_patients.csv"
    frame.to_csv(manifest, index=False)
    cfg = tiny_config(manifest, byo_model_config(tiny_weights / "tiny.safetensors"))
    out = tmp_path / "r"
    run_audit(write_config(cfg), out, Overrides(checks=["performance"]))
    notes = json.loads((out / "report.json").read_text())["data"]["notes"]
    assert len(notes) == 1 and "empty in 2 row(s)" in notes[0]


def build_gated(gate: str, started: str, **kwargs: object) -> object:
    """TinyFusion whose forward waits while the file ``gate`` exists (two minutes at most)
    and touches ``started`` first: a run of it holds its output folder until the test lets
    it go (the factory ``test_runner:build_gated``)."""
    import time

    from tiny_models import build_tiny

    def wait(*_: object) -> None:
        Path(started).touch()
        deadline = time.monotonic() + 120
        while Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    model = build_tiny(**kwargs)  # type: ignore[arg-type]
    model.register_forward_pre_hook(wait)
    return model


def test_two_runs_on_one_output_folder(
    tiny_manifest: Path, tiny_weights: Path, tmp_path: Path, write_config
) -> None:  # type: ignore[no-untyped-def]
    """While one run writes -o, a second run (and a --resume) to the same -o stops at once
    with one line naming the first run's pid; the first run's report is exactly that of a
    run alone (before the lock, both shared the sweep files and one got zero logits)."""
    import os
    import subprocess
    import sys
    import time

    import pandas as pd

    gate, started = tmp_path / "gate", tmp_path / "started"
    gate.touch()
    weights = tiny_weights / "tiny.safetensors"
    gated = byo_model_config(
        weights,
        factory="test_runner:build_gated",
        kwargs={"width": 8, "gate": str(gate), "started": str(started)},
    )
    cfg = write_config(tiny_config(tiny_manifest, gated), "gated.yaml")
    out = tmp_path / "rep"
    args = [sys.executable, "-m", "mmaudit", "run", str(cfg), "-o", str(out), "--no-progress"]
    args += ["--checks", "performance", "--fail-on", "never"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(*extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*args, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )

    first = start()
    try:
        deadline = time.monotonic() + 180
        while not started.exists():
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "the first run never reached the model"
            time.sleep(0.05)
        second, resumed = start(), start("--resume")
        errors = [p.communicate(timeout=180)[1] for p in (second, resumed)]
        assert first.poll() is None  # the others did not wait for it
        expect = (
            f"error: another mmaudit run, pid {first.pid}, is writing {out.resolve()}"
            " (wait for it to end, or choose another -o)\n"
        )
        assert [second.returncode, resumed.returncode] == [2, 2], errors
        assert errors == [expect, expect]
        gate.unlink()
        _, err = first.communicate(timeout=300)
    finally:
        gate.unlink(missing_ok=True)
        first.kill()
    assert first.returncode == 0, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".rep")) == []

    alone = tmp_path / "alone"
    plain = write_config(tiny_config(tiny_manifest, byo_model_config(weights)), "plain.yaml")
    run_audit(plain, alone, Overrides(checks=["performance"]))
    ours, ref = (
        pd.read_parquet(out / "samples" / "predictions.parquet"),
        pd.read_parquet(alone / "samples" / "predictions.parquet"),
    )
    pd.testing.assert_frame_equal(ours, ref)
    assert (ours["logit.0"] != 0).all()
    metrics = [json.loads((f / "report.json").read_text())["checks"] for f in (out, alone)]
    assert metrics[0]["performance"]["metrics"] == metrics[1]["performance"]["metrics"]


def test_a_failed_run_keeps_the_resume_state_it_found(
    byo_config: Path, tmp_path: Path, write_config
) -> None:  # type: ignore[no-untyped-def]
    """A run that stops before its sweep (bad data) leaves the earlier run's resume state as
    it was (its lock taken and given back); one that made the folder removes it."""
    import yaml

    from mmaudit.engine.errors import MmauditError

    work = tmp_path / ".r.work"
    work.mkdir()
    (work / "meta.json").write_text("{}")
    (work / "base.rank0of1.done.npy").write_bytes(b"x")
    cfg = yaml.safe_load(byo_config.read_text())
    cfg["data"]["target"]["column"] = "no_such_column"
    bad = write_config(cfg, "bad.yaml")
    with pytest.raises(MmauditError, match="no_such_column"):
        run_audit(bad, tmp_path / "r", Overrides(checks=["performance"]))
    assert sorted(p.name for p in work.iterdir()) == ["base.rank0of1.done.npy", "meta.json"]
    with pytest.raises(MmauditError, match="no_such_column"):
        run_audit(bad, tmp_path / "other", Overrides(checks=["performance"]))
    assert not (tmp_path / ".other.work").exists() and not (tmp_path / "other").exists()


class JudgesNothing(Check):
    """Computes a metric but could test nothing (as probing with no attribute to probe)."""

    name = "judges_nothing_test_check"
    requires: ClassVar[Requirements] = Requirements()
    judged: ClassVar[int | None] = 0
    finding: ClassVar[str | None] = None

    def run(self, ctx: AuditContext) -> CheckOutput:
        from mmaudit.checks.contract import Finding

        out = CheckOutput(metrics={"descriptive": 0.5}, notes=["a note"])
        out.judged, out.rows_used = type(self).judged, 0
        out.skip_reason = "no attribute had 10 rows per level: site A 3 / B 2"
        out.coverage = ["0 of 48 rows usable"]
        if self.finding:
            out.findings.append(
                Finding(check=self.name, rule="own", severity="warn", message=self.finding)  # type: ignore[arg-type]
            )
        return out


@pytest.fixture()
def judges_nothing():  # type: ignore[no-untyped-def]
    register(JudgesNothing)
    yield JudgesNothing
    REGISTRY.pop(JudgesNothing.name, None)
    JudgesNothing.judged, JudgesNothing.finding = 0, None


def test_a_check_that_judged_nothing_is_skipped_with_its_reason(
    byo_config: Path, tmp_path: Path, judges_nothing, write_config
) -> None:  # type: ignore[no-untyped-def]
    """judged == 0: skipped with the check's reason, its metrics, notes and coverage kept;
    judged None (a check that does not say): judged by its findings as before; an own warn
    finding is never hidden; a rule added in the config that judges a metric counts."""
    name = judges_nothing.name
    report = run_audit(byo_config, tmp_path / "a", Overrides(checks=[name, "performance"]))
    c = report.checks[name]
    assert c.status == "skipped" and c.judged == 0
    assert c.reason == "no attribute had 10 rows per level: site A 3 / B 2"
    assert c.metrics == {"descriptive": 0.5} and c.notes == ["a note"]
    assert c.coverage == ["0 of 48 rows usable"] and c.rows_total == 48
    assert report.skipped_checks() == [name]
    assert report.checks["performance"].judged == 2  # AUROC and ECE
    saved = json.loads((tmp_path / "a" / "report.json").read_text())["checks"][name]
    assert saved["status"] == "skipped" and saved["judged"] == 0 and saved["rows_used"] == 0

    judges_nothing.judged = None
    c = run_audit(byo_config, tmp_path / "b", Overrides(checks=[name])).checks[name]
    assert c.status == "pass" and c.judged is None and c.reason is None

    judges_nothing.judged, judges_nothing.finding = 0, "the pipeline is in doubt"
    c = run_audit(byo_config, tmp_path / "c", Overrides(checks=[name])).checks[name]
    assert c.status == "warn" and c.reason is None

    judges_nothing.finding = None
    cfg = yaml.safe_load(byo_config.read_text())
    cfg["checks"] = {name: {"thresholds": {"mine": {"metric": "descriptive", "warn_above": 0.9}}}}
    c = run_audit(write_config(cfg, "ruled.yaml"), tmp_path / "d", Overrides(checks=[name]))
    assert c.checks[name].status == "pass" and c.checks[name].judged == 1


def test_fail_on_skipped_comes_from_the_config_unless_given(
    byo_config: Path, tmp_path: Path, write_config
) -> None:  # type: ignore[no-untyped-def]
    """report.json records fail_on_skipped: runtime.fail_on_skipped, or the argument."""
    cfg = yaml.safe_load(byo_config.read_text())
    cfg["runtime"]["fail_on_skipped"] = True
    strict = write_config(cfg, "strict.yaml")
    only = Overrides(checks=["performance"])
    assert run_audit(strict, tmp_path / "a", only).fail_on_skipped is True
    assert run_audit(strict, tmp_path / "b", only, fail_on_skipped=False).fail_on_skipped is False
    assert run_audit(byo_config, tmp_path / "c", only).fail_on_skipped is False
    saved = json.loads((tmp_path / "a" / "report.json").read_text())
    assert saved["fail_on_skipped"] is True


def build_nan_without_labs(width: int = 8) -> object:
    """TinyFusion whose output is NaN for a row whose lab input is all zeros, as a model
    dividing by a lab norm would be (the factory ``test_runner:build_nan_without_labs``):
    fine on the data, NaN only once a sweep removes the labs."""
    import torch
    from tiny_models import build_tiny

    model = build_tiny(width=width)

    def spoil(
        _m: object, args: tuple[object, ...], kwargs: dict[str, object], out: object
    ) -> object:
        tabular = kwargs["tabular"] if "tabular" in kwargs else args[1]
        no_labs = (tabular == 0).all(1)  # type: ignore[union-attr]
        return torch.where(no_labs[:, None], torch.nan, out)  # type: ignore[arg-type]

    model.register_forward_hook(spoil, with_kwargs=True)
    return model


def test_nan_only_in_an_ablated_sweep_stops_the_run(
    tiny_manifest: Path,
    tiny_weights: Path,
    tmp_path: Path,
    write_config,
    capsys: pytest.CaptureFixture[str],
) -> None:  # type: ignore[no-untyped-def]
    """The base sweep is finite (performance alone passes); ablation zeroes the labs at the
    input and the model answers NaN. That is the checkpoint's fault, not the check's: the
    run stops with exit 2 and one line naming the output, the ids and the sweep, and writes
    no report folder (not a report whose ablation is `error`)."""
    from mmaudit.cli import main

    model = byo_model_config(
        tiny_weights / "tiny.safetensors", factory="test_runner:build_nan_without_labs"
    )
    cfg = tiny_config(tiny_manifest, model)
    cfg["checks"]["ablation"] = {"params": {"level": "input", "strategy": "zero", "n_boot": 50}}
    path = write_config(cfg)
    fine = run_audit(path, tmp_path / "fine", Overrides(checks=["performance"]))
    assert fine.checks["performance"].status in ("pass", "warn", "fail")
    out = tmp_path / "rep"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["run", str(path), "-o", str(out), "--checks", "performance,ablation"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: model output 'logits' is NaN for ids "), err
    # the first coalition without the labs (the empty one, as it happens) is named
    assert re.search(r"of a batch in the ablated sweep 'input:[a-z=,]*tabular=zero'\)", err), err
    assert not out.exists()
    assert not list(tmp_path.glob(".rep.partial-*"))
    assert not (tmp_path / ".rep.work").exists()  # --resume would refuse another checkpoint
    assert "--resume" not in err


EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

FACTORY_SOURCE = """from tiny_models import build_tiny


def build(width: int = 8):
    model = build_tiny(width=width)
    model.register_forward_hook(lambda _m, _i, out: {scale})
    return model
"""


def test_the_factory_source_is_part_of_the_checkpoint(
    tiny_manifest: Path, tmp_path: Path, write_config, test_checks
) -> None:  # type: ignore[no-untyped-def]
    """A factory without weights is its code: editing one line of it is another checkpoint
    (model.sha256 differs, so diff tells them apart), and --resume refuses the batches that
    the code before the edit computed (else predictions mix two models)."""
    import uuid

    from conftest import TESTS

    from mmaudit.engine.errors import MmauditError

    src = tmp_path / "src"
    src.mkdir()
    name = f"edited_factory_{uuid.uuid4().hex}"  # a fresh module: sys.modules keeps imports
    factory = src / f"{name}.py"
    model = {
        "factory": f"{name}:build",
        "kwargs": {"width": 8},
        "python_path": [str(TESTS), str(src)],
        "layers": {"embedding": "fuse", "image": "img", "tabular": "tab"},
    }
    cfg = write_config(tiny_config(tiny_manifest, model))
    out = tmp_path / "r"
    factory.write_text(FACTORY_SOURCE.format(scale="out"))
    with pytest.raises(KeyboardInterrupt):
        run_audit(cfg, out, Overrides(checks=["performance", "interrupting_test_check"]))
    assert (tmp_path / ".r.work" / "meta.json").is_file()
    factory.write_text(FACTORY_SOURCE.format(scale="out * 100"))
    with pytest.raises(MmauditError, match=r"--resume: .* another checkpoint$"):
        run_audit(cfg, out, Overrides(checks=["performance"]), resume=True)
    edited = run_audit(cfg, tmp_path / "b", Overrides(checks=["performance"])).model["sha256"]
    factory.write_text(FACTORY_SOURCE.format(scale="out"))
    resumed = run_audit(cfg, out, Overrides(checks=["performance"]), resume=True)
    assert len({resumed.model["sha256"], edited, EMPTY_SHA256}) == 3


def test_checkpoint_files_name_the_factory_function_and_its_package(tmp_path: Path) -> None:
    """A package re-exporting its factory: the file defining the function and the package's
    own module both count; TorchScript and weights-only paths are unchanged."""
    import uuid

    from mmaudit.engine.config import AuditConfig
    from mmaudit.runner import checkpoint_files

    pkg = f"factory_pkg_{uuid.uuid4().hex}"
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text("from .impl import build\n")
    (tmp_path / pkg / "impl.py").write_text("def build():\n    raise AssertionError\n")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"w")
    cfg = AuditConfig.model_validate(
        {
            "model": {"factory": f"{pkg}:build", "weights": str(weights)},
            "data": {"manifest": str(tmp_path / "m.csv"), "target": {"column": "y"}},
        }
    )
    cfg.model.python_path = [tmp_path]
    assert checkpoint_files(cfg) == [
        weights,
        (tmp_path / pkg / "impl.py").resolve(),
        (tmp_path / pkg / "__init__.py").resolve(),
    ]


def build_nan_second_row(width: int = 8) -> object:
    """TinyFusion answering NaN for the second row of every batch (the factory
    ``test_runner:build_nan_second_row``)."""
    import torch
    from tiny_models import build_tiny

    model = build_tiny(width=width)

    def spoil(_m: object, _i: object, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[1] = torch.nan
        return out

    model.register_forward_hook(spoil)
    return model


@pytest.mark.parametrize("command", ["validate", "run"])
def test_validate_and_run_refuse_a_model_answering_nan(
    command: str,
    tiny_manifest: Path,
    tiny_weights: Path,
    tmp_path: Path,
    write_config,
    capsys: pytest.CaptureFixture[str],
) -> None:  # type: ignore[no-untyped-def]
    """The model probe sees the NaN on the first rows: validate lists it as a problem (it
    said ok, then run stopped), and run stops before any sweep or report folder."""
    from mmaudit.cli import main

    model = byo_model_config(
        tiny_weights / "tiny.safetensors", factory="test_runner:build_nan_second_row"
    )
    path = write_config(tiny_config(tiny_manifest, model))
    out = tmp_path / "rep"
    args = [command, str(path)] + (["-o", str(out), "--checks", "performance"] * (command == "run"))
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert exc.value.code == 2, text
    expected = (
        "model output 'logits' is NaN for id s1 (1 of 4 rows of the first batch, probed"
        " before the run) (check the checkpoint (weights, dtype) and these rows' inputs)"
    )
    assert expected in text and "Traceback" not in text, text
    if command == "validate":
        assert "1 problem(s)" in text and "ok:" not in text, text
    else:
        assert not out.exists() and not (tmp_path / ".rep.work").exists()


class ExemptsARule(Check):
    """Two metrics its default rules would warn on; ``exempt`` names a rule this model
    cannot meet (as ablation's no_interaction on a concat + linear-head model)."""

    name = "exempts_a_rule_test_check"
    requires: ClassVar[Requirements] = Requirements()
    default_thresholds: ClassVar[dict[str, ThresholdRule]] = {
        "low_gap": ThresholdRule(
            metric="gap", warn_below=0.5, found="No gap", next_step="build one"
        ),
        "high_x": ThresholdRule(metric="x", warn_above=0.5, found="X is high"),
    }
    exempt: ClassVar[dict[str, str]] = {}

    def run(self, ctx: AuditContext) -> CheckOutput:
        out = CheckOutput(metrics={"gap": 0.0, "x": 0.1}, exempt_rules=dict(self.exempt))
        out.judged = count_judged(out.metrics, self.default_thresholds, out.exempt_rules)
        out.rows_used = 1
        return out


def test_an_exempt_rule_gives_a_note_with_its_reason_not_a_warning(
    byo_config: Path, tmp_path: Path
) -> None:
    """Planted: ``gap`` = 0 crosses low_gap's warn limit. Judged, it warns; exempt, the
    check passes with a note carrying the plain reason, the value as evidence and the
    rule's next step, and the exempt rule counts no test (the other rule still does)."""
    register(ExemptsARule)
    name = ExemptsARule.name
    try:
        judged = run_audit(byo_config, tmp_path / "a", Overrides(checks=[name])).checks[name]
        assert judged.status == "warn" and judged.judged == 2
        (warn,) = judged.findings
        assert (warn.rule, warn.message, warn.next_step) == ("low_gap", "No gap", "build one")
        ExemptsARule.exempt = {"low_gap": "The model cannot have a gap"}
        exempt = run_audit(byo_config, tmp_path / "b", Overrides(checks=[name])).checks[name]
        assert exempt.status == "pass" and exempt.judged == 1
        (note,) = exempt.findings
        assert (note.severity, note.rule, note.metric) == ("note", "low_gap", "gap")
        assert note.message == "The model cannot have a gap"
        assert note.evidence == "gap = 0; not judged" and note.next_step == "build one"
    finally:
        REGISTRY.pop(name, None)
        ExemptsARule.exempt = {}
