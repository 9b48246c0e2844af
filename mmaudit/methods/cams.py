"""Saliency maps for the image input, batched, plus the map arithmetic the audit needs.

What lives here and why:

* CAM maps (Grad-CAM, HiResCAM, LayerCAM) from **one forward and one backward per
  batch**: the target layers' outputs are captured with the adapter's hooks and
  ``torch.autograd.grad`` is taken with respect to them only, so no parameter gradient
  is ever computed and every CAM variant comes from the same activations and gradients.
  Token layers (ViT-style, ``(B, T, C)``) are reshaped to their patch grid, dropping the
  class / register tokens (``grid_size`` / ``num_prefix_tokens`` of the image encoder
  when it has them, a square-grid inference otherwise).
* Integrated Gradients, chunked over the integration steps (Gauss-Legendre nodes) with a
  running fp32 sum, and the completeness delta ``sum(attr) - (f(x) - f(baseline))``.
* Sliding-window occlusion maps (optional, many forwards).
* ``ImageForward``: runs the model on replaced images of one batch with the other
  modalities held at their observed values. Where their encoder outputs are cached,
  those encoders are swapped for the cached rows and never run again.
* Region filling for "used, not only seen" tests (linear in-painting with noise, or a
  donor patch), per-sample location statistics (off-ROI share, border share, pointing
  game, relevance-rank accuracy, top-1 % concentration), the shifted-map null of a
  recurring hotspot, and the model-randomisation helpers of the Adebayo et al. (2018)
  sanity check (a grafted, randomised copy of the image encoder; Spearman and SSIM
  between maps).

Everything stays on the model's device; callers bring back per-sample numbers and
small thumbnails only.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmaudit.methods.integrated_gradients import quadrature

if TYPE_CHECKING:
    from mmaudit.engine.adapter import ModelAdapter
    from mmaudit.engine.data import Batch

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


# --------------------------------------------------------------------------- targets


def target_scores(logits: torch.Tensor, cls: torch.Tensor, column: int = 0) -> torch.Tensor:
    """The score explained for each row: the logit of class ``cls`` (several outputs), or,
    for one output (or a multilabel ``column``), the logit when ``cls`` is 1 and its
    negation when 0 (evidence for the negative decision)."""
    if logits.shape[1] == 1 or column > 0:
        z = logits[:, column]
        return torch.where(cls.to(z.device) == 1, z, -z)
    return logits.gather(1, cls.to(logits.device).long()[:, None])[:, 0]


# --------------------------------------------------------------------------- forward


def repeat_batch(batch: Batch, k: int, image: torch.Tensor | None = None) -> Batch:
    """``batch`` repeated ``k`` times along the batch axis (chunk-major), image replaced."""
    from dataclasses import fields

    changes: dict[str, object] = {}
    for f in fields(batch):
        v = getattr(batch, f.name)
        if isinstance(v, torch.Tensor) and k > 1:
            changes[f.name] = v.repeat(k, *([1] * (v.dim() - 1)))
    if image is not None:
        changes["image"] = image
    return batch.replace(**changes) if changes else batch


class ImageForward:
    """Run the model on replaced images of one batch, other modalities at observed values.

    ``fixed`` maps layer names (e.g. ``text``, ``tabular``) to their cached outputs for
    the whole dataset (N, ...), in dataset order. Inside ``active()`` those modules are
    swapped for the cached rows of the current batch (repeated as often as the image
    batch is larger than the batch), so they never run; without ``fixed`` the whole
    batch is repeated and the model runs in full.
    """

    def __init__(self, adapter: ModelAdapter, fixed: dict[str, torch.Tensor] | None = None) -> None:
        self.adapter = adapter
        self.fixed = fixed or {}
        self._rows: torch.Tensor | None = None
        self._device_cache: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def active(self) -> Iterator[ImageForward]:
        """Swap the fixed modules for their cached outputs while the context is open."""
        stack = contextlib.ExitStack()
        with stack:
            for name in self.fixed:
                stack.enter_context(self.adapter.substitute(name, self._supplier(name)))
            yield self
        self._device_cache.clear()

    def _supplier(self, name: str) -> Callable[[], torch.Tensor]:
        def supply() -> torch.Tensor:
            assert self._rows is not None, "ImageForward called outside __call__"
            full = self._device_cache.get(name)
            if full is None:
                full = self.fixed[name].to(self.adapter.device)
                self._device_cache[name] = full
            return full[self._rows]

        return supply

    def __call__(self, batch: Batch, images: torch.Tensor) -> torch.Tensor:
        """Logits (k*B, K) for ``images`` (k*B, C, H, W), chunk-major copies of ``batch``."""
        b = len(batch)
        if images.shape[0] % b:
            raise ValueError(f"{images.shape[0]} images for a batch of {b}")
        k = images.shape[0] // b
        self._rows = batch.index.to(self.adapter.device).repeat(k)
        try:
            return self.adapter.logits(repeat_batch(batch, k, images))
        finally:
            self._rows = None


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
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """CAM maps for ``images`` at each method's layer resolution, and the logits.

    ``layers`` maps a CAM method to the layer (a ``layers:`` key or a dotted path) it
    reads. One forward with those layers captured, one ``autograd.grad`` of the summed
    target scores with respect to the captured outputs: every sample's map in the batch
    comes from that single backward (samples do not interact in eval mode).
    """
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


# --------------------------------------------------------------------------- IG


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


# --------------------------------------------------------------------------- statistics


def positive_normalised(
    maps: torch.Tensor, eps: float = 1e-12
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive part of ``(B, H, W)`` maps divided by its sum, and the sums (0 = dead map)."""
    pos = maps.float().clamp_min(0)
    mass = pos.sum(dim=(1, 2))
    norm = pos / mass.clamp_min(eps).view(-1, 1, 1)
    return norm, mass


