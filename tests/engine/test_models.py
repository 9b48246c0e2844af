"""The built-in model family: shapes, missing-modality handling, checkpoints, layers.

Models are tiny (32x32 images, 2-layer 32-wide BERT) so the whole file runs in seconds
on a 2-core CPU; every model is run in eval mode so BatchNorm does not mix samples.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mmaudit.engine.errors import ModelLoadError
from mmaudit.engine.layer_detection import POOL_INPUT_RULE, TOKEN_RULE
from mmaudit.engine.models import (
    ArchitectureSpec,
    ImageSpec,
    MultimodalModel,
    TabularSpec,
    TextSpec,
    build_model,
    load_checkpoint,
    save_checkpoint,
    tiny_image_spec,
    tiny_text_spec,
)

FUSIONS = ["concat", "attention", "projection", "bilinear", "late"]
ALL = ["image", "text", "tabular"]
B, L, IMG, NF, VOCAB = 6, 10, 32, 5, 50


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_spec(
    fusion: str = "concat",
    modalities: list[str] | None = None,
    missing_tokens: bool = False,
    **changes: Any,
) -> ArchitectureSpec:
    """A small spec with every listed modality (default all three)."""
    modalities = modalities or ALL
    parts: dict[str, Any] = {
        "image": tiny_image_spec(IMG),
        "text": TextSpec(
            vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64
        ),
        "tabular": TabularSpec(n_features=NF, hidden=[16]),
    }
    kwargs: dict[str, Any] = {m: parts[m] for m in modalities}
    kwargs.update(changes)
    return ArchitectureSpec(
        modalities=modalities,
        dim=32,
        fusion=fusion,
        num_outputs=3,
        missing_tokens=missing_tokens,
        **kwargs,
    )


def make(spec: ArchitectureSpec, seed: int = 0) -> MultimodalModel:
    torch.manual_seed(seed)
    return build_model(spec).eval()


def make_inputs(seed: int = 0, batch: int = B) -> dict[str, torch.Tensor]:
    """Random inputs; sample i has 10 - i % 4 real tokens, the rest is padding (id 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, L), generator=g)
    mask = torch.ones(batch, L, dtype=torch.long)
    for i in range(batch):
        mask[i, L - i % 4 :] = 0
    ids[mask == 0] = 0
    return {
        "image": torch.randn(batch, 1, IMG, IMG, generator=g),
        "input_ids": ids,
        "attention_mask": mask,
        "tabular": torch.randn(batch, NF, generator=g),
    }


