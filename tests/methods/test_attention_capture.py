"""Attention capture through hooks: rows sum to one, no hooks or settings left behind,
gradients of the weights equal an explicit recomputation, relevancy follows Chefer et al."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from mmaudit.engine.adapter import ModelAdapter
from mmaudit.methods.attention_capture import (
    capture_attention,
    chefer_relevancy,
    chefer_relevancy_layers,
    find_attention_source,
    region_fractions,
    text_self_attention_paths,
    weight_gradients,
)


class Caller(nn.Module):
    """Calls its attention asking for no weights, as fast inference code does."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(q, k, k, need_weights=False)
        return out


def _hooks(m: nn.Module) -> int:
    return sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.modules())


def test_mha_capture_forces_per_head_weights_and_leaves_no_hooks() -> None:
    torch.manual_seed(0)
    model = Caller().eval()
    q, k = torch.randn(3, 5, 8), torch.randn(3, 7, 8)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[:, -2:] = True
    plain = model(q, k)
    with capture_attention(model, ["attn"]) as store:
        out = model.attn(q, k, k, key_padding_mask=mask)[0]
        again = model(q, k)
    assert _hooks(model) == 0
    assert torch.allclose(again, plain, atol=1e-6)  # the model's output is unchanged
    w = store["attn"][0].weights
    assert w.shape == (3, 2, 5, 7)
    assert torch.allclose(w.sum(-1), torch.ones(3, 2, 5), atol=1e-5)
    assert float(w[..., -2:].detach().abs().max()) == 0.0  # padded keys get nothing
    assert out.shape == (3, 5, 8)


def test_weight_gradient_equals_explicit_recomputation() -> None:
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    q, k = torch.randn(2, 4, 8), torch.randn(2, 6, 8)
    with capture_attention(mha, [""]) as store:
        out = mha(q, k, k)[0]
    score = (out * torch.linspace(-1, 1, 8)).sum()
    grad = weight_gradients(score, store[""])[0]
    assert grad is not None
    # the same by hand: A as a leaf, out = out_proj(concat_h(A_h V_h))
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    heads, d = 2, 4
    qh = (q @ w_q.T + b_q).view(2, 4, heads, d).transpose(1, 2)
    kh = (k @ w_k.T + b_k).view(2, 6, heads, d).transpose(1, 2)
    vh = (k @ w_v.T + b_v).view(2, 6, heads, d).transpose(1, 2)
    a = torch.softmax(qh @ kh.transpose(-1, -2) / d**0.5, -1).detach().requires_grad_(True)
    ctx = (a @ vh).transpose(1, 2).reshape(2, 4, 8)
    manual = ((ctx @ mha.out_proj.weight.T + mha.out_proj.bias) * torch.linspace(-1, 1, 8)).sum()
    (expected,) = torch.autograd.grad(manual, a)
    assert torch.allclose(store[""][0].weights.detach(), a.detach(), atol=1e-5)
    assert torch.allclose(grad, expected, atol=1e-5)


@pytest.fixture(scope="module")
def builtin_models() -> dict[str, Any]:
    from mmaudit.engine.models import ArchitectureSpec, build_model, tiny_image_spec, tiny_text_spec

    torch.manual_seed(0)
    out = {}
    for fusion in ("attention", "concat"):
        spec = ArchitectureSpec(
            modalities=["image", "text", "tabular"],
            image=tiny_image_spec(32),
            text=tiny_text_spec(60),
            tabular={"n_features": 2},
            dim=16,
            fusion=fusion,
        )
        model = build_model(spec).eval()
        out[fusion] = ModelAdapter(
            model,
            source="test",
            modalities=("image", "text", "tabular"),
            keywords=dict(model.modality_keywords),
            layers=model.default_layers(),
            detected={},
            device=torch.device("cpu"),
        )
    return out