def border_band(size: tuple[int, int], fraction: float, device: torch.device | str) -> torch.Tensor:
    """Boolean ``(H, W)`` band of width ``fraction`` of each side along the image edge."""
    h, w = size
    bh, bw = max(1, round(fraction * h)), max(1, round(fraction * w))
    band = torch.ones(h, w, dtype=torch.bool, device=device)
    band[bh : h - bh, bw : w - bw] = False
    return band


def map_statistics(
    maps: torch.Tensor,
    roi: torch.Tensor | None = None,
    border: float = 0.1,
    top_fraction: float = 0.01,
) -> dict[str, torch.Tensor]:
    """Per-sample location statistics of ``(B, H, W)`` maps (positive part), all ``(B,)``.

    mass: total positive attribution (0: a dead map; its other statistics are NaN).
    border / border_chance: share of the mass in the edge band, and the band's area share.
    top: share of the mass in the top ``top_fraction`` of pixels (concentration).
    With ``roi`` (``(B, H, W)`` in {0, 1}, NaN where unknown): off_roi / off_roi_chance
    (share of mass outside, and the outside area share), pointing (the peak lies in the
    ROI) and rank_acc (share of the top-K pixels inside the ROI, K = ROI size).
    """
    b, h, w = maps.shape
    norm, mass = positive_normalised(maps)
    dead = mass <= 0
    nan = torch.tensor(float("nan"), device=maps.device)
    band = border_band((h, w), border, maps.device)
    flat = norm.reshape(b, -1)
    k_top = max(1, round(top_fraction * h * w))
    out = {
        "mass": mass,
        "border": torch.where(dead, nan, (norm * band).sum(dim=(1, 2))),
        "border_chance": band.float().mean().expand(b),
        "top": torch.where(dead, nan, flat.topk(k_top, dim=1).values.sum(1)),
    }
    if roi is not None:
        valid_roi = ~torch.isnan(roi).any(dim=(1, 2))
        inside = torch.nan_to_num(roi, nan=0.0) > 0.5
        area = inside.float().mean(dim=(1, 2))
        valid_roi &= (area > 0) & (area < 1)
        ok = valid_roi & ~dead
        off = (norm * (~inside)).sum(dim=(1, 2))
        peak = flat.argmax(dim=1)
        pointing = inside.reshape(b, -1).gather(1, peak[:, None])[:, 0].float()
        k = inside.reshape(b, -1).sum(1)
        order = flat.argsort(dim=1, descending=True, stable=True)
        hits = inside.reshape(b, -1).gather(1, order).float().cumsum(1)
        rank_acc = hits.gather(1, (k - 1).clamp_min(0)[:, None])[:, 0] / k.clamp_min(1)
        out["off_roi"] = torch.where(ok, off, nan)
        out["off_roi_chance"] = torch.where(valid_roi, 1.0 - area, nan)
        out["pointing"] = torch.where(ok, pointing, nan)
        out["rank_acc"] = torch.where(ok, rank_acc, nan)
    return out


