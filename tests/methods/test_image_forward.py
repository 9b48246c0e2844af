"""``ImageForward``: cached encoders swapped in give the full model's logits, and CAMs and
IG of one sample are the same alone as in a batch."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mmaudit.methods.cams import compute_cams, grid_info
from mmaudit.methods.image_attribution import gaussian_blur, integrated_gradients
from mmaudit.methods.image_forward import ImageForward

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_batch_size_invariance_of_cams_and_ig(sample_model: Any) -> None:
    adapter, batch = sample_model
    fixed = {}
    with torch.no_grad(), adapter.capture(["text", "tabular"]) as store:
        adapter.logits(batch)
        fixed = {k: store[k].clone() for k in ("text", "tabular")}
    runner = ImageForward(adapter, fixed)
    layers = {"gradcam": adapter.layers["gradcam"], "layercam": adapter.layers["gradcam"]}
    cls = torch.tensor([i % 2 for i in range(len(batch))])
    info = grid_info(adapter)
    # cached rows are indexed by the batch's dataset index: fixed holds rows 0..31 in order
    with runner.active():
        full, _ = compute_cams(adapter, lambda x: runner(batch, x), batch.image, cls, layers, info)
        ig_full, _ = integrated_gradients(
            lambda x: runner(batch, x), batch.image, gaussian_blur(batch.image, 4.0), cls, 8, 4
        )
        for i in (0, 7, 31):
            one = batch.select(slice(i, i + 1))
            single, _ = compute_cams(
                adapter, lambda x, one=one: runner(one, x), one.image, cls[i : i + 1], layers, info
            )
            for m in layers:
                torch.testing.assert_close(single[m][0], full[m][i], rtol=1e-4, atol=1e-5)
            ig_one, _ = integrated_gradients(
                lambda x, one=one: runner(one, x),
                one.image,
                gaussian_blur(one.image, 4.0),
                cls[i : i + 1],
                8,
                4,
            )
            scale = float(ig_full[i].abs().max())
            torch.testing.assert_close(ig_one[0], ig_full[i], rtol=1e-3, atol=1e-3 * scale)
    # the substituted encoders give the same logits as the full model
    with torch.no_grad():
        reference = adapter.logits(batch)
        with runner.active():
            torch.testing.assert_close(runner(batch, batch.image), reference)
    assert adapter.hook_count() == 0
    assert type(adapter.get("text")).__name__ == "TextEncoder"
