"""Integrated Gradients at layer outputs, batched over samples and chunked over steps.

Why a module of its own: two checks' worth of attribution (token embeddings of the
report, and the per-modality encoder outputs for modality shares) are the same
computation -- the path integral of the gradient of a score along the straight line
from a baseline layer output ``b`` to the observed output ``x`` (Sundararajan et al.
2017): ``IG = (x - b) * integral_0^1 dF/dz (b + a (x - b)) da``. It holds the
completeness property ``sum(IG) = F(x) - F(b)``, which the callers report as a
convergence check.

How it runs: the named layers are *substituted* (``ModelAdapter.substitute``): the
modules that would produce them do not run, the interpolated points are fed in
instead, so only what follows them is computed. Several quadrature points (steps)
travel in one forward/backward as extra rows of one batch (``steps_per_pass`` of them
at a time, fewer, and the batch split, when a ``MemoryBudget`` says samples x points
do not fit), and the weighted gradient sum is kept in fp32. Gauss-Legendre nodes (the
default, as in captum) are far more accurate than a Riemann sum for the same number of
steps on smooth networks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
import torch

from mmaudit.engine.adapter import ModelAdapter
from mmaudit.engine.data import Batch
from mmaudit.methods.memory_budget import MemoryBudget, split_rows

__all__ = [
    "ScoreFn",
    "expand_batch",
    "layer_integrated_gradients",
    "quadrature",
    "scores_with_layers",
    "substituted",
]

#: logits (R, K) and the batch they came from -> one score per row (R,)
ScoreFn = Callable[[torch.Tensor, Batch], torch.Tensor]
Quadrature = Literal["gausslegendre", "riemann_trapezoid"]


def quadrature(n_steps: int, method: Quadrature = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``alpha`` in [0, 1] and weights (summing to 1) for ``n_steps`` path points."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n_steps)
        return (x + 1.0) / 2.0, w / 2.0
    if method == "riemann_trapezoid":
        if n_steps == 1:
            return np.array([0.5]), np.array([1.0])
        alphas = np.linspace(0.0, 1.0, n_steps)
        weights = np.full(n_steps, 1.0 / (n_steps - 1))
        weights[[0, -1]] /= 2.0
        return alphas, weights
    raise ValueError(f"unknown quadrature {method!r}")


def expand_batch(batch: Batch, copies: int) -> Batch:
    """``copies`` stacked copies of ``batch``: row ``k * B + i`` is sample ``i``."""
    rows = torch.arange(len(batch), device=batch.index.device).repeat(copies)
    return batch.select(rows)


@contextlib.contextmanager
def substituted(
    adapter: ModelAdapter, supplies: dict[str, Callable[[], torch.Tensor]]
) -> Iterator[None]:
    """Every named layer returns its supply instead of running (all restored on exit)."""
    with contextlib.ExitStack() as stack:
        for name, fn in supplies.items():
            stack.enter_context(adapter.substitute(name, fn))
        yield


def scores_with_layers(
    adapter: ModelAdapter,
    batch: Batch,
    outputs: dict[str, torch.Tensor],
    score_fn: ScoreFn,
) -> torch.Tensor:
    """Scores (B,) when each named layer outputs the given (B, ...) tensor; no gradient."""
    supplies = {name: (lambda t=t: t) for name, t in outputs.items()}
    with torch.no_grad(), substituted(adapter, supplies):
        return score_fn(adapter.logits(batch), batch).float()


def layer_integrated_gradients(
    adapter: ModelAdapter,
    batch: Batch,
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]],
    score_fn: ScoreFn,
    *,
    n_steps: int = 32,
    steps_per_pass: int = 16,
    method: Quadrature = "gausslegendre",
    fixed: dict[str, torch.Tensor] | None = None,
    budget: MemoryBudget | None = None,
    pass_name: str = "layer IG",
) -> dict[str, torch.Tensor]:
    """IG of ``score_fn`` w.r.t. the outputs of every layer in ``layers``, all at once.

    Args:
        adapter: the model.
        batch: B samples on the device.
        layers: layer name -> ``(x, baseline)``; ``x`` is (B, ...), the baseline (B, ...)
            or broadcastable (1, ...). The path moves every named layer together.
        score_fn: the scalar per row whose attribution is wanted (e.g. a target logit).
        n_steps: quadrature points on the path.
        steps_per_pass: at most this many points in one forward + backward (B * this rows).
        method: ``gausslegendre`` or ``riemann_trapezoid``.
        fixed: layer name -> (B, ...) outputs held constant (e.g. cached encoder outputs
            of the other modalities, so those encoders never run).
        budget: when given, the rows (samples x points) of one forward + backward are also
            capped by what fits it (measured once per ``pass_name`` and input shape); the
            batch is then split into sub-batches and the points into chunks. The result
            does not depend on the split (up to float summation order).
        pass_name: the name the budget records its plan under.

    Returns:
        layer name -> (B, ...) fp32 attributions; ``sum`` over all of them per sample is
        ``F(x) - F(baseline)`` up to the quadrature error.
    """
    alphas, weights = quadrature(n_steps, method)
    n = len(batch)
    diffs: dict[str, torch.Tensor] = {}
    starts: dict[str, torch.Tensor] = {}
    for name, (x, b) in layers.items():
        x32 = x.detach().float()
        b32 = b.detach().float().to(x32.device).expand_as(x32)
        diffs[name] = x32 - b32
        starts[name] = b32
    held = {name: t.detach() for name, t in (fixed or {}).items()}
    max_rows = n * max(1, int(steps_per_pass))
    if budget is not None:

        def probe(k: int) -> list[torch.Tensor]:
            rows = torch.zeros(k, dtype=torch.long, device=batch.index.device)
            alpha = torch.full((k,), 0.5, device=next(iter(diffs.values())).device)
            leaves = _points(starts, diffs, rows, alpha)
            _path_score(adapter, batch.select(rows), leaves, held, rows, score_fn)
            return list(leaves.values())

        key = (_row_shapes(batch), tuple((k, tuple(d.shape[1:])) for k, d in diffs.items()))
        max_rows = min(max_rows, budget.rows_per_chunk(pass_name, key, probe, adapter.module))
    samples, points = split_rows(n, len(alphas), max_rows)
    total = {name: torch.zeros_like(d) for name, d in diffs.items()}
    for s0 in range(0, n, samples):
        sub = torch.arange(s0, min(n, s0 + samples), device=batch.index.device)
        m = len(sub)
        for lo in range(0, len(alphas), points):
            device = next(iter(diffs.values())).device
            a = torch.as_tensor(alphas[lo : lo + points], dtype=torch.float32, device=device)
            w = torch.as_tensor(weights[lo : lo + points], dtype=torch.float32, device=device)
            copies = len(a)
            rows = sub.repeat(copies)  # chunk-major: row k * m + i is sample sub[i]
            leaves = _points(starts, diffs, rows, a.repeat_interleave(m))
            score = _path_score(adapter, batch.select(rows), leaves, held, rows, score_fn)
            with torch.enable_grad():
                grads = torch.autograd.grad(score, list(leaves.values()), allow_unused=True)
            for name, g in zip(leaves, grads, strict=True):
                if g is None:
                    continue
                g = g.float().view(copies, m, *diffs[name].shape[1:])
                total[name][s0 : s0 + m] += torch.einsum("k,k...->...", w, g)
    return {name: diffs[name] * total[name] for name in layers}


def _points(
    starts: dict[str, torch.Tensor],
    diffs: dict[str, torch.Tensor],
    rows: torch.Tensor,
    alpha: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Leaf tensors of the path points ``start + alpha * diff`` for samples ``rows``."""
    leaves = {}
    for name, d in diffs.items():
        shape = (-1,) + (1,) * (d.dim() - 1)
        r = rows.to(d.device)
        point = starts[name][r] + alpha.to(d.device).view(shape) * d[r]
        leaves[name] = point.detach().requires_grad_(True)
    return leaves


def _path_score(
    adapter: ModelAdapter,
    big: Batch,
    leaves: dict[str, torch.Tensor],
    fixed: dict[str, torch.Tensor],
    rows: torch.Tensor,
    score_fn: ScoreFn,
) -> torch.Tensor:
    """The summed score of the rows of ``big`` with the layers fed ``leaves`` (grad on)."""
    supplies: dict[str, Callable[[], torch.Tensor]] = {
        name: (lambda t=leaf: t) for name, leaf in leaves.items()
    }
    for name, t in fixed.items():
        picked = t[rows.to(t.device)]
        supplies[name] = lambda t=picked: t
    with torch.enable_grad(), substituted(adapter, supplies):
        return score_fn(adapter.logits(big), big).float().sum()


def _row_shapes(batch: Batch) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The per-row shape of every tensor input of ``batch`` (a memory plan's key)."""
    from dataclasses import fields

    shapes = []
    for f in fields(batch):
        v = getattr(batch, f.name)
        if isinstance(v, torch.Tensor):
            shapes.append((f.name, tuple(v.shape[1:])))
    return tuple(shapes)
