"""Encoders named too narrowly: a ``model.layers.<modality>`` that is only the projection
after a separate backbone module, so reusing its cached output saves nothing.

Checks that perturb one modality (attribution's lab SHAP, ablation's coalitions, saliency's
CAMs with the report and labs fixed) swap the named encoder for its cached output
(``ModelAdapter.substitute``). When the model's forward calls a backbone *outside* that
module first (``f = self.backbone(image); h = self.proj(f)`` with ``layers.image: proj``),
the backbone still runs on every perturbed row and its result is thrown away: the audit is
as slow as without the cache, and nothing said so. :func:`partial_encoder_notes` finds this
once, at preflight, on one small batch.

How, and why this way: with the named encoder substituted (as the checks do), a forward
pre-hook on every leaf module (and every module with parameters of its own) watches for the
modality's raw input (the very tensor, or an equal one of the same shape: the image batch,
the token ids, the lab values). A module that still reads it computes on that modality for
nothing. Reading the raw input is a yes/no fact of the forward, so the detection does not
depend on thresholds or on the model's numbers. The cost is then measured, not guessed:
``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of the module subtree that
holds the reader (its outermost ancestor that holds none of the named encoders or the fused
embedding), against those of one ordinary forward. Readers that waste under 1 % of a
forward (a token-embedding lookup, a lab normalisation) are not worth a note.

TorchScript models have no hooks: nothing is said about them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from mmaudit.engine.adapter import ModelAdapter
    from mmaudit.engine.data import Batch

_WORDS = {"image": "image", "text": "report token ids", "tabular": "lab values"}
_MIN_SHARE = 0.01


def partial_encoder_notes(adapter: ModelAdapter, batch: Batch) -> list[str]:
    """One line per modality whose named encoder, when its cached output stands in, leaves
    a module that still reads the modality's raw input and costs at least 1 % of a forward's
    FLOPs: the modality, the named layer, the first module still reading the raw input, the
    subtree that is computed and thrown away, its share of a forward's FLOPs, and what to do.

    ``batch`` is a small batch (one to four rows): the model runs on it once, then once per
    named encoder with that encoder substituted; without gradients where torch's FLOP
    counter allows (see :func:`_counted`). Quiet when the model cannot run it: the caller's
    own probe reports that, in one line."""
    if not adapter.supports_hooks:
        return []
    kwargs = adapter.kwargs(batch.to(adapter.device))
    mods = [
        m
        for m in adapter.modalities
        if m in adapter.layers
        and m in adapter.keywords
        and isinstance(kwargs.get(adapter.keywords[m]), torch.Tensor)
    ]
    if not mods:
        return []
    root = adapter.module
    outputs: dict[str, Any] = {}
    handles = [
        root.get_submodule(adapter.layers[m]).register_forward_hook(_keep(outputs, m)) for m in mods
    ]
    try:
        full = _counted(lambda: root(**kwargs), adapter)
    except Exception:  # noqa: BLE001 - the preflight probe reports a model that cannot run
        return []
    finally:
        for h in handles:
            h.remove()
    total = None if full is None else full.get("Global", 0)
    protected = [adapter.layers[k] for k in (*mods, "embedding") if k in adapter.layers]
    notes = []
    for m in mods:
        if m not in outputs:
            continue  # the named layer did not run on this batch: nothing to reuse
        found = _readers(adapter, kwargs, m, outputs[m])
        if found is None or not found[0]:
            continue
        readers, counts = found
        regions = _outermost([_region(r, protected) for r in readers])
        prefix = type(root).__name__
        wasted = None if counts is None else sum(_flops(counts, f"{prefix}.{r}") for r in regions)
        share = wasted / total if total and wasted is not None else None
        if share is not None and share < _MIN_SHARE:
            continue
        notes.append(_note(m, adapter.layers[m], readers[0], regions, share))
    return notes


def _keep(store: dict[str, Any], key: str) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, out: Any) -> None:
        store[key] = out

    return hook


def _counted(run: Callable[[], Any], adapter: ModelAdapter) -> dict[str, int] | None:
    """FLOPs per module (``FlopCounterMode`` names: "Global", "<RootClass>.<path>") of one
    ``run()`` without gradients; None when they cannot be counted (the forward still runs).

    torch's module tracker asserts on some modules run without gradients (an
    ``nn.MultiheadAttention`` fed a parameter): then the forward is counted with gradients
    on, which costs the small probe batch's activations only."""
    from torch.utils.flop_counter import FlopCounterMode

    for grad in (False, True):
        try:
            with (
                torch.set_grad_enabled(grad),
                adapter.autocast(),
                FlopCounterMode(display=False) as fc,
            ):
                run()
        except AssertionError:
            continue
        return {k: int(sum(v.values())) for k, v in fc.get_flop_counts().items()}
    with torch.no_grad(), adapter.autocast():
        run()
    return None


