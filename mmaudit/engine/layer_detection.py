"""Which module is which in a model nobody described: the Grad-CAM target layer (found by
one hooked forward pass, the same rule for built-in and bring-your-own models) and the
token embedding that report-word IG interpolates (found from the module tree and, when
that is ambiguous, one forward pass)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

#: Module types that look token ids up; the token-embedding layer of text IG is one of them
#: (or the Hugging Face ``embeddings`` block around one).
TOKEN_EMBEDDINGS: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)

#: How the Grad-CAM target was chosen; the report records one of these with the layer.
POOL_INPUT_RULE = (
    "feature map feeding the global pool: the last module on the image path whose output"
    " is a spatial map (B, C, h, w with h*w > 1), found by one hooked forward pass"
)
TOKEN_RULE = (
    "token model: the first norm of the last transformer block (pytorch-grad-cam's ViT /"
    " Swin recipe), its tokens reshaped to the patch grid; found by one hooked forward pass"
)
STATIC_RULE = (
    "provisional: the last nn.Conv2d of the module tree; the saliency check replaces it by"
    " the feature map feeding the global pool, found by a hooked forward on the first rows"
)

Layout = Literal["NCHW", "NHWC", "NLC"]
_MAX_PREFIX = 8  # class / register / distillation tokens in front of the patch tokens


@dataclass(frozen=True)
class CamTarget:
    """The Grad-CAM target a hooked forward found: ``layer`` (dotted path, None when the
    model has no spatial map, ``reason`` says why), the ``rule`` that chose it, and the
    layout of its output (``NLC`` tokens come with their patch ``grid`` and ``prefix``)."""

    layer: str | None
    rule: str
    layout: Layout | None = None
    grid: tuple[int, int] | None = None
    prefix: int = 0
    reason: str = ""


@dataclass(frozen=True)
class TracedOutput:
    """One module's output in a traced forward: its dotted name, shape, and whether the
    module normalises per token (LayerNorm-like: the token-model recipe's target)."""

    name: str
    shape: tuple[int, ...]
    is_norm: bool


def _is_token_norm(m: nn.Module) -> bool:
    """LayerNorm-like (normalising each token / position), not a batch statistic."""
    name = type(m).__name__.lower()
    return isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or (
        "norm" in name and "batch" not in name and "identity" not in name
    )


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Parameters without ``requires_grad`` while open: a tensor then needs a gradient only
    when it depends on the (grad-requiring) image, which marks the image path."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def trace_outputs(
    module: nn.Module, run: Callable[[], Any], image: torch.Tensor | None, root: str | None = None
) -> list[TracedOutput]:
    """Every module's tensor output (under ``root``) in the order the modules finish, from
    one forward ``run()``. With ``image`` (a float leaf the run consumes) only the outputs
    that depend on it are kept: a text encoder's 4-D attention maps are not the image path.
    A forward that cannot take a grad-requiring input (an in-place op on it) runs again
    with every output kept.
    """
    names = {m: n for n, m in module.named_modules() if is_under(n, root)}
    seen: list[TracedOutput] = []
    watch = image is not None and image.is_floating_point() and image.is_leaf

    def hook(m: nn.Module, _args: Any, out: Any) -> None:
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            out = out[0]
        if not isinstance(out, torch.Tensor) or (watch and not out.requires_grad):
            return
        seen.append(TracedOutput(names[m], tuple(out.shape), _is_token_norm(m)))

    handles = [m.register_forward_hook(hook) for m in names]
    was = image.requires_grad if watch and image is not None else False
    try:
        with _frozen(module), torch.enable_grad():
            if watch and image is not None:
                image.requires_grad_(True)
            try:
                run()
            except RuntimeError:
                if not watch:
                    raise
                # e.g. an in-place op on the input: trace every output instead
                seen.clear()
                watch = False
                assert image is not None
                image.requires_grad_(was)
                run()
    finally:
        for h in handles:
            h.remove()
        if image is not None and image.is_leaf:
            image.requires_grad_(was)
    return seen


