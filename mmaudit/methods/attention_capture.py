"""Capture attention weights through hooks, without changing the model, and turn them into
image-region maps per text token.

Sources, in the order they are looked for:

* the built-in ``attention`` fusion (``mmaudit.engine.models.fusion.AttentionFusion``): text
  tokens query image region tokens (+ the tabular token) through one
  ``nn.MultiheadAttention``; the key layout is known from the module;
* any other ``torch.nn.MultiheadAttention`` outside the modality encoders: a forward
  pre-hook sets ``need_weights=True, average_attn_weights=False`` in the call (the
  output the model uses is unchanged; only the weights are also returned), a forward
  hook reads them;
* Hugging Face cross-attention modules (``*CrossAttention``, or a self-attention class
  used as cross-attention: ``is_cross_attention`` or a ``crossattention`` parent),
  outside the encoders, or, only when no attention lies outside the encoders, inside the
  text encoder (the BLIP / ALBEF layout: BERT with ``add_cross_attention``, image states
  passed as ``encoder_hidden_states``; a text encoder so built may also be run text-only,
  hence the preference); cross layers inside the image encoder are not text -> image
  and are left out. Every such layer is captured and they are aggregated (see
  Relevancy), unless one is picked by index. They return their weights only with the
  ``eager`` attention kernel, so the model config's ``_attn_implementation`` is set to
  ``eager`` while capturing and restored afterwards (same mathematics, a slower kernel).

Hugging Face *self*-attention inside the text encoder is captured as well when asked,
for relevancy propagation.

Relevancy (Chefer, Gur & Wolf, ICCV 2021, "Generic attention-model explainability for
interpreting bi-modal and encoder-decoder transformers"): each attention map ``A`` is
weighted by the gradient of the explained score, ``A_bar = mean_heads((grad A * A)^+)``.
Layers are applied in the order they ran, from ``R_tt = I`` and ``R_ti = 0``: a text
self-attention layer updates ``R_tt <- R_tt + A_bar R_tt`` and ``R_ti <- R_ti + A_bar
R_ti``; a text -> image cross-attention layer adds ``R_ti <- R_ti + normalise(R_tt)^T
A_bar_ti`` (with ``normalise(R) = (R - I) / rowsum + I``; image tokens come from a CNN
or other encoder that does not attend to text, so ``R_ii = I`` and ``R_it = 0``). With
one cross layer after the self layers this is ``normalise(R_tt)^T A_bar_ti``. Without
gradients the raw, head-averaged weights are used (averaged over the cross layers) and
labelled as such.

The gradient of an ``nn.MultiheadAttention``'s weights: the module returns a *view* of
the softmax output that its value product consumed, so the gradient is taken with
respect to that view's base (checked against an explicit recomputation in the tests).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmaudit.engine.adapter import ModelAdapter

__all__ = [
    "AttentionSource",
    "Captured",
    "capture_attention",
    "chefer_relevancy",
    "chefer_relevancy_layers",
    "find_attention_source",
    "region_fractions",
    "text_self_attention_paths",
]

Kind = Literal["mha", "hf"]


@dataclass
class Captured:
    """One call of one attention module: weights (B, heads, L_query, T_keys)."""

    weights: torch.Tensor  # as returned (view), possibly part of the autograd graph
    graph: torch.Tensor | None  # the tensor the module actually consumed (for gradients)
    seq: int = 0  # call order across every captured module while the capture was open


@dataclass
class AttentionSource:
    """Where cross-modal (text -> image) attention lives and how its keys are laid out."""

    path: str
    kind: Kind
    builtin: bool
    #: every cross-attention layer analysed, in module order (``path`` is the first)
    paths: list[str] = field(default_factory=list)
    image_offset: int = 0
    n_image_tokens: int | None = None
    grid: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)


def _is_hf_attention(module: nn.Module) -> bool:
    config = getattr(module, "config", None)
    return (
        type(module).__name__.endswith("Attention")
        and config is not None
        and hasattr(config, "_attn_implementation")
        and all(hasattr(module, a) for a in ("query", "key", "value"))
    )


def _is_hf_cross(name: str, module: nn.Module) -> bool:
    """A Hugging Face attention used across modalities: a ``*CrossAttention`` class, or a
    self-attention class built with ``is_cross_attention`` or living under a
    ``crossattention`` parent (BERT with ``add_cross_attention`` in older releases)."""
    return _is_hf_attention(module) and (
        "Cross" in type(module).__name__
        or bool(getattr(module, "is_cross_attention", False))
        or "crossattention" in name.lower().split(".")
    )


def _under(name: str, roots: list[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def find_attention_source(
    adapter: ModelAdapter,
    *,
    grid: tuple[int, int] | None = None,
    image_offset: int | None = None,
    layer: int | None = None,
) -> tuple[AttentionSource | None, str | None]:
    """The cross-modal attention to capture, or None with the reason.

    ``grid`` (rows, cols of image regions) and ``image_offset`` (index of the first
    image key) override what is read from the model; for a model other than the
    built-in family the grid is the image encoder's ``grid_size`` if it has one, else
    the square root of the number of keys. Attention outside the encoders comes first;
    without any, Hugging Face cross-attention inside the text encoder (a text encoder
    that attends to image states) is used. When there are several Hugging Face cross
    layers all are analysed together, unless ``layer`` picks one (an index into the
    candidates in module order; negative counts from the end; the built-in fusion has
    one module, so only 0 and -1).
    """
    if not adapter.supports_hooks:
        return None, "needs layer hooks, which a TorchScript model does not allow"
    model = adapter.module
    image_root = adapter.layers.get("image")
    image_enc = _maybe_module(model, image_root)
    enc_grid = getattr(image_enc, "grid_size", None)
    enc_tokens = getattr(image_enc, "num_tokens", None)
    fusion_path = adapter.layers.get("embedding")
    fusion = _maybe_module(model, fusion_path)
    if (
        fusion is not None
        and hasattr(fusion, "last_attention")
        and isinstance(getattr(fusion, "attn", None), nn.MultiheadAttention)
    ):
        key_mods = list(getattr(fusion, "key_modalities", []))
        if "image" not in key_mods:
            return None, "the fusion's attention has no image keys"
        counts = {"image": enc_tokens, "tabular": 1}
        offset = 0
        for m in key_mods[: key_mods.index("image")]:
            if counts.get(m) is None:
                return None, f"cannot place the image keys after the {m} keys"
            offset += int(counts[m])  # type: ignore[arg-type]
        g = grid or (tuple(enc_grid) if enc_grid else None)
        n_img = int(enc_tokens) if enc_tokens else (g[0] * g[1] if g else None)
        if not getattr(fusion, "has_text", True):
            return None, "the fusion attends from a learned query, not from report tokens"
        if layer not in (None, 0, -1):
            return None, (
                f"params.layer {layer} is out of range: 1 attention module ({fusion_path}.attn)"
            )
        return (
            AttentionSource(
                path=f"{fusion_path}.attn",
                kind="mha",
                builtin=True,
                paths=[f"{fusion_path}.attn"],
                image_offset=offset if image_offset is None else image_offset,
                n_image_tokens=n_img,
                grid=g,  # type: ignore[arg-type]
            ),
            None,
        )
    encoders = [adapter.layers[m] for m in ("image", "text", "tabular") if m in adapter.layers]
    text_root = adapter.layers.get("text")
    outside: list[tuple[str, Kind]] = []  # attention outside every encoder
    in_text: list[tuple[str, Kind]] = []  # Hugging Face cross layers inside the text encoder
    inside: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            kind: Kind = "mha"
        elif _is_hf_cross(name, m):
            kind = "hf"
        elif _is_hf_attention(m) or type(m).__name__.endswith("Attention"):
            inside.append(name)
            continue
        else:
            continue
        if not _under(name, encoders):
            outside.append((name, kind))
        elif kind == "hf" and text_root and _under(name, [text_root]):
            in_text.append((name, kind))
        else:
            # e.g. image-side cross layers (co-attention, a Q-Former): their queries are
            # not report tokens, and their keys attend to text, so R_ii = I fails
            inside.append(name)
    # a module outside the encoders is what the model uses to fuse; cross layers inside
    # the text encoder (BLIP / ALBEF) are the fusion only when there is none, since a
    # text encoder built with add_cross_attention may be run text-only
    candidates = outside or in_text
    if not candidates:
        if inside:
            return None, (
                "the model has no attention to capture across modalities: attention found"
                f" only inside an encoder ({inside[0]}{', ...' if len(inside) > 1 else ''})"
            )
        return None, "the model has no attention to capture"
    notes: list[str] = []
    if outside and in_text:
        notes.append(
            f"{len(in_text)} cross-attention layers inside the text encoder ({in_text[0][0]},"
            " ...) not analysed: attention outside the encoders is preferred"
        )
    if layer is not None:
        if not -len(candidates) <= layer < len(candidates):
            return None, (
                f"params.layer {layer} is out of range: {len(candidates)} cross-attention"
                f" modules ({', '.join(n for n, _ in candidates)})"
            )
        chosen = [candidates[layer]]
        notes.append(f"cross-attention layer {layer} of {len(candidates)} analysed (params.layer)")
    else:
        path0, kind0 = candidates[0]
        # stacked Hugging Face cross layers are one mechanism: aggregate them all; other
        # attention modules may be anything (e.g. a self-attention over fused tokens)
        chosen = [c for c in candidates if c[1] == "hf"] if kind0 == "hf" else [candidates[0]]
        if len(chosen) > 1:
            notes.append(f"{len(chosen)} cross-attention layers aggregated ({chosen[0][0]}, ...)")
        if len(candidates) > len(chosen):
            notes.append(
                f"{len(candidates)} attention modules could be cross-modal; {len(chosen)}"
                f" analysed, from {path0} (params.layer picks one by index)"
            )
    path, kind = chosen[0]
    g = grid or (tuple(enc_grid) if enc_grid else None)
    src = AttentionSource(
        path=path,
        kind=kind,
        builtin=False,
        paths=[c[0] for c in chosen],
        image_offset=image_offset or 0,
        n_image_tokens=(int(enc_tokens) if enc_tokens else (g[0] * g[1] if g else None)),
        grid=g,  # type: ignore[arg-type]
        notes=notes,
    )
    return src, None


def _maybe_module(model: nn.Module, path: str | None) -> nn.Module | None:
    if not path:
        return None
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def text_self_attention_paths(adapter: ModelAdapter) -> list[str]:
    """Hugging Face self-attention modules under the text encoder, in forward order."""
    root = adapter.layers.get("text")
    if not root or not adapter.supports_hooks:
        return []
    return [
        name
        for name, m in adapter.module.named_modules()
        if _under(name, [root]) and _is_hf_attention(m) and not _is_hf_cross(name, m)
    ]


def complete_grid(src: AttentionSource, n_keys: int) -> str | None:
    """Fill in the region grid from the number of keys when unknown; a reason if impossible."""
    if src.grid is None:
        n = src.n_image_tokens or n_keys - src.image_offset
        side = int(round(math.sqrt(n)))
        if side * side != n:
            return (
                f"cannot tell the image-region grid from {n} keys; set params.grid to [rows, cols]"
            )
        src.grid = (side, side)
        src.notes.append(f"image regions taken as a {side} x {side} grid ({n} keys)")
    if src.n_image_tokens is None:
        src.n_image_tokens = src.grid[0] * src.grid[1]
    if src.image_offset + src.n_image_tokens > n_keys:
        return (
            f"the attention has {n_keys} keys, fewer than the image offset {src.image_offset}"
            f" + {src.n_image_tokens} image regions"
        )
    return None


# ----------------------------------------------------------------------------- capture


@contextlib.contextmanager
def capture_attention(model: nn.Module, paths: list[str]) -> Iterator[dict[str, list[Captured]]]:
    """Record every call's attention weights of the named modules while open.

    ``nn.MultiheadAttention``: the call is made with ``need_weights=True`` and
    ``average_attn_weights=False`` (forward pre-hook), so weights are per head. Hugging
    Face attention: the ``eager`` kernel is selected for the duration. Hooks and
    configuration are restored on exit, also after an exception.
    """
    store: dict[str, list[Captured]] = {p: [] for p in paths}
    calls = [0]
    handles: list[Any] = []
    configs: list[tuple[Any, Any]] = []
    try:
        for path in paths:
            module = model.get_submodule(path)
            if isinstance(module, nn.MultiheadAttention):
                handles.append(module.register_forward_pre_hook(_force_weights, with_kwargs=True))
            elif _is_hf_attention(module):
                cfg = module.config  # type: ignore[attr-defined]
                if all(c is not cfg for c, _ in configs):
                    configs.append((cfg, cfg._attn_implementation))
                    cfg._attn_implementation = "eager"

            def hook(_m: nn.Module, _i: Any, out: Any, path: str = path) -> None:
                weights = out[1] if isinstance(out, (tuple, list)) and len(out) > 1 else None
                if not isinstance(weights, torch.Tensor):
                    return
                if weights.dim() == 3:  # averaged over heads by the caller's choice
                    weights = weights[:, None]
                base = weights._base
                graph = (
                    base
                    if base is not None
                    and base.grad_fn is not None
                    and base.numel() == weights.numel()
                    else (weights if weights.grad_fn is not None else None)
                )
                store[path].append(Captured(weights, graph, calls[0]))
                calls[0] += 1

            handles.append(module.register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()
        for cfg, old in configs:
            cfg._attn_implementation = old


def _force_weights(
    _m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Ask ``nn.MultiheadAttention`` for per-head weights, wherever the caller put the flags."""
    args = list(args)  # type: ignore[assignment]
    # positional order: query, key, value, key_padding_mask, need_weights, attn_mask,
    # average_attn_weights, is_causal
    if len(args) > 4:
        args[4] = True  # type: ignore[index]
    else:
        kwargs["need_weights"] = True
    if len(args) > 6:
        args[6] = False  # type: ignore[index]
    else:
        kwargs["average_attn_weights"] = False
    return tuple(args), kwargs


