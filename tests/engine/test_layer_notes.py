"""Notes on named layers that make the audit slower than it says: a
``model.layers.<modality>`` that holds only the projection after a separate backbone
(``mmaudit.engine.partial_encoders``), so the cached encoder output saves nothing."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from mmaudit.engine.adapter import ModelAdapter
from mmaudit.engine.data import Batch
from mmaudit.engine.partial_encoders import partial_encoder_notes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H = W = 8


def _backbone() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
    )


class Siblings(nn.Module):
    """Backbone and projection as sibling modules, called one after the other in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = _backbone()
        self.proj = nn.Linear(8, 4)
        self.lab = nn.Sequential(nn.Linear(2, 4096), nn.Linear(4096, 4))  # a costly lab branch
        self.head = nn.Linear(8, 1)

    def forward(self, image: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        hi = self.proj(self.backbone(image).mean(dim=(2, 3)))
        return self.head(torch.cat([hi, self.lab(tabular)], dim=1))


class Branch(nn.Module):
    """Backbone + pooling + projection in one module: what model.layers.image should name."""

    def __init__(self, backbone: nn.Module, proj: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.proj = proj

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(image).mean(dim=(2, 3)))


class Wrapped(nn.Module):
    """The same model with one module per branch."""

    def __init__(self) -> None:
        super().__init__()
        self.image_branch = Branch(_backbone(), nn.Linear(8, 4))
        self.lab = nn.Linear(2, 4)
        self.head = nn.Linear(8, 1)

    def forward(self, image: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.image_branch(image), self.lab(tabular)], dim=1))


class TextSiblings(nn.Module):
    """A token-embedding + MLP text backbone beside its projection, and labs."""

    def __init__(self) -> None:
        super().__init__()
        self.text_backbone = nn.Sequential(
            nn.Embedding(50, 16), nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16)
        )
        self.text_proj = nn.Linear(16, 4)
        self.lab = nn.Linear(2, 4)
        self.head = nn.Linear(8, 1)

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, tabular: torch.Tensor
    ) -> torch.Tensor:
        t = self.text_backbone(text).mean(1)
        return self.head(torch.cat([self.text_proj(t), self.lab(tabular)], dim=1))


def _adapter(module: nn.Module, layers: dict[str, str], mods: tuple[str, ...]) -> ModelAdapter:
    keywords = {m: m for m in mods} | ({"text_mask": "text_mask"} if "text" in mods else {})
    return ModelAdapter(
        module,
        source="test",
        modalities=mods,
        keywords=keywords,
        layers=layers,
        detected={},
        device=torch.device("cpu"),
    )


def _batch(n: int = 2) -> Batch:
    torch.manual_seed(0)
    return Batch(
        index=torch.arange(n),
        present=torch.ones(n, 2, dtype=torch.bool),
        target=torch.zeros(n),
        image=torch.randn(n, 1, H, W),
        input_ids=torch.randint(1, 50, (n, 6)),
        attention_mask=torch.ones(n, 6, dtype=torch.long),
        tabular=torch.randn(n, 2),
    )


def _image_flops(n: int) -> dict[str, int]:
    """FLOPs of the parts of Siblings for ``n`` rows, by hand (2 per multiply-add)."""
    conv = 2 * n * H * W * 9 * (1 * 8 + 8 * 8)
    return {"backbone": conv, "rest": 2 * n * (8 * 4 + 2 * 4096 + 4096 * 4 + 8 * 1)}


def test_a_projection_named_beside_its_backbone_gets_a_note_naming_the_backbone() -> None:
    """layers.image = proj, the backbone a sibling: the note names the layer, the backbone
    (the subtree thrown away), its first conv (first to read the image) and the share of a
    forward's FLOPs it wastes, known by hand; the labs (named whole) get no note."""
    adapter = _adapter(Siblings(), {"image": "proj", "tabular": "lab"}, ("image", "tabular"))
    (note,) = partial_encoder_notes(adapter, _batch())
    f = _image_flops(2)
    share = f["backbone"] / (f["backbone"] + f["rest"])
    assert round(share, 2) == 0.63
    assert note.startswith("model.layers.image is proj, but backbone (first to read the raw")
    assert "image: backbone.0) runs outside it" in note
    assert f"about {share:.0%} of a forward's FLOPs" in note
    assert "docs/own-model.md" in note and "or accept the cost" in note
    assert adapter.module.proj.__class__ is nn.Linear  # the substitute was put back


def test_a_module_that_holds_the_whole_branch_gets_no_note() -> None:
    """The same model with backbone + projection wrapped in one module, named: no note;
    nor when the named layer is the backbone's own Sequential (TinyFusion's ``img``)."""
    from tiny_models import build_tiny

    wrapped = _adapter(Wrapped(), {"image": "image_branch", "tabular": "lab"}, ("image", "tabular"))
    assert partial_encoder_notes(wrapped, _batch()) == []
    tiny = _adapter(build_tiny(), {"image": "img", "tabular": "tab"}, ("image", "tabular"))
    assert partial_encoder_notes(tiny, _batch()) == []
    # the wrapper named but its projection only: the backbone inside it is the waste
    inner = _adapter(
        Wrapped(), {"image": "image_branch.proj", "tabular": "lab"}, ("image", "tabular")
    )
    (note,) = partial_encoder_notes(inner, _batch())
    assert "but image_branch.backbone (first to read the raw image: image_branch.backbone.0)" in (
        note
    )


