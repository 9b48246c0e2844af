"""Several processes, one report: torchrun with two CPU (gloo) processes equals one process;
an interrupted run resumes from its finished sweep batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import byo_model_config, tiny_config

from mmaudit.errors import MmauditError
from mmaudit.runner import Overrides, run_audit

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture()
def config(tiny_manifest: Path, tiny_weights: Path, tmp_path: Path) -> Path:
    cfg = tiny_config(tiny_manifest, byo_model_config(tiny_weights / "tiny.pt"))
    cfg["runtime"]["batch_size"] = 5  # shards of 24 rows: batch boundaries differ from 1 process
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _metrics(folder: Path) -> dict[str, object]:
    return json.loads((folder / "report.json").read_text())["checks"]["performance"]["metrics"]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside this python")
def test_two_processes_equal_one(config: Path, tmp_path: Path) -> None:
    single = tmp_path / "one"
    run_audit(config, single, Overrides(checks=["performance"]))
    double = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "mmaudit", "run",
         str(config), "-o", str(double), "--checks", "performance", "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((double / "report.json").read_text())
    assert report["environment"]["world_size"] == 2
    a = pd.read_parquet(single / "samples" / "predictions.parquet")
    b = pd.read_parquet(double / "samples" / "predictions.parquet")
    assert list(a["id"]) == list(b["id"])  # every row once, in dataset order
    np.testing.assert_allclose(a["logit.0"], b["logit.0"], rtol=0, atol=1e-5)
    ma, mb = _metrics(single), _metrics(double)
    assert ma.keys() == mb.keys()
    for key, va in ma.items():
        vb = mb[key]
        if isinstance(va, dict):
            for stat in ("value", "ci_low", "ci_high"):
                assert va[stat] == pytest.approx(vb[stat], abs=1e-6), (key, stat)
        else:
            assert va == pytest.approx(vb, abs=1e-6), key
    assert not list(tmp_path.glob(".two.*"))


def test_resume_reuses_finished_sweep(config: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mmaudit.checks.performance import PerformanceCheck

    out = tmp_path / "r"
    original = PerformanceCheck.run

    def interrupted(self, ctx):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(PerformanceCheck, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_audit(config, out, Overrides(checks=["performance"]))
    assert not out.exists()
    work = tmp_path / ".r.work"
    (done,) = work.glob("base.*.done.npy")
    assert np.load(done).tolist() == [1] * 10  # 48 rows in batches of 5, all flushed
    monkeypatch.setattr(PerformanceCheck, "run", original)
    resumed = run_audit(config, out, Overrides(checks=["performance"]), resume=True)
    assert resumed.timings["model_calls"] == 0  # the whole sweep came from disk
    assert not work.exists()
    fresh = run_audit(config, tmp_path / "fresh", Overrides(checks=["performance"]))
    assert fresh.timings["model_calls"] == 10
    assert _metrics(out) == _metrics(tmp_path / "fresh")


def test_resume_from_another_config_is_refused(config: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mmaudit.checks.performance import PerformanceCheck

    monkeypatch.setattr(
        PerformanceCheck, "run", lambda self, ctx: (_ for _ in ()).throw(KeyboardInterrupt)
    )
    with pytest.raises(KeyboardInterrupt):
        run_audit(config, tmp_path / "r", Overrides(checks=["performance"]))
    other = yaml.safe_load(config.read_text())
    other["runtime"]["seed"] = 7
    config.write_text(yaml.safe_dump(other))
    with pytest.raises(MmauditError, match="another config"):
        run_audit(config, tmp_path / "r", Overrides(checks=["performance"]), resume=True)


def test_world_larger_than_dataset(config: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mmaudit import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 100)
    monkeypatch.setattr(distributed, "init", lambda device: device)
    with pytest.raises(MmauditError, match="world size 100 is larger than the dataset"):
        run_audit(config, tmp_path / "r", Overrides(checks=["performance"]))
    assert not (tmp_path / "r").exists()


def test_shards_cover_every_index_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mmaudit import distributed

    monkeypatch.setattr(distributed, "active", lambda: True)
    for n in (7, 48, 100):
        for w in (1, 2, 3, 8):
            monkeypatch.setenv("WORLD_SIZE", str(w))
            parts = []
            for r in range(w):
                monkeypatch.setenv("RANK", str(r))
                parts.append(distributed.shard(np.arange(n)))
            assert np.concatenate(parts).tolist() == list(range(n))
