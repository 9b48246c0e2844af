"""Several processes, one report: torchrun with two CPU (gloo) processes equals one process,
every check's every metric; an interrupted run resumes from its finished sweep batches."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import byo_model_config, tiny_config

from mmaudit.engine.errors import MmauditError
from mmaudit.runner import Overrides, run_audit

TORCHRUN = Path(sys.executable).with_name("torchrun")


# Every check at its smallest useful size: what is compared is the model-bound work each rank
# does on its shard (sweeps, ablations, SHAP, IG, hotspot occlusion, EMAP), not statistical
# power. What legitimately differs: a row's model output can move by one float rounding step
# (~6e-8) with the shape of the batch it is computed in (BLAS treats a tail of rows apart), and
# metrics made of differences of near-equal outputs lift that above 1e-6: the opt-in occlusion
# *map* method (drops of ~1e-3, so ~1e-4 relative) and IG's completeness error. So the map
# methods are the default ones, and the IG subset (20 rows in batches of 5) splits into the
# same batches in one process and in two.
FAST_CHECKS: dict[str, dict[str, object]] = {
    "performance": {"n_boot": 50},
    "subgroups": {"n_boot": 50, "n_permutations": 50},
    "ablation": {
        "n_boot": 50,
        "emap_partners": 4,
        "emap_partners_input": 2,
        "robustness_steps": 3,
        "robustness_draws": 2,
    },
    "attribution": {
        "n_boot": 50,
        "ig_steps": 4,
        "ig_steps_per_pass": 4,
        "max_shap_samples": 20,
        "n_background": 8,
        # draws baselines, path points per sample (the permutation explainer is exact for
        # the two labs here, so its draws would not show)
        "tabular_method": "gradient",
        "gradient_samples": 8,
    },
    "embedding": {
        "n_boot": 50,
        "n_permutations": 20,
        "silhouette_permutations": 0,
        "projections": ["pca"],
        "max_clusters": 3,
    },
    "probing": {"n_boot": 50, "n_folds": 2, "inner_folds": 2, "n_control": 1, "erasure_draws": 2},
    "saliency": {
        "n_boot": 50,
        "n_permutations": 50,
        "ig_steps": 4,
        "ig_steps_per_pass": 4,
        "subset_samples": 20,
        "control_draws": 2,
        "hotspot_null": 20,
        "faithfulness_samples": 8,
        "faithfulness_steps": 3,
        "sanity_samples": 4,
    },
}


@pytest.fixture()
def config(tiny_manifest: Path, tiny_weights: Path, tmp_path: Path) -> Path:
    cfg = tiny_config(tiny_manifest, byo_model_config(tiny_weights / "tiny.pt"))
    cfg["runtime"]["batch_size"] = 5  # shards of 24 rows: batch boundaries differ from 1 process
    cfg["checks"] = {name: {"params": params} for name, params in FAST_CHECKS.items()}
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _metrics(folder: Path, check: str = "performance") -> dict[str, object]:
    return json.loads((folder / "report.json").read_text())["checks"][check]["metrics"]


def _same(a: object, b: object) -> bool:
    """Numbers equal within 1e-6 (absolute; NaN equals NaN), anything else equal."""
    if isinstance(a, bool) or not isinstance(a, int | float):
        return a == b
    if not isinstance(b, int | float) or isinstance(b, bool):
        return False
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= 1e-6


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside this python")
def test_two_processes_equal_one(config: Path, tmp_path: Path) -> None:
    """Every check's every metric (value, CI, null p) of a 2-process torchrun audit equals the
    1-process audit: random draws in sharded work are keyed by sample, not rank or batch."""
    single = tmp_path / "one"
    run_audit(config, single, Overrides())
    double = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "mmaudit", "run",
         str(config), "-o", str(double), "--no-progress"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: a warn/fail finding, not a crash
    one = json.loads((single / "report.json").read_text())
    two = json.loads((double / "report.json").read_text())
    assert two["environment"]["world_size"] == 2
    a = pd.read_parquet(single / "samples" / "predictions.parquet")
    b = pd.read_parquet(double / "samples" / "predictions.parquet")
    assert list(a["id"]) == list(b["id"])  # every row once, in dataset order
    np.testing.assert_allclose(a["logit.0"], b["logit.0"], rtol=0, atol=1e-5)
    assert one["checks"].keys() == two["checks"].keys() == set(FAST_CHECKS) | {"attention"}
    differ = []
    for check, ca in one["checks"].items():
        cb = two["checks"][check]
        assert ca["status"] == cb["status"], (check, ca.get("reason"), cb.get("reason"))
        assert ca["status"] != "error", (check, ca.get("reason"))
        ma, mb = ca.get("metrics") or {}, cb.get("metrics") or {}
        assert ma.keys() == mb.keys(), check
        assert ma or ca["status"] == "skipped", check  # a check that ran reports metrics
        for key, va in ma.items():
            vb = mb[key]
            if isinstance(va, dict):
                for stat in ("value", "ci_low", "ci_high", "null_p"):
                    if not _same(va.get(stat), vb.get(stat)):
                        differ.append(f"{check}: {key} {stat} {va.get(stat)} != {vb.get(stat)}")
            elif not _same(va, vb):
                differ.append(f"{check}: {key} {va} != {vb}")
    assert not differ, f"{len(differ)} metrics differ:\n" + "\n".join(differ[:40])
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
    from mmaudit.engine import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 100)
    monkeypatch.setattr(distributed, "init", lambda device: device)
    with pytest.raises(MmauditError, match="world size 100 is larger than the dataset"):
        run_audit(config, tmp_path / "r", Overrides(checks=["performance"]))
    assert not (tmp_path / "r").exists()


def test_shards_cover_every_index_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mmaudit.engine import distributed

    monkeypatch.setattr(distributed, "active", lambda: True)
    for n in (7, 48, 100):
        for w in (1, 2, 3, 8):
            monkeypatch.setenv("WORLD_SIZE", str(w))
            parts = []
            for r in range(w):
                monkeypatch.setenv("RANK", str(r))
                parts.append(distributed.shard(np.arange(n)))
            assert np.concatenate(parts).tolist() == list(range(n))


def test_per_sample_seeds_make_draws_independent_of_the_batch() -> None:
    """A sample's seed depends on the run seed, what is drawn and its index only, so its noisy
    in-fill is the same alone as in any batch (what hotspot occlusion's controls rely on)."""
    import torch

    from mmaudit.engine.distributed import sample_seeds
    from mmaudit.methods.region_fill import linear_fill

    assert sample_seeds(0, "x", [3, 7]) == [
        sample_seeds(0, "x", [3])[0],
        *sample_seeds(0, "x", [7]),
    ]
    assert len({*sample_seeds(0, "x", range(100)), *sample_seeds(0, "y", range(100))}) == 200
    assert sample_seeds(1, "x", [3]) != sample_seeds(0, "x", [3])
    images = torch.rand(4, 1, 12, 12)
    r0, c0 = torch.tensor([2, 0, 5, 8]), torch.tensor([3, 8, 1, 0])
    index = [10, 11, 12, 13]
    together = linear_fill(images, r0, c0, 4, 4, 1.0, seeds=sample_seeds(5, "fill", index))
    for j in range(4):
        alone = linear_fill(
            images[j : j + 1], r0[j : j + 1], c0[j : j + 1], 4, 4, 1.0,
            seeds=sample_seeds(5, "fill", index[j : j + 1]),
        )  # fmt: skip
        assert torch.equal(alone[0], together[j])
    plain = linear_fill(images, r0, c0, 4, 4, 0.0)
    assert not torch.equal(plain, together)  # the noise is there
