"""benchmarks/realistic.py: the generator at another image size, the encoder-row counters,
the growth fit behind the 100k projection, and one smoke run of the whole harness."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> object:
    sys.path.insert(0, str(BENCH))
    try:
        import realistic

        yield realistic
    finally:
        sys.path.remove(str(BENCH))


def test_generator_writes_images_at_the_asked_size(tmp_path: Path) -> None:
    from mmaudit.sample.generate import generate_sample

    df = generate_sample(tmp_path / "big", n=10, seed=3, image_size=96)
    small = generate_sample(tmp_path / "small", n=10, seed=3)
    image = np.asarray(Image.open(tmp_path / "big" / df["image_path"][0]))
    mask = np.asarray(Image.open(tmp_path / "big" / df["mask_path"][0])) > 0
    assert image.shape == mask.shape == (96, 96) and image.dtype == np.uint8
    assert np.asarray(Image.open(tmp_path / "small" / small["image_path"][0])).shape == (64, 64)
    # the geometry scales: the lungs cover about the same share of the image at both sizes
    small_mask = np.asarray(Image.open(tmp_path / "small" / small["mask_path"][0])) > 0
    assert abs(mask.mean() - small_mask.mean()) < 0.03
    assert df["label"].tolist() == small["label"].tolist()  # same studies, larger pixels


def test_chunked_generation_keeps_ids_unique(bench: object, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(bench, "CHUNK", 12)
    import pandas as pd

    manifest = bench.make_data(tmp_path, 30, 32)
    df = pd.read_csv(manifest, keep_default_na=False)
    assert len(df) == 30 and df["id"].is_unique
    assert all((tmp_path / p).is_file() for p in df["image_path"])
    # patients of different chunks never merge
    assert df.groupby("patient_id")["id"].apply(lambda s: s.str[:3].nunique()).max() == 1


def test_counts_rows_and_gradient_rows_per_phase(
    bench: object, tmp_path: Path, monkeypatch
) -> None:
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    import realistic_models as rm

    monkeypatch.setenv("MMAUDIT_BENCH_COUNTS", str(tmp_path / "counts.json"))
    monkeypatch.setattr(rm, "COUNTS", type(rm.COUNTS)(rm.COUNTS.default_factory))
    folder = rm.tiny_bert_folder(tmp_path / "bert")
    model = rm.build(backbone="resnet10t", text_folder=str(folder), fusion="attention", dim=8)
    ids, mask = torch.ones(3, 5, dtype=torch.long), torch.ones(3, 5, dtype=torch.long)
    monkeypatch.setattr(rm, "PHASE", "sweep")
    with torch.no_grad():
        model(torch.zeros(3, 1, 32, 32), torch.zeros(3, 5), ids, mask)
    monkeypatch.setattr(rm, "PHASE", "check.saliency")
    image = torch.zeros(2, 1, 32, 32, requires_grad=True)
    model(image, torch.zeros(2, 5), ids[:2], mask[:2]).sum().backward()
    sweep, sal = rm.COUNTS["sweep"], rm.COUNTS["check.saliency"]
    assert sweep["image"]["rows"] == 3 and sweep["image"]["grad_rows"] == 0
    assert sweep["text"]["tokens"] == 15
    assert sal["image"]["rows"] == 2 and sal["image"]["grad_rows"] == 2
    # parameters need gradients in a freshly built model: the text rows were recorded too
    assert sal["text"]["grad_rows"] == 2


def test_growth_fit_tells_fixed_subsets_from_per_study_costs(bench: object) -> None:
    assert bench.fit([(256, 512.0), (1024, 2048.0)]) == pytest.approx((0.0, 2.0))
    assert bench.fit([(256, 300.0), (1024, 300.0)]) == pytest.approx((300.0, 0.0))
    a, b = bench.fit([(256, 356.0), (1024, 1124.0)])  # 100 fixed + 1 per study
    assert (a, b) == pytest.approx((100.0, 1.0))
    assert bench.fit([(256, 256.0)]) == pytest.approx((0.0, 1.0))  # one N: all grows


def _quick_run(
    tmp_path: Path, fusion: str, checks: str, image_size: int
) -> tuple[subprocess.CompletedProcess[str], dict]:
    """The harness's smoke mode (32 studies, timm resnet10t, a tiny BERT) with one fusion and
    the given checks, audits kept under ``tmp_path / "work"``: the process and the variant's
    raw numbers."""
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    raw = tmp_path / "raw.json"
    cmd = [sys.executable, str(BENCH / "realistic.py"), "--quick", "--backbone", "resnet10t"]
    cmd += ["--image-size", str(image_size), "--text", "tiny", "--fusions", fusion]
    cmd += ["--checks", checks, "--json", str(raw), "--keep", str(tmp_path / "work")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (variant,) = [v for k, v in json.loads(raw.read_text()).items() if fusion in k]
    return proc, variant


def test_smoke_run_one_sweep_is_one_forward_per_study(tmp_path: Path) -> None:
    """The whole harness on 32 studies, a small timm model and a tiny BERT, performance only:
    its sweep must show exactly one image and one text forward per study."""
    proc, variant = _quick_run(tmp_path, "concat", "performance", image_size=32)
    (run,) = variant["runs"]
    rows = {r["phase"]: r for r in run["rows"]}
    assert run["n"] == 32 and set(rows) >= {"load", "sweep", "check.performance"}
    # one forward per study, plus the memory budget's two measuring forwards (1 and 2 rows,
    # a fixed cost whatever N) before the first batch
    assert rows["sweep"]["image_fe"] == rows["sweep"]["text_fe"] == 32 + 3
    assert rows["check.performance"]["image_fe"] == 0  # it reads the cached sweep
    assert variant["flops_per_row"]["image"] > 0 and variant["flops_per_row"]["text"] > 0
    assert "inference sweeps" in proc.stdout and "PASS" in proc.stdout


def test_memory_line_names_the_budget_and_the_rows_chosen(bench: object) -> None:
    report = {
        "timings": {"memory_budget_mb": 1024.0, "sweep.rows_per_forward": 64.0},
        "checks": {
            "saliency": {"notes": ["memory: gradient passes split ...: CAMs -> 12 rows", "x"]},
            "probing": {"notes": ["nothing about memory here"]},
        },
    }
    line = bench.memory_line(report)  # type: ignore[attr-defined]
    assert line == (
        "runtime.memory_budget_mb = 1024; base sweep 64 rows per forward;"
        " saliency: gradient passes split ...: CAMs -> 12 rows"
    )
    assert bench.memory_line({}) == "no memory plan recorded"  # type: ignore[attr-defined]


def test_set_pairs_become_check_params_and_scale_the_capped_costs(bench: object) -> None:
    pairs = [
        "saliency.scan_samples=24",
        "saliency.sanity=false",
        "attribution.max_text_samples=128",
    ]
    assert bench.check_overrides(pairs) == {  # type: ignore[attr-defined]
        "saliency": {"params": {"scan_samples": 24, "sanity": False}},
        "attribution": {"params": {"max_text_samples": 128}},
    }
    with pytest.raises(SystemExit, match="CHECK.PARAM=VALUE"):
        bench.check_overrides(["scan_samples=24"])  # type: ignore[attr-defined]
    # runtime.KEY=VALUE pairs set runtime options, not a check called "runtime"
    with_runtime = [*pairs, "runtime.memory_budget_mb=1024"]
    assert "runtime" not in bench.check_overrides(with_runtime)  # type: ignore[attr-defined]
    assert bench.check_overrides(with_runtime, runtime=True) == {  # type: ignore[attr-defined]
        "memory_budget_mb": 1024
    }
    # a stage run on 24 rows projects to the default 200: 200 / 24 times its fixed rows
    scale, words = bench.cap_scale("check.saliency/scan_offroi", pairs)  # type: ignore[attr-defined]
    assert scale == pytest.approx(200 / 24) and words == "scan_samples 24 -> 200"
    assert bench.cap_scale("check.saliency/occlusion_test", pairs) == (  # type: ignore[attr-defined]
        1.0,
        "hotspot_samples 1000",
    )
    assert bench.cap_scale("sweep", pairs) == (1.0, "")  # type: ignore[attr-defined]


def _toy_run(n: int, stage: str, fixed: float, per_study: float) -> dict:
    """A run of ``n`` studies: a sweep, the saliency check and one of its stages costing
    ``fixed + per_study * n`` image rows."""
    rows = [
        {"phase": "sweep", "image_fe": float(n), "text_fe": 0.0, "seconds": 1.0,
         "model_calls": 1.0, "peak_rss_mib": 1.0},
        {"phase": "check.saliency", "image_fe": 0.0, "text_fe": 0.0, "seconds": 1.0,
         "model_calls": 1.0, "peak_rss_mib": 1.0, "status": "pass"},
        {"phase": stage, "image_fe": fixed + per_study * n,
         "text_fe": 0.0, "seconds": 1.0, "model_calls": float("nan"), "peak_rss_mib": 1.0},
    ]  # fmt: skip
    return {"n": n, "rows": rows, "wall": 1.0, "model_calls": 1.0, "peak_rss_mib": 1.0,
            "decode_per_s": 1e9, "sweep_images_per_s": 1.0, "bottleneck": "x"}  # fmt: skip


def test_the_projection_scales_only_the_fixed_part_of_a_capped_stage(bench: object) -> None:
    """The map pass caps its IG subset (run cap 24: 240 rows) while its CAMs cover 3 rows
    per study: at 100k and the default cap 48 it costs 480 + 300,000 rows."""
    stage = "check.saliency/compute_maps"
    runs = [_toy_run(n, stage, 240.0, 3.0) for n in (256, 1024)]
    text = bench.analyse("toy", runs, {"image": 1.0}, ["saliency.subset_samples=24"])  # type: ignore[attr-defined]
    line = next(x for x in text.splitlines() if x.startswith(f"| {stage}"))
    assert "subset_samples 24 -> 48" in line and "grows with N" in line
    assert f"| {(480 + 3 * 100_000) / 100_000:,.3f} |" in line
    # the check's row in the per-N table holds its stage's rows: (240 + 3 * 256) / 256
    assert f"| check.saliency | pass | 1.0 | 1 | {(240 + 3 * 256) / 256:,.2f} |" in text


def test_a_stage_capped_whole_stops_growing_at_its_cap(bench: object) -> None:
    """The scan's rows grow with N while N is below its cap (run cap 2,000: every row
    scanned at N = 256 and 1,024); at 100k it scans 2,000 rows, scaled to the default 200."""
    stage = "check.saliency/scan_offroi"
    runs = [_toy_run(n, stage, 0.0, 5.0) for n in (256, 1024)]
    text = bench.analyse("toy", runs, {"image": 1.0}, ["saliency.scan_samples=2000"])  # type: ignore[attr-defined]
    line = next(x for x in text.splitlines() if x.startswith(f"| {stage}"))
    assert "capped subset" in line and "scan_samples 2000 -> 200" in line
    assert f"| {5.0 * 2000 * (200 / 2000) / 100_000:,.3f} |" in line
    # a cap set to none is uncapped: the stage then grows with N
    assert bench.run_cap(stage, ["saliency.scan_samples=null"]) is None  # type: ignore[attr-defined]
    uncapped = bench.analyse("toy", runs, {"image": 1.0}, ["saliency.scan_samples=null"])  # type: ignore[attr-defined]
    line = next(x for x in uncapped.splitlines() if x.startswith(f"| {stage}"))
    assert "scan_samples none (uncapped)" in line and "grows with N" in line
    assert f"| {5.0:,.3f} |" in line


def test_smoke_attention_fusion_is_read_by_the_attention_check(tmp_path: Path) -> None:
    """The attention fusion is text -> image cross-attention (report tokens over the image's
    regions), and the tiny BERT's tokenizer knows the reports' words: the attention check
    runs on it (neither skipped nor an error), and its model calls are counted."""
    _, variant = _quick_run(tmp_path, "attention", "attention", image_size=64)
    (run,) = variant["runs"]
    assert run["statuses"]["attention"] in ("pass", "warn", "fail"), run["statuses"]
    rows = {r["phase"]: r for r in run["rows"]}
    # relevancy: one forward and one backward of the whole model per batch of analysed rows
    assert rows["check.attention"]["model_calls"] >= 1
    report = json.loads((tmp_path / "work" / "attention_32" / "report" / "report.json").read_text())
    check = report["checks"]["attention"]
    assert any("fusion.attn" in n for n in check["notes"]), check["notes"]
    # every analysed row (those with an image and a report) went through once, and the budget's
    # probe 1 + 2 more: the text encoder under autograd (relevancy runs through its
    # self-attention), the frozen image encoder without (no row of it counts 3)
    analysed = check["metrics"]["attention.n_samples"]
    assert 0 < analysed <= 32
    assert rows["check.attention"]["image_fe"] == analysed + 3
    assert rows["check.attention"]["text_fe"] == 3 * (analysed + 3)
