"""Loading checkpoints: bring-your-own factory + weights, TorchScript, layers, hooks, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from conftest import byo_model_config
from torch import nn

from mmaudit.config import ModelConfig, RuntimeConfig
from mmaudit.errors import DeviceError, ModelLoadError
from mmaudit.model import load_model, resolve_device


class TinyFusion(nn.Module):
    """A user's own image + labs model, defined here and loaded by factory + weights."""

    def __init__(self, width: int = 8, n_tab: int = 2) -> None:
        super().__init__()
        self.img = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.tab = nn.Linear(n_tab, 4)
        self.fuse = nn.Linear(8, width)
        self.out = nn.Linear(width, 1)

    def forward(self, image: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        fused = torch.relu(self.fuse(torch.cat([self.img(image), self.tab(tabular)], dim=1)))
        return self.out(fused)


def build_tiny(width: int = 8, n_tab: int = 2) -> TinyFusion:
    """The factory a config names as ``test_model:build_tiny``."""
    torch.manual_seed(0)
    return TinyFusion(width, n_tab)


def _adapter(cfg: dict[str, object]):  # type: ignore[no-untyped-def]
    return load_model(
        ModelConfig.model_validate(cfg), ("image", "tabular"), RuntimeConfig(device="cpu")
    )


def test_factory_with_safetensors_and_pt_give_same_model(tiny_weights: Path) -> None:
    a = _adapter(byo_model_config(tiny_weights / "tiny.safetensors"))
    b = _adapter(byo_model_config(tiny_weights / "tiny.pt"))
    x = torch.randn(3, 1, 16, 16)
    t = torch.randn(3, 2)
    assert torch.equal(a.module(x, t), b.module(x, t))
    assert a.layers["embedding"] == "fuse"
    assert a.detected == {"gradcam": "img.2"}  # last conv under the image encoder
    assert a.keywords == {"image": "image", "tabular": "tabular"}


def test_capture_replace_substitute_release_hooks(tiny_weights: Path) -> None:
    from mmaudit.data import Batch

    a = _adapter(byo_model_config(tiny_weights / "tiny.safetensors"))
    batch = Batch(
        index=torch.arange(3),
        present=torch.ones(3, 2, dtype=torch.bool),
        target=torch.zeros(3),
        image=torch.randn(3, 1, 16, 16),
        tabular=torch.randn(3, 2),
    )
    base = a.logits(batch)
    with a.capture(["embedding", "image"]) as store:
        again = a.logits(batch)
        assert a.hook_count() == 2
    assert torch.equal(base, again)
    assert store["embedding"].shape == (3, 8) and store["image"].shape == (3, 4)
    with a.replace_output("embedding", torch.zeros_like):
        zeroed = a.logits(batch)
    expected = a.module.out(torch.zeros(3, 8))
    assert torch.allclose(zeroed, expected)
    with a.substitute("image", lambda: store["image"]):
        reused = a.logits(batch.replace(image=torch.zeros(3, 1, 16, 16)))
    assert torch.allclose(reused, base)
    assert a.hook_count() == 0
    assert isinstance(a.module.img, nn.Sequential)  # the original module is back


def test_state_dict_that_does_not_fit_lists_keys(tiny_weights: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bad = {k.replace("fuse", "fusion"): v for k, v in build_tiny().state_dict().items()}
    save_file(bad, tmp_path / "bad.safetensors")
    with pytest.raises(ModelLoadError) as err:
        _adapter(byo_model_config(tmp_path / "bad.safetensors"))
    text = str(err.value)
    assert "missing 2 keys" in text and "fuse.weight" in text and "fusion.weight" in text


def test_width_mismatch_is_reported_as_shape(tiny_weights: Path) -> None:
    cfg = byo_model_config(tiny_weights / "tiny.safetensors")
    cfg["kwargs"] = {"width": 5}
    with pytest.raises(ModelLoadError, match="shape mismatch"):
        _adapter(cfg)


def test_pickle_needing_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": build_tiny()}, path)  # pickles a class: needs arbitrary code to load
    with pytest.raises(ModelLoadError, match="refused"):
        _adapter(byo_model_config(path))
    assert pickle  # keeps the import meaningful for readers: this is the pickle risk


def test_factory_import_error_names_module(tiny_weights: Path) -> None:
    cfg = byo_model_config(tiny_weights / "tiny.pt")
    cfg["factory"] = "no_such_module_xyz:build"
    with pytest.raises(ModelLoadError, match="cannot import module 'no_such_module_xyz'"):
        _adapter(cfg)
    cfg["factory"] = "test_model:build_tinyy"
    with pytest.raises(ModelLoadError) as err:
        _adapter(cfg)
    assert "did you mean 'build_tiny'" in err.value.one_line()


def test_bad_layer_path_suggests_close_names(tiny_weights: Path) -> None:
    cfg = byo_model_config(tiny_weights / "tiny.pt", layers={"embedding": "fusee"})
    with pytest.raises(ModelLoadError) as err:
        _adapter(cfg)
    assert "model.layers.embedding" in str(err.value) and "'fuse'" in err.value.one_line()


def test_torchscript_loads_without_hooks(tiny_weights: Path) -> None:
    a = _adapter({"torchscript": str(tiny_weights / "tiny_script.pt")})
    assert not a.supports_hooks
    x, t = torch.randn(2, 1, 16, 16), torch.randn(2, 2)
    ref = _adapter(byo_model_config(tiny_weights / "tiny.pt"))
    assert torch.allclose(a.module(x, t), ref.module(x, t), atol=1e-6)


def test_cuda_where_there_is_none() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
