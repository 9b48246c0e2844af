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
