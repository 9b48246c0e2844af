"""End to end: config -> one sweep -> checks -> report folder, with a model defined in the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from conftest import byo_model_config, tiny_config

from mmaudit.check import REGISTRY, AuditContext, Check, CheckOutput, Requirements, register
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
    assert data["model"]["source"] == "factory:test_model:build_tiny"
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
    # one batched sweep: 48 rows at batch 16 is 3 model calls, whatever the checks do
    assert report.timings["model_calls"] == 3
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["manifest"].endswith(
        "manifest.csv"
    )
    assert not list(tmp_path.glob(".report.partial-*"))


def test_embeddings_captured_once_in_the_sweep(byo_config: Path, tmp_path: Path) -> None:
    from mmaudit.cache import InferenceCache
    from mmaudit.config import load_config
    from mmaudit.data import build_dataset
    from mmaudit.model import load_model

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
    from mmaudit.errors import MmauditError

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
        "factory": "test_model:build_tiny",
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
    from test_model import build_renamed

    model = build_renamed()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    save_file(model.state_dict(), tmp_path / "renamed.safetensors")
    cfg = tiny_config(
        tiny_manifest,
        {
            "factory": "test_model:build_renamed",
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
    from mmaudit.config import load_config
    from mmaudit.data import build_dataset

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
    from mmaudit.check import load_builtin_checks
    from mmaudit.config import AuditConfig
    from mmaudit.errors import CheckError
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
    from mmaudit.check import load_builtin_checks
    from mmaudit.config import AuditConfig
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
