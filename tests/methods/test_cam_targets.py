"""The default Grad-CAM target on real architectures (timm, random init, 224 x 224):
mmaudit's detection (:func:`~mmaudit.engine.layer_detection.detect_cam_target`) plus its
CAMs (:mod:`mmaudit.methods.cams`) against pytorch-grad-cam's ``GradCAM`` at the target its
README recommends for the family (``layer4[-1]`` for ResNet, ``features[-1]`` for DenseNet,
``blocks[-1].norm1`` with its reshape_transform for ViT; for ConvNeXt and EfficientNet the
same "last feature block" choice: ``stages[-1]`` and the final conv's ``bn2``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from test_cams import _package_raw_cam
from torch import nn

from mmaudit.engine.layer_detection import POOL_INPUT_RULE, TOKEN_RULE, detect_cam_target
from mmaudit.methods.cams import GridInfo, compute_cams
from mmaudit.methods.map_similarity import spearman_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 224


def _vit_reshape(t: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's documented ViT reshape: drop the class token, 14 x 14 grid."""
    return t[:, 1:].reshape(t.shape[0], 14, 14, t.shape[2]).permute(0, 3, 1, 2)


#: timm name -> (the package's recommended target, its reshape_transform, rule, our layer)
CASES: dict[str, tuple[Callable[[Any], nn.Module], Any, str, str]] = {
    "resnet50": (lambda m: m.layer4[-1], None, POOL_INPUT_RULE, "layer4"),
    "densenet121": (lambda m: m.features[-1], None, POOL_INPUT_RULE, "features"),
    "convnext_tiny": (lambda m: m.stages[-1], None, POOL_INPUT_RULE, "norm_pre"),
    "efficientnet_b0": (lambda m: m.bn2, None, POOL_INPUT_RULE, "bn2"),
    "vit_small_patch16_224": (
        lambda m: m.blocks[-1].norm1,
        _vit_reshape,
        TOKEN_RULE,
        "blocks.11.norm1",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_default_gradcam_maps_equal_the_package_at_its_recommended_target(name: str) -> None:
    import timm

    from mmaudit.engine.adapter import ModelAdapter

    recommended, reshape, rule, expected = CASES[name]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    blank = torch.zeros(1, 3, SIZE, SIZE)
    target = detect_cam_target(model, lambda: model(blank), blank)
    assert (target.layer, target.rule) == (expected, rule)
    assert target.grid == ((14, 14) if target.layout == "NLC" else (7, 7))
    adapter = ModelAdapter(
        model,
        source="test",
        modalities=("image",),
        keywords={"image": "image"},
        layers={"gradcam": target.layer},
        detected={},
        device=torch.device("cpu"),
    )
    info = GridInfo(target.grid, target.prefix, "NHWC" if target.layout == "NHWC" else "NCHW")
    with torch.no_grad():
        cls = model(x).argmax(1)  # the predicted class, Grad-CAM's usual target
    ours, _ = compute_cams(adapter, model, x, cls, {"gradcam": "gradcam"}, info)  # type: ignore[arg-type]
    ref = _package_raw_cam(model, recommended(model), x, cls.tolist(), "gradcam", reshape)
    assert ours["gradcam"].shape == ref.shape
    a, b = ours["gradcam"].numpy().reshape(2, -1), ref.reshape(2, -1)
    live = b.std(1) > 0
    assert live.any() and np.array_equal(a.std(1) > 0, live)
    rho = spearman_rows(a[live], b[live])
    assert np.all(rho >= 0.99), rho
    assert adapter.hook_count() == 0
