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


def integrated_gradients(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    baseline: torch.Tensor,
    cls: torch.Tensor,
    n_steps: int = 16,
    chunk: int = 8,
    column: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated Gradients (Sundararajan et al. 2017) and the completeness delta.

    ``forward(x)`` gives logits for ``x`` of shape (k*B, C, H, W), chunk-major. The path
    integral uses ``n_steps`` Gauss-Legendre nodes, ``chunk`` of them per forward/backward
    (so a chunk holds ``chunk * B`` images), accumulated in fp32. Returns the attribution
    (B, C, H, W) in fp32 and ``delta`` (B,) = sum(attr) - (f(x) - f(baseline)).
    """
    b = images.shape[0]
    base = baseline.expand_as(images).to(images.dtype)
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
    attr = total * diff.float()
    with torch.no_grad():
        ends = target_scores(forward(torch.cat([images, base])), cls.repeat(2), column).float()
    delta = attr.sum(dim=(1, 2, 3)) - (ends[:b] - ends[b:])
    return attr, delta


def occlusion_map(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    fill: torch.Tensor,
    cls: torch.Tensor,
    window: int,
    stride: int,
    chunk: int = 8,
    column: int = 0,
) -> torch.Tensor:
    """Sliding-window occlusion (Zeiler & Fergus 2014): the drop of the target score when a
    ``window`` square is replaced by ``fill``, averaged over the windows covering a pixel.
    ``(B, H, W)``; costs one forward per window position (``chunk`` positions at a time)."""
    b, _, h, w = images.shape
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
