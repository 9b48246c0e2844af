"""The no-gradient sweeps' memory plan reaches the report: report.json's
``environment.memory_plan`` (budget, the cache's note, per split pass the measured bytes per
row and the rows per forward) and one line of index.html's provenance, when the budget split
a batch; nothing in report.json when every batch fit whole. ``auto`` (the default) is
resolved for the device and recorded with why."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
from conftest import TINY_N, byo_model_config, tiny_config

from mmaudit.methods.memory_budget import CPU_AUTO_BUDGET_MB
from mmaudit.runner import Overrides, run_audit

BATCH = 16
TIGHT_MB = 0.05  # ~50 KB: a few rows of the tiny model at 16 x 16 px


@pytest.fixture()
def audit(tiny_manifest: Path, tiny_weights: Path, write_config, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run the performance check alone at ``budget`` MB; return report.json and index.html."""

    def run(budget: float | str, name: str) -> tuple[dict, str]:
        cfg = tiny_config(
            tiny_manifest,
            byo_model_config(tiny_weights / "tiny.safetensors"),
            runtime={"memory_budget_mb": budget},
        )
        out = tmp_path / name
        run_audit(write_config(cfg, f"{name}.yaml"), out, Overrides(checks=["performance"]))
        report = json.loads((out / "report.json").read_text())
        return report, (out / "index.html").read_text()

    return run


def test_a_budget_that_splits_the_sweep_is_recorded_and_shown(audit) -> None:  # type: ignore[no-untyped-def]
    tight, tight_html = audit(TIGHT_MB, "tight")
    whole, whole_html = audit(1024.0, "whole")

    plan = tight["environment"]["memory_plan"]
    assert plan["budget_mb"] == TIGHT_MB
    sweep = plan["passes"]["sweep"]
    # the rows per forward follow from the measured footprint: (budget - fixed) // per row
    expected = max(1, int((TIGHT_MB * 2**20 - sweep["fixed_bytes"]) // sweep["bytes_per_row"]))
    assert sweep["rows_per_forward"] == expected < BATCH
    assert tight["timings"]["sweep.rows_per_forward"] == expected
    assert f"{expected} rows per forward" in plan["note"]
    assert "runtime.memory_budget_mb = 0.05 MB" in plan["note"]
    # each of the 3 batches of 16 ran as ceil(16 / expected) forwards instead of one
    extra = (TINY_N // BATCH) * (-(-BATCH // expected) - 1)
    assert tight["timings"]["model_calls"] - whole["timings"]["model_calls"] == extra
    assert html.escape(plan["note"], quote=False) in tight_html

    # the clean counterpart: whole batches fit, report.json records no plan, only the budget
    assert "memory_plan" not in whole["environment"]
    assert whole["timings"]["memory_budget_mb"] == 1024.0
    assert whole["timings"]["sweep.rows_per_forward"] == BATCH
    assert "no sweep split: whole batches fit runtime.memory_budget_mb = 1024 MB" in whole_html
    assert "sweeps split to fit" not in whole_html
    # splitting changed no output: the same metrics either way
    metrics = whole["checks"]["performance"]["metrics"]
    assert metrics
    for name, metric in metrics.items():
        got = _value(tight["checks"]["performance"]["metrics"][name])
        assert got == pytest.approx(_value(metric), rel=1e-5, abs=1e-6, nan_ok=True), name


def _value(metric: object) -> object:
    """A metric's value: a plain number, or the ``value`` of an estimate with its CI."""
    return metric["value"] if isinstance(metric, dict) else metric


def test_the_default_budget_is_resolved_for_the_device_and_recorded(audit) -> None:  # type: ignore[no-untyped-def]
    report, page = audit("auto", "auto")
    # on this CPU, auto means the CPU default; report.json keeps the number and why
    assert report["timings"]["memory_budget_mb"] == CPU_AUTO_BUDGET_MB
    # the config as run keeps auto, so that rerunning it on a GPU resolves it there
    assert report["config"]["runtime"]["memory_budget_mb"] == "auto"
    chosen = report["environment"]["memory_budget_chosen"]
    assert chosen.startswith("auto: 384 MB on cpu")
    assert html.escape(chosen, quote=False) in page
    # a budget the config sets is recorded as set there, with no auto reason on the page
    fixed, fixed_page = audit(1024.0, "fixed")
    assert fixed["environment"]["memory_budget_chosen"] == "runtime.memory_budget_mb"
    assert "(auto:" not in fixed_page
