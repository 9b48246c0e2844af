"""The Grad-CAM target rule (:func:`~mmaudit.engine.layer_detection.detect_cam_target`) on
small hand-built models whose right answer is known by construction: the feature map that
feeds the global pool (after the residual add, the final norm and activation), not the last
conv; squeeze-excitation 1x1 maps and a text branch's 4-D maps do not count; a token model
gets the first norm of its last block; no spatial map gives None and a reason."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmaudit.engine.layer_detection import (
    POOL_INPUT_RULE,
    TOKEN_RULE,
    detect_cam_target,
    detect_gradcam_layer,
    spatial_layout,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _detect(model: nn.Module, size: int = 16, **kw: object):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    return detect_cam_target(model, lambda: model(x, **kw), x)


class Residual(nn.Module):
    """conv-BN-ReLU-conv-BN, + identity, ReLU (a ResNet basic block)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.act(y + x)


class ResNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.block = Residual(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.block(self.stem(x))).flatten(1))


def test_residual_block_target_is_the_block_output_after_add_and_relu() -> None:
    model = ResNetLike().eval()
    target = _detect(model)
    assert (target.layer, target.rule, target.layout, target.grid) == (
        "block",
        POOL_INPUT_RULE,
        "NCHW",
        (8, 8),
    )
    # the old rule picked the residual branch's conv, before BN, the add and the ReLU
    assert detect_gradcam_layer(model) == "block.conv2"
    seen: dict[str, torch.Tensor] = {}
    model.block.register_forward_hook(lambda _m, _i, o: seen.setdefault("out", o))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        model(x)
        pooled_input = model.block(model.stem(x))
    assert torch.equal(seen["out"], pooled_input) and bool((seen["out"] >= 0).all())


class MaxAvgPool(nn.Module):
    """features -> (adaptive max pool, adaptive avg pool) concatenated -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1)
        )
        self.act = nn.GELU()
        self.max, self.avg = nn.AdaptiveMaxPool2d(1), nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.act(self.features(x))
        return self.fc(torch.cat([self.max(f), self.avg(f)], 1).flatten(1))


def test_max_and_avg_pool_target_is_the_map_both_pools_read() -> None:
    assert _detect(MaxAvgPool().eval()).layer == "act"


class ExtraNorm(nn.Module):
    """The last conv's output goes through a final GroupNorm before the pool."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3))
        self.final_norm = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.final_norm(self.convs(x)).mean(dim=(2, 3)))


def test_a_final_norm_after_the_last_conv_is_included() -> None:
    target = _detect(ExtraNorm().eval())
    assert (target.layer, target.grid) == ("final_norm", (14, 14))


class SqueezeExcite(nn.Module):
    """A 1x1 squeeze-excitation gate mid-network (EfficientNet), then two more convs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.excite = nn.Conv2d(8, 8, 1)
        self.head_conv = nn.Conv2d(8, 16, 1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        a = a * torch.sigmoid(self.excite(self.squeeze(a)))
        return self.fc(self.bn(self.head_conv(a)).mean(dim=(2, 3)))


def test_a_squeeze_excitation_collapse_mid_network_is_not_the_pool() -> None:
    assert _detect(SqueezeExcite().eval()).layer == "bn"


class ImageAndText(nn.Module):
    """An image CNN, then a text branch whose 4-D attention-like maps run after it: they do
    not depend on the image, so they are not the image path."""

    def __init__(self) -> None:
        super().__init__()
        self.img = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.emb = nn.Embedding(10, 8)
        self.text_map = nn.Conv2d(1, 2, 1)
        self.fc = nn.Linear(4 + 2, 2)

    def forward(self, image: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        v = self.img(image).mean(dim=(2, 3))
        e = self.emb(ids)  # (B, 8, 8): an 8 x 8 "map" on a 16-pixel image's grid
        t = self.text_map(e[:, None]).mean(dim=(2, 3))
        return self.fc(torch.cat([v, t], 1))


def test_maps_that_do_not_depend_on_the_image_are_not_the_image_path() -> None:
    ids = torch.randint(0, 10, (2, 8))
    assert _detect(ImageAndText().eval(), ids=ids).layer == "img"


class TinyViT(nn.Module):
    """Patch conv -> tokens + class token -> two pre-norm blocks -> final norm -> class
    token (a ViT, where the last map is the patch embedding)."""

    class Block(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.norm1, self.mix, self.norm2, self.mlp = (
                nn.LayerNorm(d),
                nn.Linear(d, d),
                nn.LayerNorm(d),
                nn.Linear(d, d),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.mix(self.norm1(x)).mean(1, keepdim=True)
            return x + self.mlp(self.norm2(x))

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.Sequential(self.Block(d), self.Block(d))
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        return self.fc(self.norm(self.blocks(t))[:, 0])


def test_a_token_model_gets_the_first_norm_of_its_last_block() -> None:
    target = _detect(TinyViT().eval())
    assert (target.layer, target.rule) == ("blocks.1.norm1", TOKEN_RULE)
    assert (target.layout, target.grid, target.prefix) == ("NLC", (4, 4), 1)


class Flat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 16 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class InPlaceInput(ResNetLike):
    """Normalises its input in place: no forward with a grad-requiring leaf input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.sub_(0.5))


