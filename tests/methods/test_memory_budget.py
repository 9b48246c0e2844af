"""The memory budget: measured bytes against a hand count, and chunking that changes nothing.

A stack of ``Linear(D, D)`` + ``ReLU`` layers saves, per row, the input of every Linear
(its weight is a parameter and is not counted) and the output of every ReLU (one storage
per layer, which the next Linear's saved input shares): ``(n_layers + 1) * D * 4`` bytes
in fp32, besides the probe's input and its gradient. A budget that fits only a few rows
must give the same Integrated Gradients as one pass over everything.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmaudit.engine.adapter import ModelAdapter
from mmaudit.engine.data import Batch
from mmaudit.methods.integrated_gradients import layer_integrated_gradients
from mmaudit.methods.memory_budget import (
    BACKWARD_OVERHEAD,
    Footprint,
    MemoryBudget,
    measure,
    split_rows,
)

D, LAYERS = 256, 4


def stack() -> nn.Sequential:
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for _ in range(LAYERS):
        mods += [nn.Linear(D, D), nn.ReLU()]
    return nn.Sequential(*mods)


def test_measured_bytes_per_row_match_a_hand_count() -> None:
    model = stack()

    def probe(k: int) -> torch.Tensor:
        x = torch.randn(k, D, requires_grad=True)
        model(x).sum()
        return x

    fp = measure(probe, model)
    # saved: the leaf x (= Linear 1's input), each ReLU's output (= the next Linear's
    # input, one storage), so LAYERS + 1 vectors of D floats; plus x and its gradient
    by_hand = (LAYERS + 1) * D * 4 + 2 * D * 4
    assert fp.bytes_per_row == pytest.approx(by_hand, rel=0.02)
    assert fp.fixed_bytes < D * 4  # the weights are not counted


def test_without_gradients_the_largest_live_step_is_counted() -> None:
    model = stack()

    def probe(k: int) -> torch.Tensor:
        x = torch.randn(k, 4 * D)[:, :D].contiguous()
        model(x)
        return x

    fp = measure(probe, model, grad=False)
    # one Linear or ReLU holds its input and output (2 D floats) + the probe input
    assert fp.bytes_per_row == pytest.approx(3 * D * 4, rel=0.02)


def test_rows_fit_the_budget_and_are_memoised() -> None:
    budget = MemoryBudget(1.0)  # 1 MiB
    calls = []
    model = stack()

    def probe(k: int) -> torch.Tensor:
        calls.append(k)
        x = torch.randn(k, D, requires_grad=True)
        model(x).sum()
        return x

    rows = budget.rows_per_chunk("test pass", ("shape",), probe, model)
    per_row = budget.plans["test pass"].footprint.bytes_per_row
    fixed = budget.plans["test pass"].footprint.fixed_bytes
    assert rows == int((2**20 - BACKWARD_OVERHEAD * fixed) // (BACKWARD_OVERHEAD * per_row))
    assert budget.rows_per_chunk("test pass", ("shape",), probe, model) == rows
    assert calls == [1, 2]  # measured once per pass and shape
    assert "1 MB" in budget.notes()[0] and f"{rows} rows" in budget.notes()[0]
    assert MemoryBudget(1e-6).rows_for(Footprint(10**6, 0)) == 1  # never below one row
    assert MemoryBudget(1.0).rows_for(Footprint(2**10, 0), grad=False) == 2**10


def test_split_rows() -> None:
    assert split_rows(64, 32, 64 * 16) == (64, 16)
    assert split_rows(64, 32, 100) == (64, 1)
    assert split_rows(64, 32, 10) == (10, 1)
    assert split_rows(3, 4, 10**6) == (3, 4)


class Deep(nn.Module):
    """logit = head(stack(enc(tabular))): a curved function of the encoder output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.enc = nn.Linear(3, D)
        self.body = stack()
        self.head = nn.Linear(D, 1)

    def forward(self, tabular: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(self.enc(tabular))))


def test_chunked_ig_equals_one_pass() -> None:
    ad = ModelAdapter(
        Deep(),
        source="test",
        modalities=("tabular",),
        keywords={"tabular": "tabular"},
        layers={"tabular": "enc"},
        detected={},
        device=torch.device("cpu"),
    )
    n = 12
    x = torch.randn(n, 3)
    b = Batch(
        index=torch.arange(n),
        present=torch.ones(n, 1, dtype=torch.bool),
        target=torch.zeros(n, dtype=torch.long),
        tabular=x,
        modalities=("tabular",),
    )
    with torch.no_grad():
        z = ad.module.enc(x)
    layers = {"tabular": (z, torch.zeros(1, D))}

    def score(logits: torch.Tensor, _b: Batch) -> torch.Tensor:
        return logits[:, 0]

    whole = layer_integrated_gradients(ad, b, layers, score, n_steps=16, steps_per_pass=16)
    tight = MemoryBudget(0.05)  # ~50 KB: a few rows of ~8 KB each
    chunked = layer_integrated_gradients(
        ad, b, layers, score, n_steps=16, steps_per_pass=16, budget=tight, pass_name="p"
    )
    rows = tight.plans["p"].rows_per_chunk
    assert 1 < rows < n  # the budget split the batch as well as the points
    assert torch.allclose(chunked["tabular"], whole["tabular"], atol=1e-6, rtol=1e-5)
    assert ad.hook_count() == 0
