"""The saliency engine: CAMs against pytorch-grad-cam, IG completeness and captum, analytic
models with known attributions, batch-size invariance, map statistics, region fills,
hotspot boxes, the shifted-map null and the randomisation helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mmaudit.methods.saliency_maps import (
    GridInfo,
    ImageForward,
    border_band,
    cam_from,
    cascade_stages,
    compute_cams,
    concentration,
    free_positions,
    gaussian_blur,
    graft,
    grid_info,
    infer_token_grid,
    integrated_gradients,
    linear_fill,
    map_statistics,
    minmax,
    occlusion_map,
    parametrised_leaves,
    peak_boxes,
    randomise_,
    shifted_null,
    spearman_rows,
    ssim,
    target_scores,
    to_grid,
    upsample,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


@pytest.fixture(scope="module")
def sample_model() -> tuple[Any, Any]:
    """The bundled shortcut checkpoint and 16 test rows of the sample."""
    from mmaudit.engine.adapter import load_model
    from mmaudit.engine.config import load_config
    from mmaudit.engine.data import build_dataset

    cfg = load_config(ROOT / "configs" / "sample.yaml")
    cfg.runtime.device = "cpu"
    cfg.runtime.max_samples = 32
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    batch = ds.collate([ds[i] for i in range(len(ds))])
    return adapter, batch


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


# ----------------------------------------------------------------------------- analytic


class RegionSum(nn.Module):
    """logit = sum over a fixed region R of the pixels (times w): IG from a zero baseline is
    exactly w * x on R and 0 elsewhere; every CAM at ``ident`` is w * x (ReLU'd) on R."""

    def __init__(self, region: torch.Tensor, w: float = 2.0) -> None:
        super().__init__()
        self.ident = nn.Identity()
        self.register_buffer("region", region.float())
        self.w = w

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        a = self.ident(image)
        return (self.w * a * self.region).sum(dim=(1, 2, 3))[:, None]


def test_analytic_region_model_gets_exactly_its_attribution() -> None:
    region = torch.zeros(1, 1, 8, 8)
    region[..., 2:5, 3:6] = 1
    model = RegionSum(region)
    x = torch.rand(4, 1, 8, 8)
    cls = torch.ones(4, dtype=torch.long)
    attr, delta = integrated_gradients(model, x, torch.zeros_like(x), cls, n_steps=4)
    torch.testing.assert_close(attr, 2.0 * x * region)
    assert delta.abs().max() < 1e-5
    # negative class: the explained score is -logit, the attribution flips sign
    attr_neg, _ = integrated_gradients(model, x, torch.zeros_like(x), 1 - cls, n_steps=4)
    torch.testing.assert_close(attr_neg, -attr)
    adapter = _Adapter(model)
    cams, _ = compute_cams(adapter, model, x, cls, {"hirescam": "ident", "layercam": "ident"})  # type: ignore[arg-type]
    for cam in cams.values():
        torch.testing.assert_close(cam, (2.0 * x * region)[:, 0])
    stats = map_statistics(cams["hirescam"], roi=region[:, 0].expand(4, -1, -1))
    assert torch.allclose(stats["off_roi"], torch.zeros(4))
    assert torch.all(stats["pointing"] == 1) and torch.allclose(stats["rank_acc"], torch.ones(4))


def test_ig_completeness_and_captum_agreement(sample_model: Any) -> None:
    from captum.attr import IntegratedGradients

    adapter, batch = sample_model
    b = batch.select(slice(0, 6))
    with torch.no_grad():
        cls = (adapter.logits(b)[:, 0] > 0).long()
    base = gaussian_blur(b.image, 4.0)

    def forward(x: torch.Tensor) -> torch.Tensor:
        from mmaudit.methods.saliency_maps import repeat_batch

        return adapter.logits(repeat_batch(b, x.shape[0] // len(b), x))

    attr, delta = integrated_gradients(forward, b.image, base, cls, n_steps=32, chunk=8)
    gap = (attr.sum(dim=(1, 2, 3)) - delta).abs()
    # completeness: sum(attr) = f(x) - f(baseline) within 5 % + 0.02 logits with 32
    # Gauss-Legendre steps (a ReLU network is only piecewise smooth), and the error
    # shrinks with more steps
    assert torch.all(delta.abs() <= 0.05 * gap + 0.02), (delta, gap)
    _, coarse = integrated_gradients(forward, b.image, base, cls, n_steps=4, chunk=4)
    assert delta.abs().mean() < coarse.abs().mean()

    sign = (2 * cls - 1).float()

    def captum_forward(x: torch.Tensor) -> torch.Tensor:
        return forward(x)[:, 0] * sign.repeat(x.shape[0] // len(b))

    ref = IntegratedGradients(captum_forward).attribute(
        b.image, baselines=base, n_steps=32, method="gausslegendre", internal_batch_size=6
    )
    torch.testing.assert_close(attr, ref.float(), rtol=1e-3, atol=1e-4)


def test_batch_size_invariance_of_cams_and_ig(sample_model: Any) -> None:
    adapter, batch = sample_model
    fixed = {}
    with torch.no_grad(), adapter.capture(["text", "tabular"]) as store:
        adapter.logits(batch)
        fixed = {k: store[k].clone() for k in ("text", "tabular")}
    runner = ImageForward(adapter, fixed)
    layers = {"gradcam": adapter.layers["gradcam"], "layercam": adapter.layers["gradcam"]}
    cls = torch.tensor([i % 2 for i in range(len(batch))])
    info = grid_info(adapter)
    # cached rows are indexed by the batch's dataset index: fixed holds rows 0..31 in order
    with runner.active():
        full, _ = compute_cams(adapter, lambda x: runner(batch, x), batch.image, cls, layers, info)
        ig_full, _ = integrated_gradients(
            lambda x: runner(batch, x), batch.image, gaussian_blur(batch.image, 4.0), cls, 8, 4
        )
        for i in (0, 7, 31):
            one = batch.select(slice(i, i + 1))
            single, _ = compute_cams(
                adapter, lambda x, one=one: runner(one, x), one.image, cls[i : i + 1], layers, info
            )
            for m in layers:
                torch.testing.assert_close(single[m][0], full[m][i], rtol=1e-4, atol=1e-5)
            ig_one, _ = integrated_gradients(
                lambda x, one=one: runner(one, x),
                one.image,
                gaussian_blur(one.image, 4.0),
                cls[i : i + 1],
                8,
                4,
            )
            scale = float(ig_full[i].abs().max())
            torch.testing.assert_close(ig_one[0], ig_full[i], rtol=1e-3, atol=1e-3 * scale)
    # the substituted encoders give the same logits as the full model
    with torch.no_grad():
        reference = adapter.logits(batch)
        with runner.active():
            torch.testing.assert_close(runner(batch, batch.image), reference)
    assert adapter.hook_count() == 0
    assert type(adapter.get("text")).__name__ == "TextEncoder"


# ----------------------------------------------------------------------------- statistics


def test_map_statistics_on_hand_made_maps() -> None:
    maps = torch.zeros(3, 10, 10)
    maps[0, 0, 0] = 1.0  # all mass in the corner: border, off-ROI
    maps[1, 4:6, 4:6] = 1.0  # all mass inside the ROI
    maps[2] = -1.0  # no positive evidence: a dead map
    roi = torch.zeros(3, 10, 10)
    roi[:, 3:7, 3:7] = 1
    st = map_statistics(maps, roi, border=0.1)
    assert st["off_roi"][0] == 1 and st["off_roi"][1] == 0 and torch.isnan(st["off_roi"][2])
    assert torch.allclose(st["off_roi_chance"], torch.full((3,), 0.84))
    assert st["pointing"][0] == 0 and st["pointing"][1] == 1
    assert st["rank_acc"][1] == 0.25  # 4 of the top-16 pixels are inside the 16-pixel ROI
    assert st["border"][0] == 1 and st["border"][1] == 0
    assert st["border_chance"][0] == pytest.approx(0.36)
    assert st["mass"][2] == 0 and torch.isnan(st["top"][2])
    unknown = roi.clone()
    unknown[0] = float("nan")
    assert torch.isnan(map_statistics(maps, unknown)["off_roi"][0])
    assert border_band((10, 10), 0.1, "cpu").sum() == 36


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


def test_linear_fill_reproduces_linear_images_and_handles_edges() -> None:
    rr, cc = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    ramp = (0.5 * rr + 0.25 * cc)[None, None].repeat(3, 1, 1, 1)
    r0 = torch.tensor([3, 0, 8])
    c0 = torch.tensor([4, 0, 8])
    filled = linear_fill(ramp, r0, c0, 4, 4, noise=0.0)
    # inside the image the Coons patch of a bilinear surface is the surface itself
    torch.testing.assert_close(filled[0], ramp[0])
    # at the top-left corner the missing sides borrow the opposite ones: still finite,
    # within the ring's range, and only the box changed
    box = torch.zeros(12, 12, dtype=torch.bool)
    box[0:4, 0:4] = True
    assert torch.equal(filled[1, 0][~box], ramp[1, 0][~box])
    assert torch.isfinite(filled).all()
    bright = ramp.clone()
    bright[:, :, 0:4, 0:4] = 100.0  # a marker
    cleared = linear_fill(bright, r0[1:2], c0[1:2], 4, 4, noise=0.0)
    assert cleared[0, 0, 0:4, 0:4].max() < 10.0
    noisy = linear_fill(ramp, r0, c0, 4, 4, noise=1.0, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(noisy[0], ramp[0])


def test_free_positions_and_peak_boxes() -> None:
    roi = torch.zeros(1, 10, 10)
    roi[0, 3:7, 3:7] = 1
    ok = free_positions(roi, (10, 10), 3, 3, exclude=[(0, 3, 7, 10)])
    assert ok.shape == (1, 8, 8)
    assert not ok[0, 3, 3] and not ok[0, 1, 1]  # touches the ROI
    assert ok[0, 0, 0] and not ok[0, 0, 7]  # the excluded box
    mean = torch.zeros(20, 20)
    mean[1, 1] = 5.0  # the sharpest peak, in the corner
    mean[10, 10] = 9.0  # higher, but inside the forbidden ROI
    mean[15, 3] = 2.0
    forbidden = torch.zeros(20, 20, dtype=torch.bool)
    forbidden[6:14, 6:14] = True
    boxes = peak_boxes(mean, 4, 4, forbidden, k=3)
    assert boxes[0][:2] == (0, 0)  # around (1, 1), clipped at the edge
    assert boxes[1][0] <= 15 < boxes[1][0] + 4 and boxes[1][1] <= 3 < boxes[1][1] + 4
    assert boxes[0][2] == pytest.approx(5.0 / 16.0)


def test_shifted_null_separates_recurring_from_scattered_peaks() -> None:
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    recurring = torch.zeros(40, 16, 16)
    recurring[:, 2, 3] = 1.0
    scattered = torch.zeros(40, 16, 16)
    for i in range(40):
        scattered[i, rng.integers(16), rng.integers(16)] = 1.0
    for maps, expect_high in ((recurring, True), (scattered, False)):
        obs = float(concentration(maps.mean(0)))
        null = shifted_null(maps, 100, gen).numpy()
        p = (1 + np.sum(null >= obs)) / 101
        assert (p < 0.05) == expect_high, (obs, null.mean())


def test_similarity_measures() -> None:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a, b = rng.random((5, 30)), rng.random((5, 30))
    b[:, :5] = 0.0  # ties
    rho = spearman_rows(a, b)
    for i in range(5):
        assert rho[i] == pytest.approx(spearmanr(a[i], b[i]).statistic)
    assert np.isnan(spearman_rows(np.ones((1, 4)), a[:1, :4]))[0]
    x = minmax(torch.rand(3, 12, 12))
    assert torch.allclose(ssim(x, x), torch.ones(3))
    assert (ssim(x, minmax(torch.rand(3, 12, 12))) < 0.5).all()


def test_occlusion_map_finds_the_region() -> None:
    region = torch.zeros(1, 1, 8, 8)
    region[..., 0:4, 0:4] = 1
    model = RegionSum(region, w=1.0)
    x = torch.ones(2, 1, 8, 8)
    occ = occlusion_map(model, x, torch.zeros_like(x), torch.ones(2, dtype=torch.long), 4, 4)
    assert torch.all(occ[:, 0:4, 0:4] == 16.0) and torch.all(occ[:, 4:, :] == 0)


def test_graft_and_randomise_leave_the_original_untouched() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.ReLU(), nn.Conv2d(2, 2, 1)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    leaves = parametrised_leaves(model)
    assert leaves == ["1.1", "0"]  # nearest the output first
    assert cascade_stages(leaves, 5) == [["1.1"], ["1.1", "0"]]
    import copy

    inner = copy.deepcopy(model[1])
    randomise_(inner, parametrised_leaves(inner), torch.Generator().manual_seed(0))
    shell = graft(model, "1", inner)
    assert shell[1] is inner and model[1] is not inner and shell[0] is model[0]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert not torch.equal(shell[1][1].weight, model[1][1].weight)
    assert graft(model, "", inner) is inner


def test_shifted_null_in_sample_blocks_equals_the_one_block_result() -> None:
    """Blocking over samples (bounded memory) draws the same shifts and sums the same maps."""
    maps = torch.rand(37, 8, 8)
    maps = maps / maps.sum(dim=(1, 2), keepdim=True)
    whole = shifted_null(maps, 20, torch.Generator().manual_seed(3), max_elements=1 << 30)
    blocked = shifted_null(maps, 20, torch.Generator().manual_seed(3), max_elements=16 * 64 * 5)
    assert torch.allclose(whole, blocked, atol=1e-6)
