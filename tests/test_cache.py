"""InferenceCache: one sweep, memoised ablations, encoder-output reuse equal to input-level runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import byo_model_config, tiny_config

from mmaudit.cache import InferenceCache


@pytest.fixture()
def cache(tiny_manifest: Path, tiny_weights: Path, write_config) -> InferenceCache:
    from mmaudit.config import load_config
    from mmaudit.data import build_dataset
    from mmaudit.model import load_model

    path = write_config(tiny_config(tiny_manifest, byo_model_config(tiny_weights / "tiny.pt")))
    cfg = load_config(path)
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    c = InferenceCache(adapter, ds, batch_size=16, seed=0)
    c.request_layers(["embedding", "image", "tabular"])
    return c


def test_encoder_level_permute_equals_input_level_permute(cache: InferenceCache) -> None:
    for m in ("image", "tabular"):
        at_input = cache.ablated({m: "permute"}, level="input").logits
        at_encoder = cache.ablated({m: "permute"}, level="encoder").logits
        assert np.allclose(at_input, at_encoder, atol=1e-5)
        assert not np.allclose(at_input, cache.sweep().logits)


def test_ablations_are_memoised(cache: InferenceCache) -> None:
    cache.sweep()
    calls = cache.model_calls
    cache.ablated({"tabular": "zero"})
    assert cache.model_calls == calls + 3
    cache.ablated({"tabular": "zero"})
    assert cache.model_calls == calls + 3
    assert cache.ablated({}).logits is cache.sweep().logits


def test_zero_tabular_at_input_equals_zero_at_encoder_input(cache: InferenceCache) -> None:
    """Standardised labs set to 0 are the dataset mean; the encoder output of that is constant."""
    out = cache.ablated({"tabular": "zero"}, level="input").logits
    emb = cache.embeddings("tabular")
    assert emb.shape == (48, 4)
    tab = cache.adapter.module.tab
    const = tab.bias.detach().numpy()
    values = {**{m: cache.embeddings(m) for m in ("image",)}, "tabular": np.tile(const, (48, 1))}
    import torch

    with torch.no_grad():
        fused = torch.relu(
            cache.adapter.module.fuse(
                torch.cat(
                    [torch.from_numpy(values["image"]), torch.from_numpy(values["tabular"])], 1
                )
            )
        )
        expected = cache.adapter.module.out(fused).numpy()
    assert np.allclose(out, expected, atol=1e-5)


def test_logits_with_cached_embedding_equal_base(cache: InferenceCache) -> None:
    base = cache.sweep().logits
    again = cache.logits_with_layer("embedding", cache.embeddings("embedding"), key="identity")
    assert np.allclose(base, again, atol=1e-6)
    zero = cache.logits_with_layer("embedding", np.zeros_like(cache.embeddings("embedding")))
    assert np.allclose(zero, cache.adapter.module.out.bias.detach().numpy(), atol=1e-6)
    assert cache.adapter.hook_count() == 0


def test_map_batches_runs_with_grad_in_order(cache: InferenceCache) -> None:
    import torch

    def grad_norm(batch):  # type: ignore[no-untyped-def]
        image = batch.image.clone().requires_grad_(True)
        logits = cache.adapter.logits(batch.replace(image=image))
        (grad,) = torch.autograd.grad(logits.sum(), image)
        return batch.index.numpy(), grad.flatten(1).norm(dim=1).numpy()

    out = cache.map_batches(grad_norm, grad=True)
    order = np.concatenate([o[0] for o in out])
    assert order.tolist() == list(range(48))
    assert np.all(np.concatenate([o[1] for o in out]) > 0)
