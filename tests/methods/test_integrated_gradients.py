"""Integrated Gradients at layer outputs against analytic answers.

For ``F(z) = sum_i c_i z_i^2`` with ``z`` the output of a substituted layer, IG from 0 is
exactly ``c_i x_i^2`` (the path integral of ``2 c_i a x_i`` times ``x_i``); results must
not depend on how samples are batched or steps chunked.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mmaudit.engine.adapter import ModelAdapter
from mmaudit.engine.data import Batch
from mmaudit.methods.integrated_gradients import (
    expand_batch,
    layer_integrated_gradients,
    quadrature,
    scores_with_layers,
)

C = torch.tensor([1.0, -2.0, 0.5])


class Quadratic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(3, 3)
        self.other = nn.Linear(3, 1)

    def forward(self, tabular: torch.Tensor) -> torch.Tensor:
        z = self.enc(tabular)
        return (C * z * z).sum(1, keepdim=True) + self.other(tabular)


def adapter() -> ModelAdapter:
    torch.manual_seed(0)
    return ModelAdapter(
        Quadratic(),
        source="test",
        modalities=("tabular",),
        keywords={"tabular": "tabular"},
        layers={"tabular": "enc", "other": "other"},
        detected={},
        device=torch.device("cpu"),
    )


def batch(x: torch.Tensor) -> Batch:
    n = x.shape[0]
    return Batch(
        index=torch.arange(n),
        present=torch.ones(n, 1, dtype=torch.bool),
        target=torch.zeros(n, dtype=torch.long),
        tabular=x,
        modalities=("tabular",),
    )


def score(logits: torch.Tensor, _b: Batch) -> torch.Tensor:
    return logits[:, 0]


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_quadrature_weights(method: str) -> None:
    alphas, weights = quadrature(8, method)  # type: ignore[arg-type]
    assert weights.sum() == pytest.approx(1.0)
    assert ((alphas >= 0) & (alphas <= 1)).all()
    if method == "gausslegendre":  # exact for polynomials up to degree 2n - 1
        assert (weights * alphas**15).sum() == pytest.approx(1 / 16)


def test_ig_is_exact_complete_and_invariant_to_batching_and_chunking() -> None:
    ad = adapter()
    x = torch.randn(5, 3)
    z = torch.randn(5, 3)  # the layer output we attribute (substituted, not computed)
    fixed = {"other": torch.zeros(5, 1)}
    b = batch(x)
    attr = layer_integrated_gradients(
        ad, b, {"tabular": (z, torch.zeros(1, 3))}, score, n_steps=4, steps_per_pass=4, fixed=fixed
    )["tabular"]
    assert torch.allclose(attr, C * z * z, atol=1e-5)
    f_x = scores_with_layers(ad, b, {"tabular": z, "other": torch.zeros(5, 1)}, score)
    f_0 = scores_with_layers(
        ad, b, {"tabular": torch.zeros(5, 3), "other": torch.zeros(5, 1)}, score
    )
    assert torch.allclose(attr.sum(1), f_x - f_0, atol=1e-5)
    one_step_passes = layer_integrated_gradients(
        ad, b, {"tabular": (z, torch.zeros(1, 3))}, score, n_steps=4, steps_per_pass=1, fixed=fixed
    )["tabular"]
    assert torch.allclose(one_step_passes, attr, atol=1e-6)
    for i in range(5):
        single = layer_integrated_gradients(
            ad,
            batch(x[i : i + 1]),
            {"tabular": (z[i : i + 1], torch.zeros(1, 3))},
            score,
            n_steps=4,
            fixed={"other": torch.zeros(1, 1)},
        )["tabular"]
        assert torch.allclose(single[0], attr[i], atol=1e-6)
    assert ad.hook_count() == 0
    assert isinstance(ad.module.enc, nn.Linear)  # substitution undone


def test_ig_of_several_layers_sums_to_the_whole_change() -> None:
    ad = adapter()
    x = torch.randn(4, 3)
    z = torch.randn(4, 3)
    o = torch.randn(4, 1)
    b = batch(x)
    layers = {"tabular": (z, torch.zeros(1, 3)), "other": (o, torch.zeros(1, 1))}
    attr = layer_integrated_gradients(ad, b, layers, score, n_steps=6)
    f_x = scores_with_layers(ad, b, {"tabular": z, "other": o}, score)
    f_0 = scores_with_layers(
        ad, b, {"tabular": torch.zeros(4, 3), "other": torch.zeros(4, 1)}, score
    )
    total = attr["tabular"].sum(1) + attr["other"].sum(1)
    assert torch.allclose(total, f_x - f_0, atol=1e-5)
    assert torch.allclose(attr["other"][:, 0], o[:, 0], atol=1e-6)


def test_expand_batch_orders_copies_step_major() -> None:
    b = batch(torch.arange(6.0).view(2, 3))
    big = expand_batch(b, 3)
    assert big.index.tolist() == [0, 1, 0, 1, 0, 1]
    assert np.array_equal(big.tabular[2].numpy(), b.tabular[0].numpy())