def weight_gradients(score: torch.Tensor, captured: list[Captured]) -> list[torch.Tensor | None]:
    """d score / d weights for each capture (None where the weights are not in the graph)."""
    targets = [c.graph for c in captured if c.graph is not None]
    if not targets or not score.requires_grad:
        return [None] * len(captured)
    grads = iter(torch.autograd.grad(score, targets, allow_unused=True, retain_graph=False))
    out: list[torch.Tensor | None] = []
    for c in captured:
        if c.graph is None:
            out.append(None)
            continue
        g = next(grads)
        out.append(None if g is None else g.reshape(c.weights.shape))
    return out


# ----------------------------------------------------------------------------- maps


def _normalise_rows(r: torch.Tensor) -> torch.Tensor:
    """Chefer's normalisation of a self-relevancy matrix: rows of ``R - I`` sum to one."""
    eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device)
    hat = r - eye
    sums = hat.sum(-1, keepdim=True)
    hat = torch.where(sums > 0, hat / sums.clamp_min(1e-12), hat)
    return hat + eye


def chefer_relevancy(
    cross: tuple[torch.Tensor, torch.Tensor],
    text_self: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Text-token x key relevancy (B, L, T) from gradient-weighted attention.

    ``cross`` is (weights, gradients) of the text -> keys attention, each (B, H, L, T);
    ``text_self`` the (weights, gradients) of text self-attention layers in forward order,
    each (B, H, L, L), whose query positions align with the cross-attention's queries,
    all run before the cross layer. See :func:`chefer_relevancy_layers` for interleaved
    and stacked layers.
    """
    steps = [("self", w, g) for w, g in text_self or []]
    return chefer_relevancy_layers([*steps, ("cross", *cross)])


def chefer_relevancy_layers(
    steps: list[tuple[Literal["self", "cross"], torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """Text-token x key relevancy (B, L, T) over layers in the order they ran.

    Each step is (kind, weights, gradients): ``self`` a text self-attention (B, H, L, L),
    ``cross`` a text -> keys attention (B, H, L, T); at least one ``cross``. Chefer et
    al.'s rules with ``R_ii = I`` (the keys do not attend to text): self ``R_tt += A R_tt``,
    ``R_ti += A R_ti``; cross ``R_ti += normalise(R_tt)^T A``.
    """
    crosses = [a for kind, a, _ in steps if kind == "cross"]
    if not crosses:
        raise ValueError("relevancy needs at least one cross-attention layer")
    b, _, length, keys = crosses[0].shape
    ref = crosses[0]
    r_tt = torch.eye(length, dtype=ref.dtype, device=ref.device).expand(b, -1, -1)
    r_ti = torch.zeros(b, length, keys, dtype=ref.dtype, device=ref.device)
    for kind, a, g in steps:
        cam = (g * a).clamp(min=0).mean(1)
        if kind == "self":
            r_tt = r_tt + cam @ r_tt
            r_ti = r_ti + cam @ r_ti
        else:
            r_ti = r_ti + _normalise_rows(r_tt).transpose(1, 2) @ cam
    return r_ti


def region_fractions(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, rows*cols) share of each region's pixels inside the ROI (row-major; NaN if absent)."""
    pooled = F.adaptive_avg_pool2d(masks.float(), grid)
    return pooled.flatten(1)
