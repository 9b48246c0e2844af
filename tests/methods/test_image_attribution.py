"""Image Integrated Gradients and occlusion maps: an analytic model with known
attributions, IG completeness and agreement with captum, occlusion finding its region."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_cams import _Adapter
from torch import nn

from mmaudit.methods.cams import compute_cams
from mmaudit.methods.image_attribution import gaussian_blur, integrated_gradients, occlusion_map
from mmaudit.methods.map_statistics import map_statistics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
        from mmaudit.methods.image_forward import repeat_batch

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


def test_occlusion_map_finds_the_region() -> None:
    region = torch.zeros(1, 1, 8, 8)
    region[..., 0:4, 0:4] = 1
    model = RegionSum(region, w=1.0)
    x = torch.ones(2, 1, 8, 8)
    occ = occlusion_map(model, x, torch.zeros_like(x), torch.ones(2, dtype=torch.long), 4, 4)
    assert torch.all(occ[:, 0:4, 0:4] == 16.0) and torch.all(occ[:, 4:, :] == 0)


def test_maps_within_a_memory_budget_equal_one_pass(sample_model: Any) -> None:
    """A budget that fits a few images per forward/backward splits the batch (and the IG
    nodes, and the occlusion windows) and gives the same maps as one pass."""
    from mmaudit.methods.cams import grid_info
    from mmaudit.methods.image_forward import ImageForward
    from mmaudit.methods.memory_budget import MemoryBudget

    adapter, batch = sample_model
    b = batch.select(slice(0, 12))
    with torch.no_grad(), adapter.capture(["text", "tabular"]) as store:
        adapter.logits(batch)
        fixed = {k: store[k].clone() for k in ("text", "tabular")}
    runner = ImageForward(adapter, fixed)
    layers = {"gradcam": adapter.layers["gradcam"], "hirescam": adapter.layers["gradcam"]}
    cls = torch.tensor([i % 2 for i in range(len(b))])
    info = grid_info(adapter)
    base = gaussian_blur(b.image, 4.0)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return runner(b, x)

    def forward_rows(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return runner(b.select(r), x)

    def run(budget: MemoryBudget | None) -> tuple[dict[str, torch.Tensor], ...]:
        kw: dict[str, Any] = {"budget": budget, "forward_rows": forward_rows}
        cams, _ = compute_cams(adapter, forward, b.image, cls, layers, info, **kw)
        ig, delta = integrated_gradients(
            forward, b.image, base, cls, 8, 4, module=adapter.module, **kw
        )
        occ = occlusion_map(forward, b.image, base, cls, 16, 16, module=adapter.module, **kw)
        return cams, {"ig": ig, "delta": delta, "occlusion": occ}

    with runner.active():
        whole_cams, whole = run(None)
        probe = MemoryBudget(10_000.0)
        run(probe)
        sizes = {name: plan.footprint for name, plan in probe.plans.items()}
        assert set(sizes) == {"CAMs", "image IG", "occlusion map"}
        assert all(fp.bytes_per_row > 0 for fp in sizes.values())
        # room for 5 rows of the costliest pass: every pass splits the batch of 12
        worst = max(sizes.values(), key=lambda fp: fp.bytes_per_row)
        tight = MemoryBudget(1.5 * (worst.fixed_bytes + 5 * worst.bytes_per_row) / 2**20)
        cams, split = run(tight)
    assert tight.plans["image IG"].rows_per_chunk < len(b)
    assert tight.plans["CAMs"].rows_per_chunk < len(b)
    for m in layers:
        torch.testing.assert_close(cams[m], whole_cams[m], rtol=1e-5, atol=1e-6)
    scale = float(whole["ig"].abs().max())
    torch.testing.assert_close(split["ig"], whole["ig"], rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(split["delta"], whole["delta"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(split["occlusion"], whole["occlusion"], rtol=1e-5, atol=1e-5)