def test_an_in_place_op_on_the_input_falls_back_to_every_output() -> None:
    target = _detect(InPlaceInput().eval())
    assert target.layer == "block"


def test_no_spatial_map_gives_none_and_a_reason() -> None:
    target = _detect(Flat().eval())
    assert target.layer is None and "no module on the image path" in target.reason


def test_detection_leaves_the_model_as_it_was() -> None:
    model = ResNetLike().train()
    model.fc.weight.requires_grad_(False)
    _detect(model)
    assert model.training and not model.fc.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "fc.weight")
    assert all(not m._forward_hooks for m in model.modules())


def test_spatial_layout_tells_maps_from_token_internals() -> None:
    size = (224, 224)
    assert spatial_layout((2, 2048, 7, 7), 2, size) == ("NCHW", 7, 7)
    assert spatial_layout((2, 7, 7, 768), 2, size) == ("NHWC", 7, 7)  # Swin
    assert spatial_layout((2, 6, 197, 64), 2, size) is None  # ViT q / k per head
    assert spatial_layout((2, 6, 197, 197), 2, size) is None  # attention probabilities
    assert spatial_layout((2, 512, 1, 1), 2, size) is None  # pooled
    assert spatial_layout((2, 1280, 8, 8), 2, (299, 299)) == ("NCHW", 8, 8)  # Inception


# ------------------------------------------------- bring-your-own: refined by the saliency probe


class ResidualToy(nn.Module):
    """A 1-channel ResNet-like model for the saliency check's toy data (24 x 24): its last
    conv (``net.block.conv2``) is not the map the pool reads (``net``'s output)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential()
        self.net.add_module("stem", nn.Conv2d(1, 8, 3, padding=1))
        self.net.add_module("down", nn.Conv2d(8, 8, 3, stride=2, padding=1))
        self.net.add_module("block", Residual(8))
        self.fc = nn.Linear(8, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(image).mean(dim=(2, 3)))


def build_residual_toy() -> nn.Module:
    return ResidualToy().eval()


def test_saliency_probe_replaces_the_provisional_layer_and_records_the_rule(
    tmp_path: pytest.TempPathFactory,
) -> None:
    """At load no forward can run: the provisional last conv. The saliency check's probe
    forward on the first rows replaces it by the pool's input, records it in the adapter
    (the report's model.detected) with its rule, and LayerCAM gets the finer stem map."""
    from pathlib import Path

    import numpy as np
    from test_saliency import toy_config, write_toy_data

    from mmaudit.checks.contract import AuditContext
    from mmaudit.checks.saliency.layers import choose_cam_layers
    from mmaudit.checks.saliency.params import SaliencyParams
    from mmaudit.engine.config import AuditConfig
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.layer_detection import STATIC_RULE
    from mmaudit.engine.loading import load_model
    from mmaudit.methods.cams import grid_info

    folder = Path(str(tmp_path))
    write_toy_data(folder)
    raw = toy_config(folder, layers={"image": "net"})
    raw["model"]["factory"] = "test_layer_detection:build_residual_toy"
    raw["model"]["python_path"] = [str(Path(__file__).parent)]
    cfg = AuditConfig.model_validate(raw)
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    assert adapter.detected == {"gradcam": "net.block.conv2", "gradcam_rule": STATIC_RULE}
    ctx = AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=None, seed=0)  # type: ignore[arg-type]
    layers, out = choose_cam_layers(ctx, SaliencyParams(), np.arange(4), grid_info(adapter))
    # ``net`` returns its residual block's output (after the add and ReLU): of the modules
    # that give that same map, the outermost finishes last
    assert layers == {"gradcam": "net", "hirescam": "net", "layercam": "net.stem"}
    assert out.metrics["cam_layer"] == "net"
    assert out.metrics["cam_layer_rule"] == POOL_INPUT_RULE
    assert adapter.layers["gradcam"] == adapter.detected["gradcam"] == "net"
    assert adapter.detected["gradcam_rule"] == POOL_INPUT_RULE
    # an explicit layer still wins, and says so
    layers, out = choose_cam_layers(
        ctx, SaliencyParams(layer="net.down"), np.arange(4), grid_info(adapter)
    )
    assert layers["gradcam"] == "net.down"
    assert out.metrics["cam_layer_rule"] == "set by the saliency check's params.layer"
    assert adapter.hook_count() == 0
