"""Benchmark: modality ablation at the input vs at the encoder output, on the bundled sample.

    .venv/bin/python benchmarks/ablation_speed.py [--config configs/sample.yaml]
        [--device cpu] [--repeats 3] [--check]

Both levels evaluate every coalition of modalities (2^M - 1 ablated sweeps; the full
coalition is the base sweep) with permutation removal, each from a fresh
``InferenceCache`` so memoisation cannot help either side, in the same process on the
same machine:

* input level: every coalition reruns the whole model (encoders included);
* encoder level: the encoders ran once, in the base sweep every audit runs anyway
  (timed on its own line); all coalitions then run in one pass over the data, each batch
  stacking the cached encoder outputs of every coalition so fusion and head run on them
  together, and no image is decoded (as the check does, ``InferenceCache.ablated_many``).

Prints the time of each, their ratio, the time per coalition, the largest AUROC
difference between the two levels (they compute the same thing), and the time of the
EMAP cross-sample evaluations. ``--check`` also times the whole ``ablation`` check with
its defaults (1000 bootstrap resamples). Timings are the minimum over ``--repeats``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _context(config: Path, device: str) -> Any:
    from mmaudit.checks.contract import AuditContext
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

    cfg = load_config(config)
    cfg.runtime.device = device
    cfg.runtime.progress = False
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)

    def fresh() -> AuditContext:
        cache = InferenceCache(adapter, ds, batch_size=cfg.runtime.batch_size, seed=0)
        cache.request_layers([m for m in ds.modalities if m in adapter.layers])
        return AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)

    return fresh


def _coalitions(ctx: Any, level: str) -> tuple[float, dict[int, np.ndarray]]:
    mods = list(ctx.dataset.modalities)
    masks = range((1 << len(mods)) - 1)
    removals = [{m: "permute" for j, m in enumerate(mods) if not (s >> j) & 1} for s in masks]
    start = time.perf_counter()
    results = ctx.cache.ablated_many(removals, level)
    took = time.perf_counter() - start
    return took, {s: r.logits for s, r in zip(masks, results, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "sample.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check", action="store_true", help="also time the whole check")
    args = parser.parse_args()

    from mmaudit.checks.ablation.check import AblationCheck
    from mmaudit.checks.ablation.emap import emap_logits
    from mmaudit.checks.ablation.scoring import predicted_probs
    from mmaudit.methods.stats import auroc

    fresh = _context(args.config, args.device)
    warm = fresh()
    warm.cache.sweep()  # first call pays one-off costs (allocator, kernels); not measured
    n = len(warm.dataset)
    mods = list(warm.dataset.modalities)
    n_coal = (1 << len(mods)) - 1
    best: dict[str, float] = {"base": np.inf, "input": np.inf, "encoder": np.inf, "emap": np.inf}
    logits: dict[str, dict[int, np.ndarray]] = {}
    for _ in range(args.repeats):
        ctx = fresh()
        t = time.perf_counter()
        ctx.cache.sweep()
        best["base"] = min(best["base"], time.perf_counter() - t)
        took, logits["encoder"] = _coalitions(ctx, "encoder")
        best["encoder"] = min(best["encoder"], took)
        t = time.perf_counter()
        emap_logits(ctx, mods, "encoder", 64)
        best["emap"] = min(best["emap"], time.perf_counter() - t)
        took, logits["input"] = _coalitions(fresh(), "input")
        best["input"] = min(best["input"], took)

    y = warm.target
    gap = max(
        abs(
            auroc(y, predicted_probs(logits["input"][k], "binary"))
            - auroc(y, predicted_probs(logits["encoder"][k], "binary"))
        )
        for k in logits["input"]
    )
    print(f"sample: {n} rows, modalities {', '.join(mods)}, device {args.device}")
    print(f"base sweep with encoder outputs (every audit runs it once): {best['base']:.2f} s")
    print(
        f"input level:   {n_coal} coalitions in {best['input']:.2f} s"
        f" ({best['input'] / n_coal:.3f} s per coalition)"
    )
    print(
        f"encoder level: {n_coal} coalitions in {best['encoder']:.2f} s"
        f" ({best['encoder'] / n_coal:.3f} s per coalition)"
    )
    print(f"ratio input / encoder: {best['input'] / best['encoder']:.1f}x")
    print(f"largest AUROC difference between the levels over the coalitions: {gap:.4f}")
    print(
        f"EMAP at the encoder level, 64 reference samples ({n * 64 * len(mods)} evaluations):"
        f" {best['emap']:.2f} s"
    )
    if args.check:
        ctx = fresh()
        ctx.cache.sweep()
        t = time.perf_counter()
        AblationCheck(AblationCheck.Params()).run(ctx)
        print(
            f"whole ablation check, defaults, after the base sweep: {time.perf_counter() - t:.2f} s"
        )


if __name__ == "__main__":
    main()