def concentration(mean_map: torch.Tensor, top_fraction: float = 0.01) -> torch.Tensor:
    """Share of a map's mass in its top ``top_fraction`` pixels; works on ``(..., H, W)``."""
    flat = mean_map.reshape(*mean_map.shape[:-2], -1).clamp_min(0)
    k = max(1, round(top_fraction * flat.shape[-1]))
    return flat.topk(k, dim=-1).values.sum(-1) / flat.sum(-1).clamp_min(1e-12)


def shifted_null(
    maps: torch.Tensor,
    n_null: int,
    generator: torch.Generator,
    top_fraction: float = 0.01,
    chunk: int = 16,
    max_elements: int = 1 << 22,
) -> torch.Tensor:
    """Null distribution of the mean map's concentration when every sample's map is shifted
    circularly by its own random offset: what a dataset without a recurring location (but
    with the same per-map shapes) would give. ``maps`` (N, H, W), normalised; returns
    (n_null,). ``chunk`` replicates are gathered at once from the flattened maps, in blocks
    of samples of at most ``max_elements`` gathered pixels."""
    n, h, w = maps.shape
    flat = maps.reshape(1, n, h * w)
    rows0 = torch.arange(h).view(1, 1, h, 1)
    cols0 = torch.arange(w).view(1, 1, 1, w)
    # the shifted maps of ``block`` samples at a time: memory stays flat as N grows (the
    # gather indices are int64, 8 bytes per pixel per replicate per sample)
    block = max(1, max_elements // (chunk * h * w))
    out = []
    for start in range(0, n_null, chunk):
        r = min(chunk, n_null - start)
        dy = torch.randint(0, h, (r, n, 1, 1), generator=generator)
        dx = torch.randint(0, w, (r, n, 1, 1), generator=generator)
        total = torch.zeros(r, h * w, dtype=maps.dtype, device=maps.device)
        for b in range(0, n, block):
            e = min(n, b + block)
            idx = (((rows0 - dy[:, b:e]) % h) * w + (cols0 - dx[:, b:e]) % w).reshape(
                r, e - b, h * w
            )
            shifted = flat[:, b:e].expand(r, -1, -1).gather(2, idx.to(maps.device))
            total += shifted.sum(1)
        out.append(concentration((total / n).view(r, h, w), top_fraction))
    return torch.cat(out)


def peak_boxes(
    mean_map: torch.Tensor,
    bh: int,
    bw: int,
    forbidden: torch.Tensor | None = None,
    k: int = 1,
) -> list[tuple[int, int, float]]:
    """Up to ``k`` disjoint ``bh x bw`` boxes around the highest peaks of ``mean_map``
    (H, W) that touch no ``forbidden`` pixel: top-left corners and the share of the map's
    mass inside. Each box is centred on its peak as far as the image edge and the forbidden
    pixels allow; later boxes may not overlap earlier ones (non-maximum suppression)."""
    h, w = mean_map.shape
    blocked = torch.zeros(h, w, dtype=torch.bool) if forbidden is None else forbidden.cpu().clone()
    values = mean_map.float().cpu()
    total = float(values.clamp_min(0).sum()) or 1.0
    out: list[tuple[int, int, float]] = []
    rr = torch.arange(h - bh + 1).view(-1, 1).float()
    cc = torch.arange(w - bw + 1).view(1, -1).float()
    for _ in range(k):
        hit = F.max_pool2d(blocked[None, None].float(), (bh, bw), stride=1)[0, 0] > 0
        allowed = ~hit
        if not allowed.any():
            break
        # pixels inside at least one allowed box: where a box may still be centred
        reach = F.conv_transpose2d(allowed[None, None].float(), torch.ones(1, 1, bh, bw))[0, 0] > 0
        masked = values.masked_fill(~reach, float("-inf"))
        pr, pc = divmod(int(masked.argmax()), w)
        contains = (rr <= pr) & (rr + bh > pr) & (cc <= pc) & (cc + bw > pc) & allowed
        dist = (rr + bh / 2 - pr - 0.5).abs() + (cc + bw / 2 - pc - 0.5).abs()
        r0, c0 = divmod(int(dist.masked_fill(~contains, float("inf")).argmin()), w - bw + 1)
        mass = float(values[r0 : r0 + bh, c0 : c0 + bw].clamp_min(0).sum()) / total
        out.append((r0, c0, mass))
        blocked[r0 : r0 + bh, c0 : c0 + bw] = True
    return out


# --------------------------------------------------------------------------- occlusion fills


def box_mask(
    size: tuple[int, int], r0: torch.Tensor, c0: torch.Tensor, bh: int, bw: int
) -> torch.Tensor:
    """``(B, H, W)`` boolean boxes with top-left corners ``(r0, c0)`` and size ``(bh, bw)``."""
    h, w = size
    rr = torch.arange(h, device=r0.device).view(1, h, 1)
    cc = torch.arange(w, device=r0.device).view(1, 1, w)
    r0, c0 = r0.view(-1, 1, 1), c0.view(-1, 1, 1)
    return (rr >= r0) & (rr < r0 + bh) & (cc >= c0) & (cc < c0 + bw)


def linear_fill(
    images: torch.Tensor,
    r0: torch.Tensor,
    c0: torch.Tensor,
    bh: int,
    bw: int,
    noise: float = 1.0,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | None = None,
) -> torch.Tensor:
    """Replace a box per image by linear in-painting from its surroundings, plus noise.

    The fill is the transfinite (Coons) interpolation of the one-pixel ring around the box:
    linear between the rows above and below and between the columns left and right. A side
    on the image edge has no ring; the opposite side stands in for it. Gaussian noise with
    ``noise`` times the ring's standard deviation is added, so the patch carries texture
    rather than a smooth, out-of-distribution surface (in the spirit of ROAD's noisy
    linear imputation, Rong et al. 2022).

    ``seeds`` (one per image) draws each image's noise from its own generator, so an
    image's fill does not depend on the images batched with it (the same report at any
    batch size or world size); otherwise the noise of the whole batch comes from
    ``generator`` (or torch's global one).
    """
    b, c, h, w = images.shape
    dev = images.device
    idx = torch.arange(b, device=dev)
    r0 = r0.to(dev).long()
    c0 = c0.to(dev).long()
    cols = (c0[:, None] + torch.arange(bw, device=dev)[None]).clamp(0, w - 1)  # (B, bw)
    rows = (r0[:, None] + torch.arange(bh, device=dev)[None]).clamp(0, h - 1)  # (B, bh)

    def row_at(r: torch.Tensor) -> torch.Tensor:  # (B, C, bw)
        return images[idx[:, None], :, r.clamp(0, h - 1)[:, None], cols].permute(0, 2, 1)

    def col_at(cc: torch.Tensor) -> torch.Tensor:  # (B, C, bh)
        return images[idx[:, None], :, rows, cc.clamp(0, w - 1)[:, None]].permute(0, 2, 1)

    has_top, has_bot = r0 > 0, r0 + bh < h
    has_left, has_right = c0 > 0, c0 + bw < w
    top, bot = row_at(r0 - 1), row_at(r0 + bh)
    left, right = col_at(c0 - 1), col_at(c0 + bw)

    def pick(
        a: torch.Tensor,
        ok_a: torch.Tensor,
        other: torch.Tensor,
        ok_o: torch.Tensor,
        fallback: torch.Tensor,
    ) -> torch.Tensor:
        both = ok_a.view(-1, 1, 1)
        alt = torch.where(ok_o.view(-1, 1, 1), other, fallback)
        return torch.where(both, a, alt)

    ring_vals = []
    for side, ok in ((top, has_top), (bot, has_bot), (left, has_left), (right, has_right)):
        ring_vals.append((side * ok.view(-1, 1, 1), ok.float().view(-1, 1, 1) * side.shape[-1]))
    ring_sum = sum(v.sum(-1, keepdim=True) for v, _ in ring_vals)
    ring_n = sum(n for _, n in ring_vals).clamp_min(1)
    ring_mean = ring_sum / ring_n  # (B, C, 1)
    ring_sq = sum((v**2).sum(-1, keepdim=True) for v, _ in ring_vals) / ring_n
    ring_sd = (ring_sq - ring_mean**2).clamp_min(0).sqrt()
    fb_row = ring_mean.expand(-1, -1, bw)
    fb_col = ring_mean.expand(-1, -1, bh)
    top_v = pick(top, has_top, bot, has_bot, fb_row)
    bot_v = pick(bot, has_bot, top, has_top, fb_row)
    left_v = pick(left, has_left, right, has_right, fb_col)
    right_v = pick(right, has_right, left, has_left, fb_col)
    ty = ((torch.arange(bh, device=dev, dtype=images.dtype) + 1) / (bh + 1)).view(1, 1, bh, 1)
    tx = ((torch.arange(bw, device=dev, dtype=images.dtype) + 1) / (bw + 1)).view(1, 1, 1, bw)
    vert = (1 - ty) * top_v[:, :, None, :] + ty * bot_v[:, :, None, :]
    horiz = (1 - tx) * left_v[:, :, :, None] + tx * right_v[:, :, :, None]
    # corner values: the ring's diagonal pixels, taken from the same (possibly substituted)
    # sides as the edges, so that a bilinear surface is reproduced exactly
    top_r = torch.where(has_top, r0 - 1, r0 + bh)
    bot_r = torch.where(has_bot, r0 + bh, r0 - 1)
    left_c = torch.where(has_left, c0 - 1, c0 + bw)
    right_c = torch.where(has_right, c0 + bw, c0 - 1)
    rows_ok = has_top | has_bot
    cols_ok = has_left | has_right

    def corner(r: torch.Tensor, cc: torch.Tensor) -> torch.Tensor:  # (B, C, 1, 1)
        v = images[idx, :, r.clamp(0, h - 1), cc.clamp(0, w - 1)]
        v = torch.where((rows_ok & cols_ok).view(-1, 1), v, ring_mean[..., 0])
        return v[:, :, None, None]

    corners = (
        (1 - ty) * (1 - tx) * corner(top_r, left_c)
        + (1 - ty) * tx * corner(top_r, right_c)
        + ty * (1 - tx) * corner(bot_r, left_c)
        + ty * tx * corner(bot_r, right_c)
    )
    patch = vert + horiz - corners
    if noise > 0:
        if seeds is not None:
            if len(seeds) != b:
                raise ValueError(f"linear_fill: {len(seeds)} seeds for {b} images")
            eps = torch.stack(
                [
                    torch.randn(
                        patch.shape[1:],
                        generator=torch.Generator().manual_seed(int(s)),
                        dtype=torch.float32,
                    )
                    for s in seeds
                ]
            ).to(dev)
        else:
            eps = torch.randn(patch.shape, generator=generator, dtype=torch.float32).to(dev)
        patch = patch + noise * ring_sd[..., None] * eps.to(patch.dtype)
    out = images.clone()
    mask = box_mask((h, w), r0, c0, bh, bw)[:, None].expand(-1, c, -1, -1)
    full = torch.zeros_like(images)
    rr = rows[:, None, :, None].expand(-1, c, -1, bw)
    cc = cols[:, None, None, :].expand(-1, c, bh, -1)
    full[idx.view(-1, 1, 1, 1), torch.arange(c, device=dev).view(1, -1, 1, 1), rr, cc] = patch
    return torch.where(mask, full, out)


def donor_fill(
    images: torch.Tensor,
    donors: torch.Tensor,
    r0: torch.Tensor,
    c0: torch.Tensor,
    bh: int,
    bw: int,
) -> torch.Tensor:
    """Replace a box per image by the same box of a donor image ``(B, C, H, W)``."""
    _, c, h, w = images.shape
    mask = box_mask((h, w), r0.to(images.device), c0.to(images.device), bh, bw)[:, None]
    return torch.where(mask.expand(-1, c, -1, -1), donors, images)


def free_positions(
    roi: torch.Tensor | None,
    size: tuple[int, int],
    bh: int,
    bw: int,
    exclude: list[tuple[int, int, int, int]] | None = None,
) -> torch.Tensor:
    """``(B, H-bh+1, W-bw+1)`` boolean: top-left corners of boxes that miss the ROI
    (``(B, H, W)``, NaN = unknown: every position allowed) and every ``exclude`` box
    ``(r0, r1, c0, c1)``. ``roi=None`` gives one row of positions missing ``exclude``."""
    h, w = size
    if roi is None:
        ok = torch.ones(1, h - bh + 1, w - bw + 1, dtype=torch.bool)
    else:
        inside = (torch.nan_to_num(roi.float(), nan=0.0) > 0.5).float()[:, None]
        hit = F.max_pool2d(inside, (bh, bw), stride=1)[:, 0]
        ok = hit < 0.5
    rr = torch.arange(h - bh + 1, device=ok.device).view(-1, 1)
    cc = torch.arange(w - bw + 1, device=ok.device).view(1, -1)
    for r0, r1, c0, c1 in exclude or []:
        ok = ok & ~((rr < r1) & (rr + bh > r0) & (cc < c1) & (cc + bw > c0))
    return ok


# --------------------------------------------------------------------------- randomisation


def graft(module: nn.Module, path: str, replacement: nn.Module) -> nn.Module:
    """A new module tree equal to ``module`` except that ``path`` is ``replacement``.

    Only the modules along ``path`` are shallow-copied (with their own child dicts); every
    other submodule, parameter and buffer is shared. The original is never modified.
    """
    if not path:
        return replacement
    top = copy.copy(module)
    top._modules = dict(module._modules)  # type: ignore[assignment]
    parent = top
    parts = path.split(".")
    for name in parts[:-1]:
        child = copy.copy(parent._modules[name])
        assert child is not None
        child._modules = dict(child._modules)  # type: ignore[assignment]
        parent._modules[name] = child
        parent = child
    parent._modules[parts[-1]] = replacement
    return top


def parametrised_leaves(module: nn.Module) -> list[str]:
    """Names of the submodules owning parameters directly, last (nearest the output) first."""
    names = [n for n, m in module.named_modules() if any(True for _ in m.parameters(recurse=False))]
    return names[::-1]


def cascade_stages(leaves: list[str], stages: int) -> list[list[str]]:
    """Cumulative groups of ``leaves`` (top first): stage k randomises the top k/stages."""
    n = len(leaves)
    stages = max(1, min(stages, n))
    cuts = sorted({max(1, round(n * (k + 1) / stages)) for k in range(stages)})
    return [leaves[:c] for c in cuts]


@torch.no_grad()
def randomise_(module: nn.Module, names: list[str], generator: torch.Generator) -> None:
    """Re-draw every parameter of the named submodules in place: Gaussian with the
    parameter's own mean and standard deviation (scale kept, learned structure gone)."""
    lookup = dict(module.named_modules())
    for name in names:
        for p in lookup[name].parameters(recurse=False):
            flat = p.detach().float().reshape(-1)
            sd = float(flat.std()) if flat.numel() > 1 else 0.0
            if sd == 0.0:
                sd = float(flat.abs().mean()) or 0.02
            draw = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            p.copy_((draw * sd + float(flat.mean())).to(p.dtype))


# --------------------------------------------------------------------------- map similarity


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation between matching rows of ``a`` and ``b`` (N, P); ties get
    average ranks; a constant row gives NaN."""
    from scipy.stats import rankdata

    ra = rankdata(a, axis=1)
    rb = rankdata(b, axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Each ``(..., H, W)`` map scaled to [0, 1] (constant maps become 0)."""
    flat = maps.reshape(*maps.shape[:-2], -1)
    lo = flat.min(-1, keepdim=True).values
    hi = flat.max(-1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(maps.shape)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004) of matching ``(N, H, W)`` maps in [0, 1]
    (Gaussian window, data range 1, valid region only), as scikit-image computes it."""
    window = min(window, a.shape[-1], a.shape[-2])
    window -= 1 - window % 2
    xs = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    g = torch.exp(-(xs**2) / (2 * sigma**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).view(1, 1, window, window).to(a.device)
    x, y = a.float()[:, None], b.float()[:, None]

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, k)

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx**2
    syy = filt(y * y) - my**2
    sxy = filt(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3))
