"""CAMs against pytorch-grad-cam (a CNN, the sample model, a ViT's token grid) and the
CAM formulas on known activations. The CNN, the adapter slice and the sample model it
loads are shared with the other image-attribution tests, which import them by module name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mmaudit.methods.cams import (
    GridInfo,
    cam_from,
    compute_cams,
    grid_info,
    infer_token_grid,
    to_grid,
    upsample,
)
from mmaudit.methods.image_forward import target_scores
from mmaudit.methods.map_similarity import spearman_rows

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TinyCNN(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> global average pool -> linear (2 classes)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(a.mean(dim=(2, 3)))


class _Adapter:
    """The slice of ModelAdapter that compute_cams uses (capture by dotted path)."""

    def __init__(self, module: nn.Module) -> None:
        from mmaudit.engine.adapter import ModelAdapter

        self.inner = ModelAdapter(
            module,
            source="test",
            modalities=("image",),
            keywords={"image": "image"},
            layers={},
            detected={},
            device=torch.device("cpu"),
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _package_raw_cam(
    model: nn.Module,
    layer: nn.Module,
    x: torch.Tensor,
    cls: list[int],
    method: str,
    reshape: Any = None,
) -> np.ndarray:
    """pytorch-grad-cam's un-normalised CAM (before its min-max scaling and resize)."""
    from pytorch_grad_cam import GradCAM, HiResCAM, LayerCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    klass = {"gradcam": GradCAM, "hirescam": HiResCAM, "layercam": LayerCAM}[method]
    cam = klass(model=model, target_layers=[layer], reshape_transform=reshape)
    try:
        targets = [ClassifierOutputTarget(c) for c in cls]
        outputs = cam.activations_and_grads(x)
        model.zero_grad()
        sum(t(o) for t, o in zip(targets, outputs, strict=True)).backward()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        raw = cam.get_cam_image(x, layer, targets, acts, grads, False)
        return np.maximum(raw, 0)
    finally:
        cam.activations_and_grads.release()


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam"])
def test_cams_match_pytorch_grad_cam_on_a_cnn(method: str) -> None:
    model = TinyCNN().eval()
    x = torch.randn(6, 1, 16, 16)
    cls = torch.tensor([0, 1, 0, 1, 1, 0])
    adapter = _Adapter(model)
    ours, _ = compute_cams(adapter, model, x, cls, {method: "conv2"})  # type: ignore[arg-type]
    ref = _package_raw_cam(model, model.conv2, x, cls.tolist(), method)
    np.testing.assert_allclose(ours[method].numpy(), ref, rtol=1e-4, atol=1e-6)
    assert adapter.hook_count() == 0


class _ImageOnly(nn.Module):
    """Image -> logits of the multimodal model, other inputs of ``batch`` fixed (what a user
    would wrap to call pytorch-grad-cam on it); two columns so class targets apply."""

    def __init__(self, adapter: Any, batch: Any) -> None:
        super().__init__()
        self.adapter, self.batch = adapter, batch
        self.model = adapter.module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.adapter.logits(self.batch.replace(image=x))
        return torch.cat([-z, z], dim=1)


def _rank_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return spearman_rows(a.reshape(len(a), -1), b.reshape(len(b), -1))


def test_gradcam_agrees_with_the_package_on_the_sample_model(sample_model: Any) -> None:
    adapter, batch = sample_model
    b = batch.select(slice(0, 12))
    with torch.no_grad():
        z = adapter.logits(b)[:, 0]
    cls = (z > 0).long()
    layer = adapter.layers["gradcam"]
    ours, _ = compute_cams(
        adapter,
        lambda x: adapter.logits(b.replace(image=x)),
        b.image,
        cls,
        {"gradcam": layer, "hirescam": layer},
        grid_info(adapter),
    )
    wrapper = _ImageOnly(adapter, b)
    for method in ("gradcam", "hirescam"):
        ref = _package_raw_cam(wrapper, adapter.get("gradcam"), b.image, cls.tolist(), method)
        live = ref.reshape(len(ref), -1).std(1) > 0
        rho = _rank_corr(ours[method].numpy()[live], ref[live])
        assert np.all(rho >= 0.99), (method, rho)
    assert adapter.hook_count() == 0


def test_vit_token_maps_match_the_package_with_its_reshape_transform() -> None:
    from mmaudit.engine.models import ArchitectureSpec, ImageSpec, build_model

    spec = ArchitectureSpec(
        modalities=["image"],
        image=ImageSpec(
            timm_name="vit_tiny_patch16_224",
            img_size=32,
            timm_kwargs={"patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2},
        ),
        dim=8,
        num_outputs=2,
    )
    torch.manual_seed(0)
    model = build_model(spec).eval()
    from mmaudit.engine.adapter import ModelAdapter

    adapter = ModelAdapter(
        model,
        source="test",
        modalities=("image",),
        keywords={"image": "image"},
        layers=model.default_layers(),
        detected={},
        device=torch.device("cpu"),
    )
    info = grid_info(adapter)
    assert info.grid == (4, 4) and info.prefix == 1
    x = torch.randn(5, 1, 32, 32)
    cls = torch.tensor([0, 1, 1, 0, 1])
    ours, _ = compute_cams(adapter, lambda t: model(image=t), x, cls, {"gradcam": "gradcam"}, info)
    assert ours["gradcam"].shape == (5, 4, 4)

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.inner(image=t)

    ref = _package_raw_cam(Plain(), adapter.get("gradcam"), x, cls.tolist(), "gradcam", reshape)
    np.testing.assert_allclose(ours["gradcam"].numpy(), ref, rtol=1e-4, atol=1e-6)
    # without grid facts the square grid (and the class token) is inferred
    assert infer_token_grid(17) == ((4, 4), 1)
    t = torch.randn(2, 17, 3)
    assert torch.equal(to_grid(t), to_grid(t, GridInfo((4, 4), 1)))


def test_cam_formulas_on_known_activations() -> None:
    act = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # (1, 2, 1, 2)
    grad = torch.tensor([[[[1.0, -1.0]], [[2.0, 2.0]]]])
    # gradcam weights: channel means 0 and 2 -> 2 * [3, 0]
    assert torch.equal(cam_from(act, grad, "gradcam"), torch.tensor([[[6.0, 0.0]]]))
    # hirescam: sum_c grad*act = [1 + 6, -2 + 0] -> ReLU
    assert torch.equal(cam_from(act, grad, "hirescam"), torch.tensor([[[7.0, 0.0]]]))
    # layercam: sum_c relu(grad)*act = [1 + 6, 0 + 0]
    assert torch.equal(cam_from(act, grad, "layercam"), torch.tensor([[[7.0, 0.0]]]))
    z = torch.tensor([[2.0], [-3.0]])
    assert torch.equal(target_scores(z, torch.tensor([1, 0])), torch.tensor([2.0, 3.0]))
    assert torch.equal(upsample(torch.ones(2, 4, 4), (8, 8)), torch.ones(2, 8, 8))