def test_find_source_on_the_builtin_family(builtin_models: dict[str, Any]) -> None:
    src, why = find_attention_source(builtin_models["attention"])
    assert why is None and src is not None
    assert (src.path, src.image_offset, src.grid, src.n_image_tokens) == (
        "fusion.attn",
        0,
        (2, 2),
        4,
    )
    none, why = find_attention_source(builtin_models["concat"])
    assert none is None
    assert why is not None and why.startswith("the model has no attention to capture")
    assert "text_encoder" in why


def test_hf_self_attention_capture_switches_to_eager_and_back(
    builtin_models: dict[str, Any],
) -> None:
    ad = builtin_models["attention"]
    paths = text_self_attention_paths(ad)
    assert len(paths) == 2  # two BERT layers
    config = ad.module.text_encoder.backbone.config
    before = config._attn_implementation
    ids = torch.randint(5, 60, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, 7:] = 0
    inputs = {
        "image": torch.randn(3, 1, 32, 32),
        "input_ids": ids,
        "attention_mask": mask,
        "tabular": torch.randn(3, 2),
    }
    with capture_attention(ad.module, ["fusion.attn", *paths]) as store:
        logits = ad.module(**inputs)
        caps = [store["fusion.attn"][0], *[store[p][0] for p in paths]]
        grads = weight_gradients(logits.sum(), caps)
    assert config._attn_implementation == before
    assert ad.hook_count() == 0
    for c, g in zip(caps, grads, strict=True):
        assert g is not None and g.shape == c.weights.shape
        assert torch.allclose(c.weights.sum(-1), torch.ones_like(c.weights[..., 0]), atol=1e-5)
    self_w = caps[1].weights
    assert float(self_w[0, :, :, 7:].detach().abs().max()) < 1e-6  # padding keys masked
    cross = caps[0].weights.detach()
    assert torch.allclose(cross, ad.module.fusion.last_attention, atol=1e-6)


def test_chefer_relevancy() -> None:
    torch.manual_seed(2)
    a = torch.softmax(torch.randn(2, 3, 4, 5), -1)
    g = torch.randn(2, 3, 4, 5)
    cross = (g * a).clamp(min=0).mean(1)
    assert torch.allclose(chefer_relevancy((a, g)), cross)
    s = torch.softmax(torch.randn(2, 3, 4, 4), -1)
    gs = torch.randn(2, 3, 4, 4)
    cam = (gs * s).clamp(min=0).mean(1)
    r = torch.eye(4) + cam @ torch.eye(4)
    hat = r - torch.eye(4)
    hat = hat / hat.sum(-1, keepdim=True)
    expected = (hat + torch.eye(4)).transpose(1, 2) @ cross
    assert torch.allclose(chefer_relevancy((a, g), [(s, gs)]), expected, atol=1e-6)


def test_region_fractions_row_major() -> None:
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, :4, 4:] = 1.0  # top-right quarter
    frac = region_fractions(mask, (2, 2))
    assert frac.tolist() == [[0.0, 1.0, 0.0, 0.0]]


# --------------------------------------------------------------------------- Hugging Face cross


class GridEncoder(nn.Module):
    """Image -> 2 x 2 region tokens of width 16 (a stand-in for a CNN / ViT encoder)."""

    grid_size = (2, 2)
    num_tokens = 4

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(1, 16)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(image, 2).flatten(2).transpose(1, 2)
        return self.proj(pooled)


def tiny_bert_config(**extra: Any) -> Any:
    from transformers import BertConfig

    size = {
        "vocab_size": 60,
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
    }
    return BertConfig(**{**size, **extra})