def _on_grid(n: int, full: int) -> int | None:
    """The integer stride at which ``n`` cells cover ``full`` pixels, or None. Within 10 %
    and 2 cells (padding, unpadded convs' lost borders); a 197-token attention map of a
    224-pixel image is on no grid."""
    if n > full:
        return None
    stride = max(1, round(full / n))
    return stride if abs(full / stride - n) <= 0.1 * n + 2 else None


def spatial_layout(
    shape: tuple[int, ...], batch: int | None, size: tuple[int, int] | None
) -> tuple[Layout, int, int] | None:
    """(layout, h, w) when a 4-D output is a spatial map of the image with h*w > 1: NCHW, or
    NHWC (Swin-like) when only that reading puts both axes on a grid of the image with one
    stride (within 15 %). Without the image size every 4-D output counts as NCHW."""
    if len(shape) != 4 or (batch is not None and shape[0] != batch):
        return None
    readings: list[tuple[Layout, int, int]] = [
        ("NCHW", shape[2], shape[3]),
        ("NHWC", shape[1], shape[2]),
    ]
    for layout, h, w in readings:
        if h * w <= 1:
            continue
        if size is None:
            return (layout, h, w) if layout == "NCHW" else None
        sh, sw = _on_grid(h, size[0]), _on_grid(w, size[1])
        if sh is not None and sw is not None and abs(sh - sw) <= 0.15 * max(sh, sw):
            return layout, h, w
    return None


def _token_recipe(
    outs: list[TracedOutput], after: int, h: int, w: int, nhwc: bool
) -> TracedOutput | None:
    """The first norm of the last transformer block after the patch map ``outs[after]``:
    blocks are parents with two or more direct-child norms whose outputs are the patch
    tokens (``(B, h*w + prefix, C)``) or, for NHWC stages, ``(B, h, w, C)`` maps."""

    def patch_shaped(o: TracedOutput) -> bool:
        if len(o.shape) == 3:
            return 0 <= o.shape[1] - h * w <= _MAX_PREFIX
        return nhwc and len(o.shape) == 4 and o.shape[1:3] == (h, w)

    norms = [o for o in outs[after + 1 :] if o.is_norm and patch_shaped(o)]
    if nhwc:  # Swin: the blocks of the last stage run on the final grid; earlier ones do not
        norms = [o for i, o in enumerate(outs) if o.is_norm and patch_shaped(o) and i <= after]
    children: dict[str, list[TracedOutput]] = {}
    for o in norms:
        children.setdefault(o.name.rpartition(".")[0], []).append(o)
    blocks = [p for p, kids in children.items() if len({k.name for k in kids}) >= 2]
    if not blocks:
        return None
    last = max(blocks, key=lambda p: max(i for i, o in enumerate(outs) if o in children[p]))
    return children[last][0]


def choose_cam_target(
    outs: list[TracedOutput], batch: int | None = None, size: tuple[int, int] | None = None
) -> CamTarget:
    """Apply the rule to a traced forward (see :func:`detect_cam_target`)."""
    maps = [(i, s) for i, o in enumerate(outs) if (s := spatial_layout(o.shape, batch, size))]
    if not maps:
        return CamTarget(
            None,
            POOL_INPUT_RULE,
            reason="no module on the image path outputs a spatial map (B, C, h, w) with h*w > 1",
        )
    for i, (layout, h, w) in maps:  # a patch map whose tokens transformer blocks process
        if layout == "NCHW" and any(
            len(o.shape) == 3 and 0 <= o.shape[1] - h * w <= _MAX_PREFIX for o in outs[i + 1 :]
        ):
            norm = _token_recipe(outs, i, h, w, nhwc=False)
            if norm is not None:
                return CamTarget(norm.name, TOKEN_RULE, "NLC", (h, w), norm.shape[1] - h * w)
    i, (layout, h, w) = maps[-1]
    if layout == "NHWC":
        norm = _token_recipe(outs, i, h, w, nhwc=True)
        if norm is not None:
            return CamTarget(norm.name, TOKEN_RULE, "NHWC", (h, w))
    return CamTarget(outs[i].name, POOL_INPUT_RULE, layout, (h, w))


