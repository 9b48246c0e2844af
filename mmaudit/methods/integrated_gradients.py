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
at a time), and the weighted gradient sum is kept in fp32. Gauss-Legendre nodes (the
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


def _tile(t: torch.Tensor, copies: int) -> torch.Tensor:
    return t.repeat(copies, *([1] * (t.dim() - 1)))


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
) -> dict[str, torch.Tensor]:
    """IG of ``score_fn`` w.r.t. the outputs of every layer in ``layers``, all at once.

    Args:
        adapter: the model.
        batch: B samples on the device.
        layers: layer name -> ``(x, baseline)``; ``x`` is (B, ...), the baseline (B, ...)
            or broadcastable (1, ...). The path moves every named layer together.
        score_fn: the scalar per row whose attribution is wanted (e.g. a target logit).
        n_steps: quadrature points on the path.
        steps_per_pass: points evaluated in one forward + backward (B * this rows).
        method: ``gausslegendre`` or ``riemann_trapezoid``.
        fixed: layer name -> (B, ...) outputs held constant (e.g. cached encoder outputs
            of the other modalities, so those encoders never run).

    Returns:
        layer name -> (B, ...) fp32 attributions; ``sum`` over all of them per sample is
        ``F(x) - F(baseline)`` up to the quadrature error.
    """
    alphas, weights = quadrature(n_steps, method)
    n = len(batch)
    device = next(iter(layers.values()))[0].device
    diffs: dict[str, torch.Tensor] = {}
    starts: dict[str, torch.Tensor] = {}
    for name, (x, b) in layers.items():
        x32 = x.detach().float()
        b32 = b.detach().float().to(x32.device).expand_as(x32)
        diffs[name] = x32 - b32
        starts[name] = b32
    total = {name: torch.zeros_like(d) for name, d in diffs.items()}
    chunk = max(1, int(steps_per_pass))
    for lo in range(0, len(alphas), chunk):
        a = torch.as_tensor(alphas[lo : lo + chunk], dtype=torch.float32, device=device)
        w = torch.as_tensor(weights[lo : lo + chunk], dtype=torch.float32, device=device)
        copies = len(a)
        big = expand_batch(batch, copies)
        alpha_rows = a.repeat_interleave(n)
        leaves: dict[str, torch.Tensor] = {}
        for name in layers:
            shape = (-1,) + (1,) * (diffs[name].dim() - 1)
            point = _tile(starts[name], copies) + alpha_rows.view(shape) * _tile(
                diffs[name], copies
            )
            leaves[name] = point.detach().requires_grad_(True)
        supplies: dict[str, Callable[[], torch.Tensor]] = {
            name: (lambda t=leaf: t) for name, leaf in leaves.items()
        }
        for name, t in (fixed or {}).items():
            tiled = _tile(t.detach(), copies)
            supplies[name] = lambda t=tiled: t
        with torch.enable_grad(), substituted(adapter, supplies):
            score = score_fn(adapter.logits(big), big).float().sum()
            grads = torch.autograd.grad(score, list(leaves.values()), allow_unused=True)
        for name, g in zip(leaves, grads, strict=True):
            if g is None:
                continue
            g = g.float().view(copies, n, *diffs[name].shape[1:])
            total[name] += torch.einsum("k,k...->...", w, g)
    return {name: diffs[name] * total[name] for name in layers}
