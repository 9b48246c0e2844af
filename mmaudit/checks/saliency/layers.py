"""Which layers the ``saliency`` check hooks: the CAM layer (and LayerCAM's finer one), found
by a hooked probe forward, and the image encoder the sanity check randomises."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmaudit.checks.contract import AuditContext, CheckOutput
from mmaudit.checks.saliency.params import CAMS, SaliencyParams
from mmaudit.engine.layer_detection import (
    STATIC_RULE,
    choose_cam_target,
    is_under,
    spatial_layout,
    trace_outputs,
)
from mmaudit.methods.cams import to_grid

if TYPE_CHECKING:
    from mmaudit.engine.adapter import ModelAdapter


def choose_cam_layers(
    ctx: AuditContext, p: SaliencyParams, rows: np.ndarray, info: Any
) -> tuple[dict[str, str], CheckOutput]:
    """CAM method -> layer, after a hooked probe forward on the first two image ``rows``;
    notes for methods that cannot run, and the ``cam_layer`` / ``cam_layer_rule`` /
    ``layercam_layer`` metrics.

    ``params.layer`` or a configured ``model.layers.gradcam`` wins. A layer detected at load
    without a forward (bring-your-own models: the provisional last Conv2d) is replaced here
    by the feature map feeding the global pool, found on the probe rows
    (:func:`~mmaudit.engine.layer_detection.detect_cam_target`); the adapter's ``layers`` and
    ``detected`` record it, so the report names the layer and its rule."""
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
        batch = ctx.dataset.collate([ctx.dataset[int(i)] for i in rows[:2]]).to(adapter.device)
        traced = trace_outputs(adapter.module, lambda: adapter.logits(batch), batch.image)
        if p.layer is None and adapter.detected.get("gradcam_rule") == STATIC_RULE:
            layer = _redetect(adapter, traced, batch.image)
        fine = _finer_layer(adapter, batch, traced, layer, info)
    except Exception as exc:  # a layer whose output is no map must not sink the run
        out.notes.append(f"CAM methods {wanted} skipped: layer '{layer}': {exc}")
        return {}, out
    if "layercam" in wanted:
        if p.layercam_layer == "auto":
            fine = fine or layer
        elif p.layercam_layer != "same":
            fine = p.layercam_layer
        else:
            fine = layer
    layers = {m: (fine if m == "layercam" else layer) for m in wanted}
    out.metrics["cam_layer"] = layer
    out.metrics["cam_layer_rule"] = _rule(adapter, p, layer)
    if "layercam" in layers:
        out.metrics["layercam_layer"] = layers["layercam"]
    return layers, out


def _rule(adapter: ModelAdapter, p: SaliencyParams, layer: str) -> str:
    """How the CAM layer was chosen, in words the report prints next to it."""
    if p.layer is not None:
        return "set by the saliency check's params.layer"
    if adapter.detected.get("gradcam") == layer and "gradcam_rule" in adapter.detected:
        return adapter.detected["gradcam_rule"]
    return "set by model.layers.gradcam"


def _redetect(adapter: ModelAdapter, traced: list[Any], image: torch.Tensor) -> str:
    """The pool-input rule on the probe's traced forward, recorded in the adapter."""
    root = adapter.layers.get("image")
    target = choose_cam_target(
        [o for o in traced if is_under(o.name, root)],
        int(image.shape[0]),
        (int(image.shape[-2]), int(image.shape[-1])),
    )
    if target.layer is None:
        raise ValueError(f"{target.reason} (set model.layers.gradcam)")
    adapter.layers["gradcam"] = adapter.detected["gradcam"] = target.layer
    adapter.detected["gradcam_rule"] = target.rule
    if target.layout == "NHWC":  # channels-last maps (Swin): read as such, not as NCHW
        adapter.detected["gradcam_layout"] = target.layout
    return target.layer


def image_root(adapter: ModelAdapter, cam_layers: dict[str, str]) -> str:
    """Dotted path of the image encoder (what the sanity check randomises)."""
    if "image" in adapter.layers:
        return adapter.layers["image"]
    layer = next(iter(cam_layers.values()), None)
    if layer is not None:
        path = adapter.layers.get(layer, layer)
        return path.split(".")[0]
    return ""


def _finer_layer(
    adapter: ModelAdapter, batch: Any, traced: list[Any], layer: str, info: Any
) -> str | None:
    """Check the CAM ``layer`` gives a map on the probe batch; return LayerCAM's finer layer:
    the last ``Conv2d`` of the image path (outside a residual shortcut) whose output is a
    spatial map at least twice as fine as the CAM layer's, or None when there is none
    (token models). A conv, not the stage output after its residual add: there the map
    carries the skip path's input structure and barely changes when the weights are
    randomised (sanity similarity 0.74 against 0.01 for the conv, clean benchmark model)."""
    with torch.no_grad(), adapter.capture([layer]) as store:
        adapter.logits(batch)
        h = to_grid(store[layer], info).shape[-2]
    root = image_root(adapter, {"x": layer})
    image = batch.image
    size = (int(image.shape[-2]), int(image.shape[-1]))
    modules = dict(adapter.module.named_modules())
    finer = [
        o.name
        for o in traced
        if is_under(o.name, root)
        and isinstance(modules.get(o.name), torch.nn.Conv2d)
        and "downsample" not in o.name
        and "shortcut" not in o.name
        and (s := spatial_layout(o.shape, int(image.shape[0]), size)) is not None
        and s[0] == info.layout
        and s[1] >= 2 * h
    ]
    return finer[-1] if finer else None
