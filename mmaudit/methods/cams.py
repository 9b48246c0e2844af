"""Class activation maps (Grad-CAM, HiResCAM, LayerCAM) from one forward and one backward.

Why batched this way: the target layers' outputs are captured with the adapter's hooks
and ``torch.autograd.grad`` is taken with respect to them only, so no parameter gradient
is ever computed and every CAM variant comes from the same activations and gradients --
one forward and one backward per batch, whatever the number of methods.

Token layers (ViT-style, ``(B, T, C)``) are reshaped to their patch grid, dropping the
class / register tokens (``grid_size`` / ``num_prefix_tokens`` of the image encoder when
it has them, a square-grid inference otherwise); NHWC maps (Swin-like) are permuted.
Maps stay on the model's device at the layer's resolution; ``upsample`` brings them to
the image's.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmaudit.methods.image_forward import target_scores
from mmaudit.methods.memory_budget import MemoryBudget

if TYPE_CHECKING:
    from mmaudit.engine.adapter import ModelAdapter


CamMethod = Literal["gradcam", "hirescam", "layercam"]
CAM_METHODS: tuple[str, ...] = ("gradcam", "hirescam", "layercam")
Layout = Literal["NCHW", "NHWC", "NLC"]


# --------------------------------------------------------------------------- grids


@dataclass(frozen=True)
class GridInfo:
    """How to turn a hooked layer's output into a ``(B, C, H, W)`` map.

    ``grid``: (rows, cols) of the patch grid of token layers (None: infer a square);
    ``prefix``: class / register tokens in front of the patch tokens; ``layout``: the
    layout of 4-D outputs (``NHWC`` for Swin-like backbones).
    """

    grid: tuple[int, int] | None = None
    prefix: int = 0
    layout: Layout = "NCHW"


def grid_info(adapter: ModelAdapter) -> GridInfo:
    """The image encoder's grid facts when it exposes them (built-in family), else defaults."""
    enc: nn.Module | None = None
    if "image" in adapter.layers:
        with contextlib.suppress(AttributeError):
            enc = adapter.get("image")
    if enc is None:
        enc = getattr(adapter.module, "image_encoder", None)
    if enc is None:
        return GridInfo()
    grid = getattr(enc, "grid_size", None)
    prefix = int(getattr(enc, "num_prefix_tokens", 0) or 0)
    layout = getattr(enc, "feature_layout", "NCHW")
    g = (int(grid[0]), int(grid[1])) if grid is not None else None
    return GridInfo(g, prefix, "NHWC" if layout == "NHWC" else "NCHW")


def infer_token_grid(n_tokens: int, max_prefix: int = 8) -> tuple[tuple[int, int], int]:
    """(side, side) and the prefix count such that ``n_tokens - prefix`` is a square."""
    for prefix in range(0, max_prefix + 1):
        rest = n_tokens - prefix
        side = math.isqrt(max(rest, 0))
        if side > 0 and side * side == rest:
            return (side, side), prefix
    raise ValueError(
        f"cannot reshape {n_tokens} tokens to a square grid (with up to {max_prefix} prefix"
        " tokens); set the image encoder's grid_size / num_prefix_tokens"
    )


def to_grid(t: torch.Tensor, info: GridInfo = GridInfo()) -> torch.Tensor:
    """A hooked layer output as ``(B, C, H, W)``: conv maps as they are, NHWC permuted,
    token sequences ``(B, T, C)`` stripped of prefix tokens and reshaped to the grid."""
    if t.dim() == 4:
        return t.permute(0, 3, 1, 2) if info.layout == "NHWC" else t
    if t.dim() == 3:
        b, n, c = t.shape
        grid, prefix = info.grid, info.prefix
        if grid is None or grid[0] * grid[1] != n - prefix:
            grid, prefix = infer_token_grid(n)
        return t[:, prefix:].reshape(b, grid[0], grid[1], c).permute(0, 3, 1, 2)
    raise ValueError(
        f"the CAM layer gives a {t.dim()}-D output {tuple(t.shape)}; a conv map (B, C, H, W)"
        " or a token sequence (B, T, C) is needed"
    )


# --------------------------------------------------------------------------- CAMs


