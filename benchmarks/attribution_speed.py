"""Samples per second of the ``attribution`` check's text IG and tabular SHAP on the sample.

Peers measured in the same run, on the same rows and device:

* the plain inference sweep (one forward per sample) -- how many sweeps one attribution
  costs;
* text IG: captum ``LayerIntegratedGradients`` on the same embedding layer, the same
  Gauss-Legendre steps and reference, and the same encoder cache (both substitute the
  cached image / lab encoder outputs, so only the text encoder, fusion and head run per
  step); the largest per-token difference between the two is printed as a correctness
  check;
* tabular SHAP: ``shap`` PermutationExplainer (the default) against captum GradientShap
  (the alternative); numba's one-off compile of the permutation explainer is timed apart.

    python benchmarks/attribution_speed.py [--samples 300] [--device auto] [--steps 32]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def context(samples: int, device: str, batch: int):  # type: ignore[no-untyped-def]
    from mmaudit.checks.contract import AuditContext
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

    cfg = load_config(ROOT / "configs" / "sample.yaml")
    cfg.runtime.max_samples = samples
    cfg.runtime.device = device
    cfg.runtime.progress = False
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    cache = InferenceCache(adapter, ds, batch_size=batch, seed=0)
    cache.request_layers([k for k in ("embedding", *ds.modalities) if k in adapter.layers])
    return AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ours_text_ig(ctx, rows: np.ndarray, steps: int, per_pass: int):  # type: ignore[no-untyped-def]
    from mmaudit.methods.attribution_target import Target
    from mmaudit.methods.text_attribution import (
        content_mask,
        find_text_embedding_layer,
        text_integrated_gradients,
    )

    ds, adapter = ctx.dataset, ctx.adapter
    layer = find_text_embedding_layer(adapter)
    score = Target.of(ctx).score_fn()
    fixed = {m: torch.from_numpy(ctx.cache.embeddings(m)) for m in ("image", "tabular")}

    def fn(b):  # type: ignore[no-untyped-def]
        content = content_mask(b.input_ids, b.attention_mask, ds.tokenizer)
        held = {m: t[b.index.cpu()].to(adapter.device) for m, t in fixed.items()}
        attr, _, _ = text_integrated_gradients(
            adapter, b, layer, score, content, ds.tokenizer.pad_token_id,
            n_steps=steps, steps_per_pass=per_pass, fixed=held,
        )  # fmt: skip
        return attr.detach().cpu().numpy()

    return np.concatenate(ctx.cache.map_batches(fn, grad=True, indices=rows))


def captum_text_ig(ctx, rows: np.ndarray, steps: int, per_pass: int):  # type: ignore[no-untyped-def]
    from captum.attr import LayerIntegratedGradients

    from mmaudit.methods.text_attribution import (
        baseline_ids,
        content_mask,
        find_text_embedding_layer,
    )

    ds, adapter = ctx.dataset, ctx.adapter
    model = adapter.module
    layer = model.get_submodule(find_text_embedding_layer(adapter))

    fixed = {m: torch.from_numpy(ctx.cache.embeddings(m)) for m in ("image", "tabular")}

    def forward(ids, mask, image, tabular, present, image_out, tabular_out):  # type: ignore[no-untyped-def]
        # the same encoder cache as ours: captum repeats the cached image / lab encoder
        # outputs with the other forward arguments, and those encoders never run
        with (
            adapter.substitute("image", lambda: image_out),
            adapter.substitute("tabular", lambda: tabular_out),
        ):
            out = model(
                image=image, input_ids=ids, attention_mask=mask, tabular=tabular, present=present
            )
        return out[:, 0]

    lig = LayerIntegratedGradients(forward, layer)

    def fn(b):  # type: ignore[no-untyped-def]
        content = content_mask(b.input_ids, b.attention_mask, ds.tokenizer)
        ref = baseline_ids(b.input_ids, content, ds.tokenizer.pad_token_id)
        attr = lig.attribute(
            b.input_ids,
            baselines=ref,
            additional_forward_args=(
                b.attention_mask,
                b.image,
                b.tabular,
                b.present,
                *(fixed[m][b.index.cpu()].to(adapter.device) for m in ("image", "tabular")),
            ),  # fmt: skip
            n_steps=steps,
            method="gausslegendre",
            internal_batch_size=len(b) * per_pass,
        )
        return (attr.sum(-1) * content).detach().cpu().numpy()

    return np.concatenate(ctx.cache.map_batches(fn, grad=True, indices=rows))


def timed(fn, device):  # type: ignore[no-untyped-def]
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--shap-samples", type=int, default=100)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--steps-per-pass", type=int, default=16)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()

    from mmaudit.methods.attribution_target import Target
    from mmaudit.methods.tabular_shap import gradient_shap, permutation_shap

    ctx = context(args.samples, args.device, args.batch_size)
    device = ctx.adapter.device
    ds = ctx.dataset
    _, sweep_s = timed(ctx.cache.sweep, device)
    n = len(ds)
    text_rows = np.flatnonzero(ds.present[:, ds.modalities.index("text")])
    results: dict[str, float] = {"sweep_samples_per_s": n / sweep_s}

    ours_text_ig(ctx, text_rows[:8], args.steps, args.steps_per_pass)  # warm-up
    ours, t_ours = timed(
        lambda: ours_text_ig(ctx, text_rows, args.steps, args.steps_per_pass), device
    )
    peer, t_peer = timed(
        lambda: captum_text_ig(ctx, text_rows, args.steps, args.steps_per_pass), device
    )
    results |= {
        "text_ig_samples_per_s": len(text_rows) / t_ours,
        "captum_lig_samples_per_s": len(text_rows) / t_peer,
        "text_ig_max_abs_diff_vs_captum": float(np.abs(ours - peer).max()),
    }

    tab_rows = np.flatnonzero(ds.present[:, ds.modalities.index("tabular")])[: args.shap_samples]
    rng = np.random.default_rng(0)
    bg = ds.tabular[np.sort(rng.choice(len(ds), size=50, replace=False))].numpy()
    fixed = {m: ctx.cache.embeddings(m) for m in ("image", "text")}
    score = Target.of(ctx).score_fn()
    _, jit = timed(
        lambda: permutation_shap(ctx.cache, tab_rows[:1], bg, score, fixed=fixed), device
    )
    perm, t_perm = timed(
        lambda: permutation_shap(ctx.cache, tab_rows, bg, score, fixed=fixed), device
    )
    grad, t_grad = timed(lambda: gradient_shap(ctx.cache, tab_rows, bg, score, fixed=fixed), device)
    results |= {
        "shap_permutation_samples_per_s": len(tab_rows) / t_perm,
        "shap_permutation_first_call_s": jit,
        "gradient_shap_samples_per_s": len(tab_rows) / t_grad,
        "gradient_vs_permutation_corr": float(
            np.corrcoef(perm.values.ravel(), grad.values.ravel())[0, 1]
        ),
    }

    where = f"{device}" + (
        f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    )
    print(
        f"attribution speed on {where}; {n} sample rows, {len(text_rows)} reports, IG {args.steps}"
        f" steps ({args.steps_per_pass} per pass), SHAP on {len(tab_rows)} rows, 50 background"
    )
    print(f"  inference sweep           {results['sweep_samples_per_s']:9.1f} samples/s")
    print(
        f"  text IG (mmaudit)         {results['text_ig_samples_per_s']:9.1f} samples/s"
        f"   = {results['text_ig_samples_per_s'] / results['sweep_samples_per_s']:.3f} x sweep"
    )
    print(
        f"  text IG (captum LIG)      {results['captum_lig_samples_per_s']:9.1f} samples/s"
        f"   mmaudit / captum = "
        f"{results['text_ig_samples_per_s'] / results['captum_lig_samples_per_s']:.2f}x;"
        f" max |diff| {results['text_ig_max_abs_diff_vs_captum']:.2e}"
    )
    print(
        f"  SHAP permutation (shap)   {results['shap_permutation_samples_per_s']:9.1f} samples/s"
        f"   (first call incl. numba compile {jit:.1f} s)"
    )
    ratio = results["gradient_shap_samples_per_s"] / results["shap_permutation_samples_per_s"]
    print(
        f"  GradientShap (captum)     {results['gradient_shap_samples_per_s']:9.1f} samples/s"
        f"   = {ratio:.1f}x permutation; r = {results['gradient_vs_permutation_corr']:.3f}"
    )
    if args.json:
        args.json.write_text(json.dumps({"device": where, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
