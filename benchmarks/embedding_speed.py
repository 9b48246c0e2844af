"""Wall time of the ``embedding`` check, and of its parts against scikit-learn peers.

Two workloads:

* the bundled sample (293 test rows, four captured layers, the ``shortcut``
  checkpoint, default parameters), against the model sweep of the same run;
* N random D-dimensional embeddings (default 20 000 x 256, one layer, a binary label
  and two attributes, default parameters): the whole check, and its blocked kNN and
  silhouette against ``sklearn.neighbors.NearestNeighbors(algorithm="brute")`` and
  ``sklearn.metrics.silhouette_samples`` on the same data, with results compared.

    .venv/bin/python benchmarks/embedding_speed.py [--n 20000] [--dim 256]
        [--device auto|cpu|cuda] [--skip-sample] [--skip-check]

Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_sample(device: torch.device) -> None:
    from mmaudit.checks.contract import AuditContext
    from mmaudit.checks.embedding.check import EmbeddingCheck
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

    cfg = load_config(ROOT / "configs" / "sample.yaml")
    cfg.runtime.device = device.type
    cfg.runtime.progress = False
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    cache = InferenceCache(adapter, ds, batch_size=64, seed=0)
    cache.request_layers(["embedding", *ds.modalities])
    t = time.perf_counter()
    cache.sweep()
    _sync(device)
    sweep_s = time.perf_counter() - t
    ctx = AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)
    check = EmbeddingCheck(EmbeddingCheck.Params())
    t = time.perf_counter()
    out = check.run(ctx)
    _sync(device)
    check_s = time.perf_counter() - t
    print(f"sample: {len(ds)} rows, 4 layers, device {device}")
    print(f"  model sweep (peer)         {sweep_s:7.2f} s")
    print(f"  embedding check            {check_s:7.2f} s   ratio {check_s / sweep_s:5.1f}x sweep")
    print(f"  metrics {len(out.metrics)}, figures {len(out.figures)}, tables {len(out.tables)}")


def bench_random(n: int, dim: int, device: torch.device, whole_check: bool) -> None:
    from sklearn.metrics import silhouette_samples
    from sklearn.neighbors import NearestNeighbors

    from mmaudit.checks.embedding.check import EmbeddingCheck, analyse
    from mmaudit.checks.embedding.inputs import EmbeddingInputs
    from mmaudit.methods import neighbours as nb

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    label = rng.integers(0, 2, n)
    print(f"random: {n} x {dim}, device {device}")
    k = 10
    t = time.perf_counter()
    ours = nb.knn(x, k, device=device)
    _sync(device)
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    sk = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x)
    _, sk_idx = sk.kneighbors(x)
    sk_s = time.perf_counter() - t
    sk_idx = np.array([row[row != i][:k] for i, row in enumerate(sk_idx)])
    same = float(np.mean(np.sort(sk_idx, 1) == np.sort(ours.indices, 1)))
    print(
        f"  kNN k={k}: ours {ours_s:6.2f} s (block {ours.block}), sklearn brute {sk_s:6.2f} s,"
        f" speed-up {sk_s / ours_s:4.1f}x, same neighbour sets {same:.4f}"
    )
    m = min(n, 3000)
    sub = rng.choice(n, m, replace=False)
    t = time.perf_counter()
    sil = nb.silhouette_with_null(x[sub], [label[sub]], 0, rng, device=device)[0]
    _sync(device)
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    ref = silhouette_samples(x[sub], label[sub])
    sk_s = time.perf_counter() - t
    print(
        f"  silhouette on {m} rows: ours {ours_s:6.2f} s, sklearn {sk_s:6.2f} s, speed-up"
        f" {sk_s / ours_s:4.1f}x, max |diff| {np.abs(sil.per_row - ref).max():.1e}"
    )
    t = time.perf_counter()
    nb.silhouette_with_null(x[sub], [label[sub]], 100, rng, device=device)
    _sync(device)
    print(f"  silhouette + 100-permutation null on {m} rows: {time.perf_counter() - t:6.2f} s")
    if not whole_check:
        return
    inp = EmbeddingInputs(
        embeddings={"embedding": x},
        ids=np.array([f"r{i}" for i in range(n)]),
        target=label,
        class_names=["0", "1"],
        probs=rng.uniform(size=(n, 1)),
        attributes=pd.DataFrame(
            {"site": rng.choice(["A", "B", "C"], n), "age": rng.uniform(20, 90, n)}
        ),
        continuous={"age": None},
        groups=np.array([f"p{i // 2}" for i in range(n)]),
        device=device,
    )
    t = time.perf_counter()
    out = analyse(inp, EmbeddingCheck.Params())
    _sync(device)
    print(
        f"  whole check, default params: {time.perf_counter() - t:6.2f} s"
        f" ({len(out.metrics)} metrics, {len(out.figures)} figures)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-sample", action="store_true")
    ap.add_argument("--skip-check", action="store_true", help="only kNN and silhouette")
    args = ap.parse_args()
    device = _device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if not args.skip_sample:
        bench_sample(device)
    bench_random(args.n, args.dim, device, not args.skip_check)


if __name__ == "__main__":
    main()
