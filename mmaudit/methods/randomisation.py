"""Model-randomisation pieces of the Adebayo et al. (2018) saliency sanity test.

A saliency method that explains the model must change when the model's learned weights
are destroyed. These helpers build that destroyed model without touching the original:
``graft`` a copy of one submodule into a shallow copy of the tree, list its parametrised
leaves nearest the output first (``parametrised_leaves``), group them into cumulative
stages (``cascade_stages``) and re-draw their weights at their own scale (``randomise_``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


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