def cam_from(act: torch.Tensor, grad: torch.Tensor, method: str) -> torch.Tensor:
    """Un-normalised CAM ``(B, H, W)`` from activations and gradients ``(B, C, H, W)``.

    gradcam: ReLU(sum_c mean_hw(grad_c) * A_c) (Selvaraju et al. 2017);
    hirescam: ReLU(sum_c grad_c * A_c) (Draelos & Carin 2020), faithful per location;
    layercam: ReLU(sum_c ReLU(grad_c) * A_c) (Jiang et al. 2021).
    """
    if method == "gradcam":
        cam = (grad.mean(dim=(2, 3), keepdim=True) * act).sum(1)
    elif method == "hirescam":
        cam = (grad * act).sum(1)
    elif method == "layercam":
        cam = (grad.clamp_min(0) * act).sum(1)
    else:
        raise ValueError(f"unknown CAM method {method!r}; one of {CAM_METHODS}")
    return cam.clamp_min(0)


def compute_cams(
    adapter: ModelAdapter,
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    cls: torch.Tensor,
    layers: dict[str, str],
    info: GridInfo = GridInfo(),
    column: int = 0,
    *,
    budget: MemoryBudget | None = None,
    forward_rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """CAM maps for ``images`` at each method's layer resolution, and the logits.

    ``layers`` maps a CAM method to the layer (a ``layers:`` key or a dotted path) it
    reads. One forward with those layers captured, one ``autograd.grad`` of the summed
    target scores with respect to the captured outputs: every sample's map in the batch
    comes from that single backward (samples do not interact in eval mode).

    With a ``budget`` and ``forward_rows`` (``(images, batch rows) -> logits``: the model on
    the images of those rows of the batch), the batch is split into sub-batches whose
    forward + backward fit the budget (measured once per image shape, recorded as
    ``CAMs``); the maps are the same as from one pass.
    """
    n = images.shape[0]
    if budget is None or forward_rows is None:
        return _cams_once(adapter, forward, images, cls, layers, info, column)
    names = list(dict.fromkeys(layers.values()))

    def probe(k: int) -> torch.Tensor:
        rows = torch.zeros(k, dtype=torch.long, device=images.device)
        x = images[rows].detach().requires_grad_(True)
        with adapter.capture(names, detach=False):
            target_scores(forward_rows(x, rows), cls[rows], column).sum()
        return x

    key = (tuple(images.shape[1:]), tuple(names))
    step = budget.rows_per_chunk("CAMs", key, probe, adapter.module)
    if step >= n:
        return _cams_once(adapter, forward, images, cls, layers, info, column)
    maps: dict[str, list[torch.Tensor]] = {}
    logits = []
    for lo in range(0, n, step):
        rows = torch.arange(lo, min(n, lo + step), device=images.device)
        part, lg = _cams_once(
            adapter,
            lambda x, r=rows: forward_rows(x, r),
            images[rows],
            cls[rows],
            layers,
            info,
            column,
        )
        for m, c in part.items():
            maps.setdefault(m, []).append(c)
        logits.append(lg)
    return {m: torch.cat(c) for m, c in maps.items()}, torch.cat(logits)


def _cams_once(
    adapter: ModelAdapter,
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    cls: torch.Tensor,
    layers: dict[str, str],
    info: GridInfo,
    column: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The CAMs of ``images`` from one forward and one backward."""
    names = list(dict.fromkeys(layers.values()))
    x = images.detach().requires_grad_(True)  # a graph exists even with frozen weights
    with adapter.capture(names, detach=False) as store:
        logits = forward(x)
        acts = [store[n] for n in names]
    score = target_scores(logits, cls, column).sum()
    grads = torch.autograd.grad(score, acts, allow_unused=True)
    out: dict[str, torch.Tensor] = {}
    for method, layer in layers.items():
        i = names.index(layer)
        g = grads[i] if grads[i] is not None else torch.zeros_like(acts[i])
        a = to_grid(acts[i].detach().float(), info)
        out[method] = cam_from(a, to_grid(g.float(), info), method)
    return out, logits.detach()


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, h, w)`` maps bilinearly resized to ``size`` (as pytorch-grad-cam and captum do)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
