"""Which layers the ``saliency`` check hooks: the CAM layer (and LayerCAM's finer one), found
by a probe forward, and the image encoder the sanity check randomises."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmaudit.checks.contract import AuditContext, CheckOutput
from mmaudit.checks.saliency.params import CAMS, SaliencyParams
from mmaudit.methods.cams import to_grid

if TYPE_CHECKING:
    from mmaudit.engine.adapter import ModelAdapter


def choose_cam_layers(
    ctx: AuditContext, p: SaliencyParams, rows: np.ndarray, info: Any
) -> tuple[dict[str, str], CheckOutput]:
    """CAM method -> layer, after a probe forward on the first two image ``rows``; notes for
    methods that cannot run, and the ``cam_layer`` / ``layercam_layer`` metrics."""
    out = CheckOutput()
    adapter = ctx.adapter
    wanted = [m for m in p.methods if m in CAMS]
    if not wanted:
        return {}, out
    layer = p.layer or adapter.layers.get("gradcam")
    if not adapter.supports_hooks or layer is None:
        why = (
            "layer hooks are not available (TorchScript)"
            if not adapter.supports_hooks
            else "the model has no conv / token layer to hook (set model.layers.gradcam)"
        )
        out.notes.append(f"CAM methods {wanted} skipped: {why}")
        return {}, out
    try:
        probe = _probe_layers(adapter, ctx.dataset, rows[:2], layer, info)
    except Exception as exc:  # a layer whose output is no map must not sink the run
        out.notes.append(f"CAM methods {wanted} skipped: layer '{layer}': {exc}")
        return {}, out
    fine = layer
    if "layercam" in wanted:
        if p.layercam_layer == "auto":
            fine = probe or layer
        elif p.layercam_layer != "same":
            fine = p.layercam_layer
    layers = {m: (fine if m == "layercam" else layer) for m in wanted}
    out.metrics["cam_layer"] = layer
    if "layercam" in layers:
        out.metrics["layercam_layer"] = layers["layercam"]
    return layers, out


def image_root(adapter: ModelAdapter, cam_layers: dict[str, str]) -> str:
    """Dotted path of the image encoder (what the sanity check randomises)."""
    if "image" in adapter.layers:
        return adapter.layers["image"]
    layer = next(iter(cam_layers.values()), None)
    if layer is not None:
        path = adapter.layers.get(layer, layer)
        return path.split(".")[0]
    return ""


def _probe_layers(
    adapter: ModelAdapter, ds: Any, rows: np.ndarray, layer: str, info: Any
) -> str | None:
    """Run two images through the model capturing the CAM layer and every Conv2d of the image
    encoder; check the CAM layer gives a map; return the last conv at least twice as fine."""

    root = image_root(adapter, {"x": layer})
    enc = adapter.module.get_submodule(root) if root else adapter.module
    prefix = f"{root}." if root else ""
    convs = [
        (prefix + n) if n else root
        for n, m in enc.named_modules()
        if isinstance(m, torch.nn.Conv2d) and "downsample" not in n and "shortcut" not in n
    ]
    batch = ds.collate([ds[int(i)] for i in rows]).to(adapter.device)
    with torch.no_grad(), adapter.capture([layer, *convs]) as store:
        adapter.logits(batch)
        grid = to_grid(store[layer], info)
        h = grid.shape[-2]
        finer = [
            c for c in convs if c in store and store[c].dim() == 4 and store[c].shape[-2] >= 2 * h
        ]
    return finer[-1] if finer else None