def _readers(
    adapter: ModelAdapter, kwargs: dict[str, Any], modality: str, output: Any
) -> tuple[list[str], dict[str, int] | None] | None:
    """Names of the modules that read ``modality``'s raw input while its named encoder
    returns ``output`` (in the order they ran), and the per-module FLOPs of that forward."""
    root = adapter.module
    named = adapter.layers[modality]
    inside = {id(x) for x in root.get_submodule(named).modules()}
    parts = named.split(".")
    above = {".".join(parts[:k]) for k in range(len(parts))}
    raw = kwargs[adapter.keywords[modality]]
    views = [raw, raw.reshape(-1)] if modality == "text" else [raw]
    readers: list[str] = []

    def watch(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
            if name not in readers and any(_is_raw(x, views) for x in (*args, *kw.values())):
                readers.append(name)

        return hook

    handles = []
    for name, mod in root.named_modules():
        if id(mod) in inside or name in above:
            continue
        leaf = next(mod.children(), None) is None
        if leaf or next(mod.parameters(recurse=False), None) is not None:
            handles.append(mod.register_forward_pre_hook(watch(name), with_kwargs=True))
    try:
        with adapter.substitute(modality, lambda: output):
            counts = _counted(lambda: root(**kwargs), adapter)
    except Exception:  # noqa: BLE001 - a forward that needs the encoder's side effects
        return None
    finally:
        for h in handles:
            h.remove()
    return readers, counts


def _flops(counts: dict[str, int], key: str) -> int:
    """FLOPs of the subtree ``key``: its own count, or, when it was not called as a module
    (timm's ``backbone.forward_features(x)`` calls a method), its outermost counted
    descendants'."""
    inside = [k for k in counts if k == key or k.startswith(key + ".")]
    return sum(counts[k] for k in inside if not any(k.startswith(o + ".") for o in inside))


def _is_raw(x: Any, views: list[torch.Tensor]) -> bool:
    if not isinstance(x, torch.Tensor):
        return False
    return any(
        x is v or (x.shape == v.shape and x.dtype == v.dtype and torch.equal(x, v)) for v in views
    )


def _region(reader: str, protected: list[str]) -> str:
    """The outermost ancestor of ``reader`` (or itself) that holds none of the ``protected``
    layers: the subtree computed for nothing (the whole backbone, not its first conv)."""
    parts = reader.split(".")
    best = reader
    for k in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:k])
        if any(p == parent or p.startswith(parent + ".") for p in protected):
            break
        best = parent
    return best


def _outermost(names: list[str]) -> list[str]:
    keep = dict.fromkeys(names)
    return [n for n in keep if not any(o != n and n.startswith(o + ".") for o in keep)]


def _note(modality: str, named: str, first: str, regions: list[str], share: float | None) -> str:
    if share is None:
        cost = "an unmeasured share of each forward"
    else:
        cost = f"{'over 99%' if share > 0.99 else f'about {share:.0%}'} of a forward's FLOPs"
    where = ", ".join(regions)
    return (
        f"model.layers.{modality} is {named}, but {where} (first to read the raw"
        f" {_WORDS[modality]}: {first}) runs outside it: when checks reuse the cached"
        f" {modality} encoder output, {where} still runs on every perturbed row and its"
        f" result is thrown away ({cost}). Name one module that holds the whole {modality}"
        " branch (backbone + projection, e.g. an nn.Sequential; docs/own-model.md, 'One"
        " module per encoder'), or accept the cost"
    )
