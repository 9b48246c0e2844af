"""Pixel attribution maps of the image input: Integrated Gradients and occlusion.

Both explain the same per-row score (``image_forward.target_scores``) through a
``forward(x)`` that takes a stack of image batches (chunk-major), so many points of a
path, or many occluded copies, travel in one forward.

* ``integrated_gradients``: chunked over the integration steps (Gauss-Legendre nodes)
  with a running fp32 sum, and the completeness delta ``sum(attr) - (f(x) - f(baseline))``;
  its usual baseline is the blurred image (``gaussian_blur``).
* ``occlusion_map``: sliding-window occlusion (optional: one forward per window).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mmaudit.methods.image_forward import target_scores
from mmaudit.methods.integrated_gradients import quadrature
from mmaudit.methods.memory_budget import MemoryBudget, split_rows


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` with reflect padding."""
    if sigma <= 0:
        return images
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    xs = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    k = torch.exp(-(xs**2) / (2 * sigma**2))
    k = (k / k.sum()).to(images.dtype)
    c = images.shape[1]
    x = F.pad(images, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


RowsForward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def integrated_gradients(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    baseline: torch.Tensor,
    cls: torch.Tensor,
    n_steps: int = 16,
    chunk: int = 8,
    column: int = 0,
    *,
    budget: MemoryBudget | None = None,
    forward_rows: RowsForward | None = None,
    module: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated Gradients (Sundararajan et al. 2017) and the completeness delta.

    ``forward(x)`` gives logits for ``x`` of shape (k*B, C, H, W), chunk-major. The path
    integral uses ``n_steps`` Gauss-Legendre nodes, ``chunk`` of them per forward/backward
    (so a chunk holds ``chunk * B`` images), accumulated in fp32. With a ``budget`` and
    ``forward_rows`` (``(images, batch rows) -> logits``), the images x nodes of one
    forward/backward are also capped by what fits the budget (recorded as ``image IG``):
    fewer nodes per pass, and the batch split when one node of every image does not fit
    (``module``: the model, whose weights are not a per-row cost).
    Returns the attribution (B, C, H, W) in fp32 and ``delta`` (B,) = sum(attr) -
    (f(x) - f(baseline)).
    """
    b = images.shape[0]
    base = baseline.expand_as(images).to(images.dtype)
    samples, points = b, max(1, chunk)
    if budget is not None and forward_rows is not None:

        def probe(k: int) -> torch.Tensor:
            rows = torch.zeros(k, dtype=torch.long, device=images.device)
            x = images[rows].detach().requires_grad_(True)
            target_scores(forward_rows(x, rows), cls[rows], column).sum()
            return x

        max_rows = budget.rows_per_chunk(
            "image IG", tuple(images.shape[1:]), probe, module or _module_of(forward)
        )
        samples, points = split_rows(b, n_steps, min(max_rows, b * max(1, chunk)))
    if samples >= b:
        attr = _ig_sub(forward, images, base, cls, n_steps, points, column)
    else:
        assert forward_rows is not None
        attr = torch.cat(
            [
                _ig_sub(sub_forward, images[rows], base[rows], cls[rows], n_steps, points, column)
                for rows, sub_forward in _row_chunks(b, samples, images.device, forward_rows)
            ]
        )
    with torch.no_grad():
        if samples >= b:
            ends = target_scores(forward(torch.cat([images, base])), cls.repeat(2), column)
        else:
            assert forward_rows is not None
            both = torch.cat([images, base])
            idx = torch.arange(b, device=images.device).repeat(2)
            ends = torch.cat(
                [
                    target_scores(
                        forward_rows(both[s : s + samples], idx[s : s + samples]),
                        cls.repeat(2)[s : s + samples],
                        column,
                    )  # fmt: skip
                    for s in range(0, 2 * b, samples)
                ]
            )
        ends = ends.float()
    delta = attr.sum(dim=(1, 2, 3)) - (ends[:b] - ends[b:])
    return attr, delta


def _row_chunks(
    b: int,
    samples: int,
    device: torch.device,
    forward_rows: RowsForward,
) -> list[tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]]:
    """The batch's rows in chunks of ``samples``, each with a forward over those rows only
    (``forward_rows`` told which batch rows the stacked copies of the chunk are)."""
    chunks = []
    for lo in range(0, b, samples):
        rows = torch.arange(lo, min(b, lo + samples), device=device)

        def sub_forward(x: torch.Tensor, r: torch.Tensor = rows) -> torch.Tensor:
            return forward_rows(x, r.repeat(x.shape[0] // len(r)))

        chunks.append((rows, sub_forward))
    return chunks


def _module_of(forward: Callable[..., torch.Tensor]) -> torch.nn.Module | None:
    """The model behind ``forward`` when it is one (its weights are not per-row costs)."""
    if isinstance(forward, torch.nn.Module):
        return forward
    adapter = getattr(forward, "adapter", None) or getattr(
        getattr(forward, "__self__", None), "adapter", None
    )
    return getattr(adapter, "module", None)


def _ig_sub(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    base: torch.Tensor,
    cls: torch.Tensor,
    n_steps: int,
    chunk: int,
    column: int,
) -> torch.Tensor:
    """IG of one (sub-)batch, ``chunk`` nodes per forward/backward, fp32 (B, C, H, W)."""
    b = images.shape[0]
    diff = images - base
    alphas, weights = quadrature(n_steps, "gausslegendre")
    total = torch.zeros(images.shape, dtype=torch.float32, device=images.device)
    for s in range(0, n_steps, chunk):
        a = torch.as_tensor(alphas[s : s + chunk], dtype=images.dtype, device=images.device)
        w = torch.as_tensor(weights[s : s + chunk], dtype=torch.float32, device=images.device)
        k = a.shape[0]
        x = (base[None] + a.view(-1, 1, 1, 1, 1) * diff[None]).reshape(k * b, *images.shape[1:])
        x.requires_grad_(True)
        score = target_scores(forward(x), cls.repeat(k), column)
        (g,) = torch.autograd.grad(score.sum(), x)
        total += (g.float().view(k, *images.shape) * w.view(-1, 1, 1, 1, 1)).sum(0)
    return total * diff.float()


def occlusion_map(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    fill: torch.Tensor,
    cls: torch.Tensor,
    window: int,
    stride: int,
    chunk: int = 8,
    column: int = 0,
    *,
    budget: MemoryBudget | None = None,
    forward_rows: RowsForward | None = None,
    module: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Sliding-window occlusion (Zeiler & Fergus 2014): the drop of the target score when a
    ``window`` square is replaced by ``fill``, averaged over the windows covering a pixel.
    ``(B, H, W)``; costs one forward per window position (``chunk`` positions at a time;
    with a ``budget`` and ``forward_rows``, as many images x positions as fit it, the
    batch split when one position of every image does not: recorded as ``occlusion map``).
    """
    b, _, h, w = images.shape
    if budget is not None and forward_rows is not None:

        def probe(k: int) -> torch.Tensor:
            rows = torch.zeros(k, dtype=torch.long, device=images.device)
            x = images[rows]
            forward_rows(x, rows)
            return x

        max_rows = budget.rows_per_chunk(
            "occlusion map",
            tuple(images.shape[1:]),
            probe,
            module or _module_of(forward),
            grad=False,
        )
        samples, chunk = split_rows(b, 10**9, min(max_rows, b * max(1, chunk)))
        if samples < b:
            fills = fill.expand_as(images)
            return torch.cat(
                [
                    occlusion_map(
                        sub_forward, images[rows], fills[rows], cls[rows], window, stride, 1, column
                    )
                    for rows, sub_forward in _row_chunks(b, samples, images.device, forward_rows)
                ]
            )
    fill = fill.expand_as(images)
    rows = list(range(0, max(h - window, 0) + 1, stride))
    cols = list(range(0, max(w - window, 0) + 1, stride))
    if rows[-1] + window < h:
        rows.append(h - window)
    if cols[-1] + window < w:
        cols.append(w - window)
    boxes = [(r, c) for r in rows for c in cols]
    with torch.no_grad():
        base = target_scores(forward(images), cls, column).float()
        total = torch.zeros(b, h, w, device=images.device)
        count = torch.zeros(h, w, device=images.device)
        for s in range(0, len(boxes), chunk):
            part = boxes[s : s + chunk]
            xs = images.repeat(len(part), 1, 1, 1)
            for j, (r, c) in enumerate(part):
                sl = slice(j * b, (j + 1) * b)
                xs[sl, :, r : r + window, c : c + window] = fill[
                    :, :, r : r + window, c : c + window
                ]
            scores = target_scores(forward(xs), cls.repeat(len(part)), column).float()
            drops = (base.repeat(len(part)) - scores).view(len(part), b)
            for j, (r, c) in enumerate(part):
                total[:, r : r + window, c : c + window] += drops[j].view(-1, 1, 1)
                count[r : r + window, c : c + window] += 1
    return total / count.clamp_min(1)
