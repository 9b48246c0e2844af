"""The memory budget: measured bytes against a hand count, and chunking that changes nothing.

A stack of ``Linear(D, D)`` + ``ReLU`` layers saves, per row, the input of every Linear
(its weight is a parameter and is not counted) and the output of every ReLU (one storage
per layer, which the next Linear's saved input shares): ``(n_layers + 1) * D * 4`` bytes
in fp32, besides the probe's input and its gradient. A budget that fits only a few rows
must give the same Integrated Gradients as one pass over everything.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest
import torch
from torch import nn

from mmaudit.engine.adapter import ModelAdapter
from mmaudit.engine.data import Batch
from mmaudit.methods.integrated_gradients import layer_integrated_gradients
from mmaudit.methods.memory_budget import (
    BACKWARD_OVERHEAD,
    CPU_AUTO_BUDGET_MB,
    Footprint,
    MemoryBudget,
    auto_budget_mb,
    measure,
    resolve_budget_mb,
    split_rows,
)

D, LAYERS = 256, 4


def stack() -> nn.Sequential:
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for _ in range(LAYERS):
        mods += [nn.Linear(D, D), nn.ReLU()]
    return nn.Sequential(*mods)


def stack_probe(model: nn.Module) -> Callable[[int], torch.Tensor]:
    """``measure``'s probe for ``model``: a forward of ``k`` random rows under autograd."""

    def probe(k: int) -> torch.Tensor:
        x = torch.randn(k, D, requires_grad=True)
        model(x).sum()
        return x

    return probe


def test_measured_bytes_per_row_match_a_hand_count() -> None:
    model = stack()
    fp = measure(stack_probe(model), model)
    # saved: the leaf x (= Linear 1's input), each ReLU's output (= the next Linear's
    # input, one storage), so LAYERS + 1 vectors of D floats; plus x and its gradient
    by_hand = (LAYERS + 1) * D * 4 + 2 * D * 4
    assert fp.bytes_per_row == pytest.approx(by_hand, rel=0.02)
    assert fp.fixed_bytes < D * 4  # the weights are not counted


def _graph_tensors() -> int:
    """Tensors alive that belong to an autograd graph (have a ``grad_fn``)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is torch.Tensor and o.grad_fn is not None)


def test_measuring_a_gradient_pass_leaves_none_of_its_graph_alive() -> None:
    """The probes' graphs must die with the probes: a saved ReLU output handed back to
    autograd as-is refers to its own grad_fn, a cycle Python's gc cannot free, and kept
    every measured pass's activations (180 MB for ResNet-50 at 224 px) to the end of
    the audit."""
    model = stack()
    before = _graph_tensors()
    fp = measure(stack_probe(model), model)
    assert fp.bytes_per_row > 0
    assert _graph_tensors() == before


class Residual(nn.Module):
    """``b(relu(a(x))) + x``: at the add, the input, the ReLU output, ``b``'s output and the
    sum are alive at once (4 D floats per row), twice what any one leaf module holds."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(D, D), nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        return self.b(h) + x


def test_without_gradients_every_tensor_alive_at_once_is_counted() -> None:
    torch.manual_seed(0)
    model = Residual()

    def probe(k: int) -> torch.Tensor:
        x = torch.randn(k, D)
        model(x)
        return x

    fp = measure(probe, model, grad=False)
    # x (kept for the residual), relu(a(x)), b(h) and the sum: 4 D floats per row; the
    # weights (and the transposed views of them a Linear makes) are not counted
    assert fp.bytes_per_row == 4 * D * 4
    assert fp.fixed_bytes == 0


def test_without_gradients_a_view_or_in_place_result_is_not_new_memory() -> None:
    def probe(k: int) -> torch.Tensor:
        x = torch.randn(k, D)  # D floats per row
        x.relu_()  # in place: the same storage
        x.view(k, 2, D // 2).transpose(1, 2)  # a view: the same storage
        return x

    assert measure(probe, None, grad=False).bytes_per_row == D * 4


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


def test_held_copies_fit_their_share_of_the_budget_and_are_recorded() -> None:
    budget = MemoryBudget(1.0)  # 1 MiB
    # 10 KiB per row in half of 1 MiB: 51 rows (51 * 10 = 510 KiB <= 512 KiB < 520 KiB)
    assert budget.rows_held("in-fills", 10 * 1024, share=0.5) == 51
    assert budget.rows_held("in-fills", 10 * 1024) == 102
    assert budget.rows_held("huge", 2 * 2**20) == 1  # never fewer than one row
    assert (
        "in-fills: 10.0 KB live at once (no gradient) per row -> 102 rows at once"
        in budget.notes()[0]
    )


def test_a_share_of_the_budget_halves_the_rows_of_a_pass() -> None:
    model = Residual()

    def probe(k: int) -> torch.Tensor:
        x = torch.randn(k, D)
        model(x)
        return x

    budget = MemoryBudget(1.0)
    whole = budget.rows_per_chunk("p", ("D",), probe, model, grad=False)
    half = budget.rows_per_chunk("p", ("D",), probe, model, grad=False, share=0.5)
    assert whole == 2**20 // (4 * D * 4) == 256 and half == 128


def test_auto_budget_on_cpu_is_the_cpu_default_and_says_why() -> None:
    mb, why = auto_budget_mb("cpu")
    assert mb == CPU_AUTO_BUDGET_MB
    assert why.startswith("auto: 384 MB on cpu")
    assert resolve_budget_mb("auto", torch.device("cpu")) == CPU_AUTO_BUDGET_MB
    # a number stays that number; None (no budget) stays None
    assert resolve_budget_mb(96, "cpu") == 96.0
    assert resolve_budget_mb(None, "cpu") is None


def test_auto_budget_on_cuda_is_half_the_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    free = 40 * 2**30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * 2**30))
    mb, why = auto_budget_mb("cuda:0")
    assert mb == 20 * 1024
    assert "50% of the 40,960 MB free on cuda:0" in why
    # a nearly full device still gets the CPU default, not a budget of a few rows
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**28, 80 * 2**30))
    assert auto_budget_mb("cuda:0")[0] == CPU_AUTO_BUDGET_MB