def test_a_text_backbone_beside_the_named_projection_gets_a_note() -> None:
    """layers.text = text_proj with the embedding + MLP beside it: the note names the text
    backbone and its embedding (the reader of the token ids); named whole, no note."""
    mods = ("text", "tabular")
    sib = _adapter(TextSiblings(), {"text": "text_proj", "tabular": "lab"}, mods)
    (note,) = partial_encoder_notes(sib, _batch())
    assert note.startswith("model.layers.text is text_proj, but text_backbone (first to read")
    assert "report token ids: text_backbone.0)" in note
    whole = _adapter(TextSiblings(), {"text": "text_backbone", "tabular": "lab"}, mods)
    assert partial_encoder_notes(whole, _batch()) == []


def test_a_cheap_reader_outside_the_named_layer_is_not_worth_a_note() -> None:
    """A bare token lookup outside the named text layer reads the ids but computes no
    FLOPs: under 1 % of a forward, no note (family 2's old bag-of-words text)."""

    class CheapLookup(TextSiblings):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(50, 16)

        def forward(self, text: torch.Tensor, text_mask: Any, tabular: torch.Tensor) -> Any:
            t = self.tok(text).mean(1)
            return self.head(torch.cat([self.text_proj(t), self.lab(tabular)], dim=1))

    mods = ("text", "tabular")
    adapter = _adapter(CheapLookup(), {"text": "text_proj", "tabular": "lab"}, mods)
    assert partial_encoder_notes(adapter, _batch()) == []


def test_the_built_in_sample_model_gets_no_note(sample_model: tuple[Any, Any]) -> None:
    """The bundled checkpoint names whole encoders: nothing to say. Named by its projection
    only, its timm backbone (called as ``backbone.forward_features``, a method, not a module
    call) is found and costed all the same."""
    adapter, batch = sample_model
    rows = Batch(**{k: v[:2] if isinstance(v, torch.Tensor) else v for k, v in vars(batch).items()})
    assert partial_encoder_notes(adapter, rows) == []
    narrow = ModelAdapter(
        adapter.module,
        source="test",
        modalities=adapter.modalities,
        keywords=adapter.keywords,
        layers={**adapter.layers, "image": "image_encoder.proj"},
        detected={},
        device=adapter.device,
    )
    (note,) = partial_encoder_notes(narrow, rows)
    assert note.startswith("model.layers.image is image_encoder.proj, but image_encoder.backbone")
    assert "unmeasured" not in note and "about 0%" not in note


def test_torchscript_gets_no_note() -> None:
    """No hooks on a scripted model: nothing new is said."""
    adapter = _adapter(Siblings(), {"image": "proj", "tabular": "lab"}, ("image", "tabular"))
    adapter.supports_hooks = False
    assert partial_encoder_notes(adapter, _batch()) == []


def test_family_two_names_whole_branches_and_its_old_naming_gets_the_note() -> None:
    """The detection benchmark's gated CNN, named as MODELS says (whole branches): no
    note; named as it was before (the projection after the CNN): the note names the CNN
    (the text branch's bag of words is a lookup, too cheap for a note)."""
    from benchmarks.detection.family2_models import MODELS, build_gated_cnn

    mods = ("image", "text", "tabular")
    layers = MODELS["gated_cnn"]["layers"]
    model = build_gated_cnn(vocab_size=50, n_labs=2).eval()
    batch = _batch()
    batch.image = torch.randn(2, 1, 32, 32)
    assert partial_encoder_notes(_adapter(model, layers, mods), batch) == []
    old = {**layers, "image": "image_encoder.proj", "text": "text_encoder.proj"}
    (note,) = partial_encoder_notes(_adapter(model, old, mods), batch)
    assert note.startswith("model.layers.image is image_encoder.proj, but image_encoder.backbone")


class AttentionFused(Siblings):
    """Siblings with an attention fusion whose query is a parameter (torch's FLOP counter
    cannot track that module without gradients: the probe counts with them on)."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, 4))
        self.attn = nn.MultiheadAttention(4, 1, batch_first=True)
        self.head = nn.Linear(4, 1)

    def forward(self, image: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        hi = self.proj(self.backbone(image).mean(dim=(2, 3)))
        tokens = torch.stack([hi, self.lab(tabular)], dim=1)
        fused, _ = self.attn(self.query.expand(len(hi), -1, -1), tokens, tokens)
        return self.head(fused[:, 0])


def test_an_attention_fusion_does_not_hide_the_note() -> None:
    """The same backbone beside the named projection, fused by attention: the note still
    comes, with a measured share (most of the forward: the convolutions)."""
    adapter = _adapter(AttentionFused(), {"image": "proj", "tabular": "lab"}, ("image", "tabular"))
    (note,) = partial_encoder_notes(adapter, _batch())
    assert note.startswith("model.layers.image is proj, but backbone (first to read")
    assert "% of a forward's FLOPs" in note
    assert torch.is_grad_enabled()