class CrossInsideText(nn.Module):
    """The BLIP / ALBEF layout: a BERT text encoder with ``add_cross_attention`` that
    attends to the image region states in every layer."""

    def __init__(self, vocab: int = 60) -> None:
        super().__init__()
        from transformers import BertModel

        self.image_encoder = GridEncoder()
        cfg = tiny_bert_config(is_decoder=True, add_cross_attention=True, vocab_size=vocab)
        self.text_encoder = BertModel(cfg, add_pooling_layer=False)
        self.head = nn.Linear(16, 1)

    def forward(
        self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        regions = self.image_encoder(image)
        text = self.text_encoder(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=regions
        ).last_hidden_state
        return self.head(text[:, 0])


class CrossFusion(nn.Module):
    """A ``BertAttention(is_cross_attention=True)`` as the fusion, outside the encoders."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertModel
        from transformers.models.bert.modeling_bert import BertAttention

        cfg = tiny_bert_config()
        self.image_encoder = GridEncoder()
        self.text_encoder = BertModel(cfg, add_pooling_layer=False)
        self.fusion = BertAttention(cfg, is_cross_attention=True, layer_idx=0)
        self.head = nn.Linear(16, 1)

    def forward(
        self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        fused = self.fusion(text.last_hidden_state, encoder_hidden_states=self.image_encoder(image))
        return self.head(fused[0].mean(1))


def _hf_adapter(model: nn.Module) -> ModelAdapter:
    return ModelAdapter(
        model.eval(),
        source="test",
        modalities=("image", "text"),
        keywords={"image": "image", "text": "input_ids", "text_mask": "attention_mask"},
        layers={"image": "image_encoder", "text": "text_encoder"},
        detected={},
        device=torch.device("cpu"),
    )


@pytest.mark.parametrize("layout", ["inside", "fusion"])
def test_hf_cross_attention_is_found_captured_and_restored(layout: str) -> None:
    torch.manual_seed(0)
    model = CrossInsideText() if layout == "inside" else CrossFusion()
    ad = _hf_adapter(model)
    src, why = find_attention_source(ad)
    assert why is None and src is not None
    assert src.kind == "hf" and src.grid == (2, 2) and src.n_image_tokens == 4
    if layout == "inside":
        assert src.paths == [f"text_encoder.encoder.layer.{k}.crossattention.self" for k in (0, 1)]
        assert any("2 cross-attention layers aggregated" in n for n in src.notes)
        one, _ = find_attention_source(ad, layer=-1)
        assert one is not None and one.paths == ["text_encoder.encoder.layer.1.crossattention.self"]
        bad, why_bad = find_attention_source(ad, layer=5)
        assert bad is None and why_bad is not None and "out of range" in why_bad
    else:
        assert src.paths == ["fusion.self"]
    self_paths = text_self_attention_paths(ad)
    assert len(self_paths) == 2 and not set(self_paths) & set(src.paths)
    config = model.text_encoder.config
    before = config._attn_implementation
    inputs = {
        "image": torch.randn(3, 1, 8, 8),
        "input_ids": torch.randint(5, 60, (3, 7)),
        "attention_mask": torch.ones(3, 7, dtype=torch.long),
    }
    plain = model(**inputs)
    with capture_attention(model, [*src.paths, *self_paths]) as store:
        logits = model(**inputs)
        caps = [store[p][-1] for p in src.paths]
        grads = weight_gradients(logits.sum(), caps)
    assert torch.allclose(logits, plain, atol=1e-5)  # eager and sdpa give the same output
    assert config._attn_implementation == before
    assert ad.hook_count() == 0
    for c, g in zip(caps, grads, strict=True):
        assert c.weights.shape == (3, 2, 7, 4)  # 7 text queries over 4 image regions
        assert torch.allclose(c.weights.sum(-1), torch.ones(3, 2, 7), atol=1e-5)
        assert g is not None and g.shape == c.weights.shape
    seqs = [store[p][-1].seq for p in [*src.paths, *self_paths]]
    assert len(set(seqs)) == len(seqs)  # every call has its own place in the forward order


def test_relevancy_over_layers_reduces_to_one_cross_layer_and_stacks() -> None:
    torch.manual_seed(3)
    a1, g1 = torch.softmax(torch.randn(2, 2, 4, 5), -1), torch.randn(2, 2, 4, 5)
    a2, g2 = torch.softmax(torch.randn(2, 2, 4, 5), -1), torch.randn(2, 2, 4, 5)
    s, gs = torch.softmax(torch.randn(2, 2, 4, 4), -1), torch.randn(2, 2, 4, 4)
    one = chefer_relevancy_layers([("self", s, gs), ("cross", a1, g1)])
    assert torch.allclose(one, chefer_relevancy((a1, g1), [(s, gs)]))
    # cross, then self, then cross: the self layer mixes the first cross layer's relevancy
    cam = lambda a, g: (g * a).clamp(min=0).mean(1)  # noqa: E731
    r_ti = cam(a1, g1)
    r_tt = torch.eye(4) + cam(s, gs)
    r_ti = r_ti + cam(s, gs) @ r_ti
    hat = r_tt - torch.eye(4)
    norm = hat / hat.sum(-1, keepdim=True) + torch.eye(4)
    expected = r_ti + norm.transpose(1, 2) @ cam(a2, g2)
    got = chefer_relevancy_layers([("cross", a1, g1), ("self", s, gs), ("cross", a2, g2)])
    assert torch.allclose(got, expected, atol=1e-6)


class UnusedCrossBesideFusion(nn.Module):
    """A BERT text encoder built with ``add_cross_attention`` (a BLIP text-decoder
    config) but run text-only, and the real fusion: a text -> image multi-head attention
    outside the encoders. The text encoder's cross layers are never called."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertModel

        self.image_encoder = GridEncoder()
        cfg = tiny_bert_config(is_decoder=True, add_cross_attention=True)
        self.text_encoder = BertModel(cfg, add_pooling_layer=False)
        self.fusion = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 1)

    def forward(
        self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        regions = self.image_encoder(image)
        fused, _ = self.fusion(text.last_hidden_state, regions, regions)
        return self.head(fused.mean(1))


class ImageSideCross(nn.Module):
    """Cross layers on both sides (co-attention / a Q-Former under the image encoder):
    only the text encoder's attend from report tokens to image states."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.models.bert.modeling_bert import BertAttention

        self.image_encoder = nn.ModuleDict(
            {
                "grid": GridEncoder(),
                "qformer": BertAttention(tiny_bert_config(), is_cross_attention=True),
            }
        )
        self.text_encoder = CrossInsideText().text_encoder


def test_fusion_outside_the_encoders_beats_unused_cross_layers_in_the_text_encoder() -> None:
    torch.manual_seed(0)
    model = UnusedCrossBesideFusion()
    src, why = find_attention_source(_hf_adapter(model))
    assert why is None and src is not None
    assert (src.paths, src.kind) == (["fusion"], "mha")
    assert any("2 cross-attention layers inside the text encoder" in n for n in src.notes)
    inputs = {
        "image": torch.randn(2, 1, 8, 8),
        "input_ids": torch.randint(5, 60, (2, 7)),
        "attention_mask": torch.ones(2, 7, dtype=torch.long),
    }
    with capture_attention(model, src.paths) as store:
        model(**inputs)
    assert [c.weights.shape for c in store["fusion"]] == [(2, 2, 7, 4)]


def test_cross_layers_under_the_image_encoder_are_not_text_to_image() -> None:
    src, why = find_attention_source(_hf_adapter(ImageSideCross()))
    assert why is None and src is not None
    assert src.paths == [f"text_encoder.encoder.layer.{k}.crossattention.self" for k in (0, 1)]


def test_builtin_fusion_has_one_layer_to_pick(builtin_models: dict[str, Any]) -> None:
    ad = builtin_models["attention"]
    for ok in (0, -1):
        src, why = find_attention_source(ad, layer=ok)
        assert why is None and src is not None and src.paths == ["fusion.attn"]
    none, why = find_attention_source(ad, layer=5)
    assert none is None and why is not None and why.startswith("params.layer 5 is out of range")