def detect_cam_target(
    module: nn.Module,
    run: Callable[[], Any],
    image: torch.Tensor | None = None,
    root: str | None = None,
) -> CamTarget:
    """The Grad-CAM target of ``module``, from one hooked forward ``run()`` that consumes
    ``image`` (a float leaf tensor, B x C x H x W; its gradient requirement marks the image
    path and its size tells a spatial map from a token grid) — a tiny blank image of the
    model's size, or the first rows of the data.

    The rule: the last module (under ``root``, e.g. ``model.layers.image``) whose output is
    a spatial map ``(B, C, h, w)`` with ``h*w > 1``, i.e. the feature map that feeds the
    global pool. Modules that return the same map finish outer-last, so a ResNet gives its
    last stage (``layer4``, after the residual add and ReLU), a timm model the output of
    ``forward_features`` with its final norm / activation (``norm_pre``, ``bn2``,
    ``features``). Squeeze-excitation 1x1 maps in between do not count (spatial maps follow
    them). Token models keep pytorch-grad-cam's recipe: when the last map is a patch
    embedding whose tokens transformer blocks then process (ViT), or the maps are NHWC
    (Swin), the target is the first norm of the last block. No spatial map: ``layer`` is
    None and ``reason`` says so.
    """
    was = module.training
    module.eval()
    try:
        outs = trace_outputs(module, run, image, root)
    finally:
        module.train(was)
    batch = int(image.shape[0]) if image is not None and image.dim() == 4 else None
    size = (int(image.shape[-2]), int(image.shape[-1])) if batch is not None else None
    return choose_cam_target(outs, batch, size)


def detect_gradcam_layer(module: nn.Module, prefer: str | None = None) -> str | None:
    """The provisional Grad-CAM layer when no forward can run yet (at load, before any data):
    the last Conv2d (under ``prefer`` when given). :func:`detect_cam_target` replaces it."""
    last = None
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d) and (prefer is None or name.startswith(prefer)):
            last = name
    if last is None and prefer is not None:
        return detect_gradcam_layer(module, None)
    return last


def is_under(name: str, root: str | None) -> bool:
    return not root or name == root or name.startswith(root + ".")


def _embedding_block(name: str, root: str | None) -> str:
    """``name``, or its parent when that is a Hugging Face ``embeddings`` block (word +
    position embeddings and LayerNorm): IG then moves the whole token vector the encoder
    reads, as captum's BERT examples do, and the positions, the same at both ends of the
    path, cancel. Never above the text encoder named in ``model.layers.text``."""
    parent = name.rpartition(".")[0]
    if parent and parent.split(".")[-1] == "embeddings" and is_under(parent, root):
        return parent
    return name


def detect_text_embedding_layer(module: nn.Module, text_root: str | None = None) -> str | None:
    """Dotted path of the token-embedding layer report-word IG interpolates, or None.

    Looked for under the text encoder (``text_root``, ``model.layers.text``) when it is
    named, else in the whole model, in this order: the input embeddings of the shallowest
    Hugging Face model there (``get_input_embeddings()``); an ``nn.Embedding`` /
    ``nn.EmbeddingBag`` named ``*word_embeddings``; under a named text encoder, its only
    one. A Hugging Face ``embeddings`` block around the match is taken whole (see
    :func:`_embedding_block`). A model with several embeddings and no text encoder named
    is left to :meth:`ModelAdapter.detect_on_batch`, which sees which one reads the ids.
    """
    named = [(n, m) for n, m in module.named_modules() if is_under(n, text_root)]
    names = {id(m): n for n, m in module.named_modules()}
    for _name, m in sorted(named, key=lambda nm: nm[0].count(".") if nm[0] else -1):
        get = getattr(m, "get_input_embeddings", None)
        if not callable(get):
            continue
        try:
            emb = get()
        except (NotImplementedError, AttributeError):
            continue
        if isinstance(emb, TOKEN_EMBEDDINGS) and id(emb) in names:
            return _embedding_block(names[id(emb)], text_root)
    embeds = [n for n, m in named if isinstance(m, TOKEN_EMBEDDINGS)]
    words = [n for n in embeds if n.split(".")[-1] == "word_embeddings"]
    if words:
        return _embedding_block(words[0], text_root)
    if text_root and len(embeds) == 1:
        return _embedding_block(embeds[0], text_root)
    return None