def run(model: MultimodalModel, inputs: dict[str, Any], **override: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(**{**inputs, **override})


# ---------------------------------------------------------------------- spec


def test_spec_defaults_validation_and_forbid_extra() -> None:
    spec = ArchitectureSpec(modalities=["image", "text"])
    assert spec.image == ImageSpec() and spec.text == TextSpec()
    with pytest.raises(ValueError, match="n_features"):
        ArchitectureSpec(modalities=["tabular"])
    with pytest.raises(ValueError, match="not in modalities"):
        ArchitectureSpec(modalities=["image"], tabular=TabularSpec(n_features=2))
    with pytest.raises(ValueError, match="extra"):
        ArchitectureSpec.model_validate({"modalities": ["image"], "fusoin": "concat"})
    with pytest.raises(ValueError, match="duplicates"):
        ArchitectureSpec(modalities=["image", "image"])
    round_trip = ArchitectureSpec.model_validate_json(small_spec("late").model_dump_json())
    assert round_trip == small_spec("late")


def test_import_is_light() -> None:
    code = (
        "import sys, mmaudit.engine.models; "
        "print('timm' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------- forward


@pytest.mark.parametrize("fusion", FUSIONS)
def test_forward_shapes_and_backward(fusion: str) -> None:
    model = make(small_spec(fusion))
    x = make_inputs()
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(path).register_forward_hook(
            lambda _m, _i, out, key=key: captured.__setitem__(key, out)
        )
        for key, path in model.default_layers().items()
    ]
    logits = model(**x)
    for h in hooks:
        h.remove()
    assert logits.shape == (B, 3)
    assert captured["embedding"].shape == (B, model.fused_dim)
    if fusion == "attention":
        assert captured["image"].shape == (B, model.image_encoder.num_tokens, 32)
        assert captured["text"].shape == (B, L, 32)
        assert captured["tabular"].shape == (B, 1, 32)
    else:
        for key in ALL:
            assert captured[key].shape == (B, 32)
    if fusion == "projection":
        norms = torch.stack([captured[k].norm(dim=-1) for k in ALL])
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    expected = {"concat": 96, "attention": 64, "projection": 32, "bilinear": 96 + 3 * 16}
    assert model.fused_dim == expected.get(fusion, 96)
    logits.sum().backward()
    assert model.fusion is not None and model.head is not None


@pytest.mark.parametrize("fusion", FUSIONS)
def test_single_modality_models(fusion: str) -> None:
    x = make_inputs()
    for modality, keys in [("image", ["image"]), ("text", ["input_ids", "attention_mask"])]:
        model = make(small_spec(fusion, [modality]))
        assert run(model, {k: x[k] for k in keys}).shape == (B, 3)


def test_present_none_equals_all_true() -> None:
    model = make(small_spec("attention", missing_tokens=True))
    x = make_inputs()
    assert torch.equal(run(model, x), run(model, x, present=torch.ones(B, 3, dtype=torch.bool)))


@pytest.mark.parametrize("missing_tokens", [False, True])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_absent_modality_input_does_not_matter(fusion: str, missing_tokens: bool) -> None:
    model = make(small_spec(fusion, missing_tokens=missing_tokens))
    x, other = make_inputs(0), make_inputs(1)
    absent = torch.tensor([True, False, True, False, True, False])
    for i, (modality, keys) in enumerate(
        [("image", ["image"]), ("text", ["input_ids", "attention_mask"]), ("tabular", ["tabular"])]
    ):
        present = torch.ones(B, 3, dtype=torch.bool)
        present[absent, i] = False
        changed = dict(x)
        for k in keys:
            changed[k] = torch.where(absent.view(-1, *[1] * (x[k].dim() - 1)), other[k], x[k])
        a = run(model, x, present=present)
        b = run(model, changed, present=present)
        assert torch.allclose(a[absent], b[absent], atol=1e-5), modality
        # the modality is really used by the samples where it is present
        c = run(model, {**x, **{k: other[k] for k in keys}}, present=present)
        assert not torch.allclose(a[~absent], c[~absent], atol=1e-5), modality


@pytest.mark.parametrize("missing_tokens", [False, True])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_input_none_equals_all_absent(fusion: str, missing_tokens: bool) -> None:
    model = make(small_spec(fusion, missing_tokens=missing_tokens))
    x = make_inputs()
    for i, keys in enumerate([["image"], ["input_ids", "attention_mask"], ["tabular"]]):
        present = torch.ones(B, 3, dtype=torch.bool)
        present[:, i] = False
        given = run(model, x, present=present)
        dropped = run(model, {k: v for k, v in x.items() if k not in keys})
        assert torch.allclose(given, dropped, atol=1e-5), keys


def test_hook_sees_raw_encoder_output_and_can_replace_it() -> None:
    model = make(small_spec("concat", missing_tokens=True))
    x = make_inputs()
    present = torch.ones(B, 3, dtype=torch.bool)
    present[0, 0] = False
    seen: list[torch.Tensor] = []
    h = model.image_encoder.register_forward_hook(lambda _m, _i, out: seen.append(out))
    run(model, x, present=present)
    h.remove()
    assert not torch.allclose(seen[0][0], model.missing["image"])  # replaced after the hook
    base = run(model, x, present=present)
    h = model.image_encoder.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
    zeroed = run(model, x, present=present)
    h.remove()
    assert torch.allclose(base[0], zeroed[0])  # absent: missing token either way
    assert not torch.allclose(base[1:], zeroed[1:])


class _Cached(nn.Module):
    """Stands in for an encoder and returns a stored output (as the audit's cache does)."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, *args: Any) -> torch.Tensor:
        return self.out


@pytest.mark.parametrize("fusion", ["attention", "late"])
def test_encoder_can_be_swapped_for_cached_output(fusion: str) -> None:
    model = make(small_spec(fusion, missing_tokens=True))
    x = make_inputs()
    present = torch.ones(B, 3, dtype=torch.bool)
    present[0, 0] = False
    with torch.no_grad():
        cached = model.image_encoder(x["image"])
    expected = run(model, x, present=present)
    original = model.image_encoder
    model.set_submodule("image_encoder", _Cached(cached))
    try:
        assert torch.equal(run(model, x, present=present), expected)
    finally:
        model.set_submodule("image_encoder", original)


def test_bad_inputs_raise_clear_errors() -> None:
    model = make(small_spec("concat"))
    x = make_inputs()
    with pytest.raises(ValueError, match="present must be"):
        run(model, x, present=torch.ones(B, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="tabular must be"):
        run(model, x, tabular=torch.zeros(B, NF + 1))
    with pytest.raises(ValueError, match="no input given"):
        run(model, {})
    only_image = make(small_spec("concat", ["image"]))
    with pytest.raises(ValueError, match="takes"):
        run(only_image, {"image": x["image"], "tabular": x["tabular"]})


# ---------------------------------------------------------------------- attention


def test_attention_weights_rows_sum_to_one_and_absent_keys_get_zero() -> None:
    model = make(small_spec("attention"))
    x = make_inputs()
    present = torch.ones(B, 3, dtype=torch.bool)
    present[0, 0] = False  # sample 0: no image
    present[1, 2] = False  # sample 1: no labs
    run(model, x, present=present)
    w = model.fusion.last_attention
    assert w is not None
    t_img = model.image_encoder.num_tokens
    assert w.shape == (B, 2, L, t_img + 1)
    assert torch.allclose(w.sum(-1), torch.ones(B, 2, L), atol=1e-5)
    assert torch.all(w[0, :, :, :t_img] == 0)
    assert torch.all(w[1, :, :, t_img:] == 0)
    assert torch.all(w[2:] > 0)


def test_attention_missing_token_key_stays_visible() -> None:
    model = make(small_spec("attention", missing_tokens=True))
    present = torch.ones(B, 3, dtype=torch.bool)
    present[0, 0] = False
    run(model, make_inputs(), present=present)
    w = model.fusion.last_attention
    assert w is not None
    assert torch.all(w[0, :, :, 0] > 0) and torch.all(w[0, :, :, 1:-1] == 0)


def test_text_only_attention_masks_padding_keys() -> None:
    model = make(small_spec("attention", ["text"]))
    x = make_inputs()
    run(model, {"input_ids": x["input_ids"], "attention_mask": x["attention_mask"]})
    w = model.fusion.last_attention
    assert w is not None and w.shape == (B, 2, L, L)
    assert torch.allclose(w.sum(-1), torch.ones(B, 2, L), atol=1e-5)
    pad = x["attention_mask"] == 0
    assert pad.any()
    assert torch.all(w[pad[:, None, None, :].expand_as(w)] == 0)


def test_attention_without_text_uses_a_learned_query() -> None:
    model = make(small_spec("attention", ["image", "tabular"]))
    x = make_inputs()
    assert run(model, {"image": x["image"], "tabular": x["tabular"]}).shape == (B, 3)
    w = model.fusion.last_attention
    assert w is not None and w.shape == (B, 2, 1, model.image_encoder.num_tokens + 1)


# ---------------------------------------------------------------------- layers


@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_default_layers_resolve(fusion: str) -> None:
    model = make(small_spec(fusion))
    layers = model.default_layers()
    assert set(layers) == {"embedding", "image", "text", "tabular", "gradcam"}
    for path in layers.values():
        model.get_submodule(path)
    # the Grad-CAM target is the feature map that feeds the global pool: its output is the
    # backbone's forward_features output (after the last residual add and ReLU), not a conv's
    seen = {}
    handle = model.get_submodule(layers["gradcam"]).register_forward_hook(
        lambda _m, _i, o: seen.setdefault("out", o)
    )
    backbone = model.image_encoder.backbone
    with torch.no_grad():
        feats = backbone.forward_features(make_inputs()["image"])
    handle.remove()
    assert torch.equal(seen["out"], feats)
    assert not isinstance(model.get_submodule(layers["gradcam"]), nn.Conv2d)
    assert model.layer_rules()["gradcam"] == POOL_INPUT_RULE
    assert set(make(small_spec(fusion, ["text"])).default_layers()) == {"embedding", "text"}
    assert MultimodalModel.modality_keywords["present"] == "present"


@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_vit_image_encoder(fusion: str) -> None:
    vit = ImageSpec(
        timm_name="vit_tiny_patch16_224",
        img_size=IMG,
        timm_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
    )
    model = make(small_spec(fusion, ["image", "text"], image=vit))
    enc = model.image_encoder
    assert enc.feature_layout == "NLC" and enc.grid_size == (4, 4)
    assert enc.num_prefix_tokens == 1 and enc.num_tokens == 16
    x = make_inputs()
    out = run(enc, {"image": x["image"]})
    assert out.shape == ((B, 16, 32) if fusion == "attention" else (B, 32))
    assert run(model, {k: x[k] for k in ("image", "input_ids", "attention_mask")}).shape == (B, 3)
    gradcam = model.default_layers()["gradcam"]
    assert gradcam == "image_encoder.backbone.blocks.1.norm1"
    assert isinstance(model.get_submodule(gradcam), nn.LayerNorm)
    assert model.layer_rules()["gradcam"] == TOKEN_RULE


def test_tiny_sample_model_size_and_speed() -> None:
    spec = ArchitectureSpec(
        modalities=ALL,
        image=tiny_image_spec(64),
        text=tiny_text_spec(1000),
        tabular=TabularSpec(n_features=8),
        dim=64,
    )
    model = make(spec)
    n_image = sum(p.numel() for p in model.image_encoder.parameters())
    n_all = sum(p.numel() for p in model.parameters())
    assert n_image < 300_000
    assert n_all < 1_000_000
    fmap = model.image_encoder.backbone.forward_features(torch.zeros(1, 1, 64, 64))
    assert fmap.shape[-2:] == (4, 4)


# ---------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("fusion", ["attention", "late"])
def test_save_load_round_trip(tmp_path: Path, fusion: str) -> None:
    spec = small_spec(fusion, missing_tokens=True)
    model = make(spec, seed=3)
    x = make_inputs()
    present = torch.ones(B, 3, dtype=torch.bool)
    present[::2, 1] = False
    save_checkpoint(model, spec, tmp_path / "ckpt")
    loaded, loaded_spec = load_checkpoint(tmp_path / "ckpt")
    assert loaded_spec == spec and not loaded.training
    assert torch.equal(run(model, x, present=present), run(loaded, x, present=present))
    doc = json.loads((tmp_path / "ckpt" / "architecture.json").read_text())
    assert doc["format"] == "mmaudit-builtin" and doc["format_version"] == 1
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "architecture.json",
        "model.safetensors",
    ]


def test_save_handles_shared_tensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight

    tied = Tied()
    save_checkpoint(tied, small_spec(), tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    assert torch.equal(state["a.weight"], state["b.weight"])


def test_pretrained_text_dir(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=L,
    )
    BertModel(cfg).save_pretrained(tmp_path / "bert")
    text = TextSpec(pretrained_dir=str(tmp_path / "bert"))
    spec = ArchitectureSpec(modalities=["text"], text=text, dim=8)
    model = make(spec)
    reference = BertModel.from_pretrained(tmp_path / "bert")
    assert torch.equal(
        model.text_encoder.backbone.embeddings.word_embeddings.weight,
        reference.embeddings.word_embeddings.weight,
    )
    save_checkpoint(model, spec, tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    x = make_inputs()
    kw = {"input_ids": x["input_ids"], "attention_mask": x["attention_mask"]}
    assert torch.equal(run(model, kw), run(loaded, kw))
    missing = ArchitectureSpec(modalities=["text"], text=TextSpec(pretrained_dir="/nowhere/x"))
    with pytest.raises(ModelLoadError, match="/nowhere/x"):
        build_model(missing)


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    spec = small_spec("concat", ["image", "tabular"])
    return save_checkpoint(make(spec), spec, tmp_path / "ckpt")


def _edit_arch(folder: Path, fn: Any) -> None:
    path = folder / "architecture.json"
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def test_load_errors_missing_files(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="checkpoint folder not found"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="not a folder"):
        load_checkpoint(saved / "model.safetensors")
    weights = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"model\.safetensors not found") as info:
        load_checkpoint(saved)
    assert "save_checkpoint" in info.value.one_line()
    (saved / "model.safetensors").write_bytes(weights[:100])
    with pytest.raises(ModelLoadError, match="not a readable safetensors"):
        load_checkpoint(saved)
    (saved / "architecture.json").unlink()
    with pytest.raises(ModelLoadError, match=r"architecture\.json not found"):
        load_checkpoint(saved)


def test_load_errors_bad_json_format_and_spec(saved: Path) -> None:
    arch = saved / "architecture.json"
    good = arch.read_text()
    arch.write_text(good[:-10])
    with pytest.raises(ModelLoadError, match=r"architecture\.json: not valid JSON \(line"):
        load_checkpoint(saved)
    arch.write_text(good)
    _edit_arch(saved, lambda d: d.update(format="other"))
    with pytest.raises(ModelLoadError, match="format is 'other', expected 'mmaudit-builtin'"):
        load_checkpoint(saved)
    arch.write_text(good)
    _edit_arch(saved, lambda d: d.update(format_version=99))
    with pytest.raises(ModelLoadError, match="format_version 99"):
        load_checkpoint(saved)
    arch.write_text(good)
    _edit_arch(saved, lambda d: d["spec"]["image"].update(img_size="big"))
    with pytest.raises(ModelLoadError, match=r"spec\.image\.img_size: Input should be"):
        load_checkpoint(saved)
    arch.write_text(good)
    _edit_arch(saved, lambda d: d["spec"].update(fusoin="late"))
    with pytest.raises(ModelLoadError, match=r"spec\.fusoin: Extra inputs"):
        load_checkpoint(saved)
    arch.write_text(good)
    _edit_arch(saved, lambda d: d["spec"]["image"].update(timm_name="no_such_net"))
    with pytest.raises(ModelLoadError, match="cannot build the model.*no_such_net"):
        load_checkpoint(saved)


def test_load_errors_weights_do_not_fit(saved: Path) -> None:
    from safetensors.torch import load_file, save_file

    arch = saved / "architecture.json"
    good = arch.read_text()
    _edit_arch(saved, lambda d: d["spec"]["tabular"].update(n_features=NF + 2))
    with pytest.raises(ModelLoadError, match=r"shape mismatches.*tabular_encoder\.mlp\.0\.weight"):
        load_checkpoint(saved)
    arch.write_text(good)
    _edit_arch(saved, lambda d: d["spec"].update(fusion="bilinear"))
    with pytest.raises(ModelLoadError, match=r"missing 2 keys \(first 5: \['fusion\.left"):
        load_checkpoint(saved)
    arch.write_text(good)
    state = load_file(str(saved / "model.safetensors"))
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(saved / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"unexpected 1 keys \(first 5: \['extra\.weight'\]"):
        load_checkpoint(saved)
