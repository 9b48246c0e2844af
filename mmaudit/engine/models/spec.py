"""``ArchitectureSpec``: the JSON-serialisable description of a built-in multimodal model.

The spec is everything needed to rebuild the module tree before loading weights, so it
is stored next to the weights in ``architecture.json``. It is a pydantic model with
``extra="forbid"`` so that a typo in a hand-written spec fails loudly instead of being
silently ignored. This module imports neither torch, timm nor transformers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Modality = Literal["image", "text", "tabular"]
FusionKind = Literal["concat", "attention", "projection", "bilinear", "late"]


class ImageSpec(BaseModel):
    """Image encoder: any timm model, built with ``pretrained=False`` and ``num_classes=0``."""

    model_config = ConfigDict(extra="forbid")

    timm_name: str = "resnet18"
    in_chans: int = Field(1, ge=1)
    img_size: int = Field(64, ge=8)
    timm_kwargs: dict[str, Any] = Field(default_factory=dict)


class TextSpec(BaseModel):
    """Text encoder: a random-init BERT of this size, or a local Hugging Face folder."""

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(1000, ge=2)
    hidden_size: int = Field(64, ge=1)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(128, ge=1)
    max_length: int = Field(64, ge=1)
    pad_token_id: int = Field(0, ge=0)
    pretrained_dir: str | None = None

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TextSpec:
        if self.pretrained_dir is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of"
                f" num_heads ({self.num_heads})"
            )
        if self.pretrained_dir is None and self.pad_token_id >= self.vocab_size:
            raise ValueError(
                f"pad_token_id ({self.pad_token_id}) must be < vocab_size ({self.vocab_size})"
            )
        return self


class TabularSpec(BaseModel):
    """Tabular encoder: an MLP over ``n_features`` normalised columns."""

    model_config = ConfigDict(extra="forbid")

    n_features: int = Field(ge=1)
    hidden: list[int] = Field(default_factory=lambda: [32])


class ArchitectureSpec(BaseModel):
    """The whole model: which modalities (in ``present`` column order), encoders and fusion.

    ``image`` / ``text`` default to their default sub-spec when the modality is listed but
    the sub-spec is omitted; ``tabular`` must be given because ``n_features`` has no
    default. A sub-spec for a modality that is not listed is an error (it would be
    silently unused).
    """

    model_config = ConfigDict(extra="forbid")

    modalities: list[Modality] = Field(min_length=1)
    image: ImageSpec | None = None
    text: TextSpec | None = None
    tabular: TabularSpec | None = None
    dim: int = Field(64, ge=1)
    fusion: FusionKind = "concat"
    num_outputs: int = Field(1, ge=1)
    missing_tokens: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> ArchitectureSpec:
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities has duplicates: {self.modalities}")
        if "image" in self.modalities and self.image is None:
            self.image = ImageSpec()
        if "text" in self.modalities and self.text is None:
            self.text = TextSpec()
        if "tabular" in self.modalities and self.tabular is None:
            raise ValueError("'tabular' is in modalities but no tabular spec (n_features) is given")
        for name in ("image", "text", "tabular"):
            if getattr(self, name) is not None and name not in self.modalities:
                raise ValueError(f"a {name} spec is given but '{name}' is not in modalities")
        return self


def tiny_image_spec(img_size: int = 64) -> ImageSpec:
    """A ~150k-parameter ResNet for small grayscale images (trainable on a laptop CPU).

    ``resnet18`` with one block per stage, widths 16-32-64-64, a deep 3x3 stem of width 8
    (the plain 7x7 stem is always 64 wide in timm) and ``output_stride=16`` so that a
    64x64 input still yields a 4x4 feature map (16 region tokens / Grad-CAM cells).
    """
    return ImageSpec(
        timm_name="resnet18",
        in_chans=1,
        img_size=img_size,
        timm_kwargs={
            "layers": [1, 1, 1, 1],
            "channels": [16, 32, 64, 64],
            "stem_type": "deep",
            "stem_width": 8,
            "output_stride": 16,
        },
    )


def tiny_text_spec(vocab_size: int) -> TextSpec:
    """A 2-layer, 64-wide random-init BERT for short reports (about 70k + 64 * vocab params)."""
    return TextSpec(
        vocab_size=vocab_size,
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        intermediate_size=128,
        max_length=64,
    )
