"""``MultimodalModel``: the built-in reference family (encoders -> fusion -> head).

The module tree is fixed so the audit can find its layers by name:
``image_encoder`` / ``text_encoder`` / ``tabular_encoder`` (only those in
``spec.modalities``), ``fusion`` (its output is the fused "embedding") and ``head``.

Missing modalities are handled in ``forward``, *outside* the encoders: an encoder's
forward hook therefore sees (and may replace) the raw encoder output, and the
replacement by a learned missing token (``missing_tokens=True``) or zeros happens
afterwards for the samples whose ``present`` flag is false. A modality whose input is
``None`` is absent for every sample and its encoder is not run.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from mmaudit.engine.models.encoders import ImageEncoder, TabularEncoder, TextEncoder
from mmaudit.engine.models.fusion import LateHead, attention_heads, build_fusion
from mmaudit.engine.models.spec import ArchitectureSpec

ENCODER_NAMES: dict[str, str] = {
    "image": "image_encoder",
    "text": "text_encoder",
    "tabular": "tabular_encoder",
}


class MultimodalModel(nn.Module):
    """Image / report text / tabular labs -> logits ``(B, num_outputs)``.

    See ``ArchitectureSpec`` for the knobs. Besides ``forward`` it exposes
    ``default_layers()`` (dotted module paths the audit hooks) and
    ``modality_keywords`` (forward argument names per modality).
    """

    modality_keywords: ClassVar[dict[str, str]] = {
        "image": "image",
        "text": "input_ids",
        "text_mask": "attention_mask",
        "tabular": "tabular",
        "present": "present",
    }

    def __init__(self, spec: ArchitectureSpec, load_pretrained: bool = True) -> None:
        """Build from ``spec``; ``load_pretrained=False`` skips reading a local text model's
        weights (only its config), used when a checkpoint's weights will overwrite them."""
        super().__init__()
        self.spec = spec
        self.modalities: tuple[str, ...] = tuple(spec.modalities)
        tokens = spec.fusion == "attention"
        normalize = spec.fusion == "projection"
        if spec.image is not None:
            self.image_encoder = ImageEncoder(spec.image, spec.dim, tokens, normalize)
            self._image_meta = (spec.image.in_chans, self.image_encoder.gradcam_layer)
        if spec.text is not None:
            self.text_encoder = TextEncoder(
                spec.text, spec.dim, tokens, normalize, spec.dropout, load_pretrained
            )
            self._text_max_length = self.text_encoder.max_length
        if spec.tabular is not None:
            self.tabular_encoder = TabularEncoder(
                spec.tabular, spec.dim, tokens, normalize, spec.dropout
            )
        self._tokens = tokens
        if spec.missing_tokens:
            self.missing = nn.ParameterDict(
                {m: nn.Parameter(torch.randn(spec.dim) * 0.02) for m in self.modalities}
            )
        text_heads = spec.text.num_heads if spec.text is not None else None
        self.fusion = build_fusion(
            spec.fusion,
            list(self.modalities),
            spec.dim,
            attention_heads(text_heads, spec.dim),
            spec.missing_tokens,
        )
        self.dropout = nn.Dropout(spec.dropout)
        fused_dim = int(self.fusion.out_dim)
        if spec.fusion == "late":
            self.head: nn.Module = LateHead(list(self.modalities), spec.dim, spec.num_outputs)
        else:
            self.head = nn.Linear(fused_dim, spec.num_outputs)
        self.fused_dim = fused_dim

    # ------------------------------------------------------------------ layers
    def default_layers(self) -> dict[str, str]:
        """Dotted module paths: embedding, per-modality encoders and the Grad-CAM layer."""
        layers = {"embedding": "fusion"}
        for m in self.modalities:
            layers[m] = ENCODER_NAMES[m]
        if "image" in self.modalities:
            layers["gradcam"] = f"image_encoder.{self._image_meta[1]}"
        return layers

    def layer_rules(self) -> dict[str, str]:
        """How each default layer that was found rather than fixed was chosen (the report
        records it next to the layer): the Grad-CAM target's rule."""
        if "image" not in self.modalities:
            return {}
        return {"gradcam": self.image_encoder.gradcam_rule}

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        image: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        tabular: torch.Tensor | None = None,
        present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, num_outputs)``.

        ``present`` is (B, M) bool in ``spec.modalities`` order (None = all present); a
        modality whose input is None is absent for every sample. ``attention_mask``
        defaults to all ones (Hugging Face convention).
        """
        inputs = {"image": image, "text": input_ids, "tabular": tabular}
        batch, device = self._batch_info(inputs, present)
        if input_ids is not None and attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self._check_inputs(image, input_ids, attention_mask, tabular, batch)
        n_mod = len(self.modalities)
        if present is not None and tuple(present.shape) != (batch, n_mod):
            raise ValueError(
                f"present must be (B, {n_mod}) with columns {list(self.modalities)};"
                f" got {tuple(present.shape)}"
            )
        if present is None:
            present = torch.ones(batch, len(self.modalities), dtype=torch.bool, device=device)
        else:
            present = present.to(device=device, dtype=torch.bool)
        given = torch.tensor(
            [inputs[m] is not None for m in self.modalities], dtype=torch.bool, device=device
        )
        present = present & given
        feats: list[torch.Tensor] = []
        for i, m in enumerate(self.modalities):
            if inputs[m] is None:
                feats.append(self._fill(m, batch, device))
                continue
            if m == "image":
                out = self.image_encoder(image)
            elif m == "text":
                out = self.text_encoder(input_ids, attention_mask)
            else:
                out = self.tabular_encoder(tabular)
            feats.append(self._replace_missing(m, out, present[:, i]))
        text_mask = attention_mask if input_ids is not None else None
        fused = self.dropout(self.fusion(feats, present, text_mask))
        if self.spec.fusion == "late":
            return self.head(fused, present)
        return self.head(fused)

    def _fill(self, modality: str, batch: int, device: torch.device) -> torch.Tensor:
        """The replacement for a modality absent in the whole batch (one token if tokens)."""
        shape = (batch, 1, self.spec.dim) if self._tokens else (batch, self.spec.dim)
        if self.spec.missing_tokens:
            return self.missing[modality].expand(shape)
        dtype = next(self.parameters()).dtype
        return torch.zeros(shape, dtype=dtype, device=device)

    def _replace_missing(
        self, modality: str, out: torch.Tensor, present: torch.Tensor
    ) -> torch.Tensor:
        """``out`` where present, the missing token (or zeros) where not."""
        if bool(present.all()):
            return out
        keep = present.view(-1, *([1] * (out.dim() - 1)))
        if self.spec.missing_tokens:
            fill = self.missing[modality].to(out.dtype).expand_as(out)
        else:
            fill = torch.zeros_like(out)
        return torch.where(keep, out, fill)

    def _batch_info(
        self, inputs: dict[str, torch.Tensor | None], present: torch.Tensor | None
    ) -> tuple[int, torch.device]:
        for m in self.modalities:
            x = inputs[m]
            if x is not None:
                return int(x.shape[0]), x.device
        if present is not None:
            return int(present.shape[0]), present.device
        raise ValueError(
            f"no input given: the model takes {list(self.modalities)}"
            f" ({', '.join(self.modality_keywords[m] for m in self.modalities)})"
        )

    def _check_inputs(
        self,
        image: torch.Tensor | None,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        tabular: torch.Tensor | None,
        batch: int,
    ) -> None:
        """Clear errors for inputs the model does not take or of the wrong shape."""
        given = {"image": image, "text": input_ids, "tabular": tabular}
        extra = [m for m, x in given.items() if x is not None and m not in self.modalities]
        if extra:
            raise ValueError(f"input for {extra} given but the model takes {list(self.modalities)}")
        if image is not None:
            chans = self._image_meta[0]
            if image.dim() != 4 or image.shape[1] != chans:
                raise ValueError(f"image must be (B, {chans}, H, W); got {tuple(image.shape)}")
        if input_ids is not None:
            if input_ids.dim() != 2 or attention_mask is None:
                raise ValueError(f"input_ids must be (B, L); got {tuple(input_ids.shape)}")
            if tuple(attention_mask.shape) != tuple(input_ids.shape):
                raise ValueError(
                    f"attention_mask {tuple(attention_mask.shape)} does not match input_ids"
                    f" {tuple(input_ids.shape)}"
                )
            if input_ids.shape[1] > self._text_max_length:
                raise ValueError(
                    f"input_ids length {input_ids.shape[1]} exceeds the text encoder's"
                    f" max_length {self._text_max_length}"
                )
        if tabular is not None:
            assert self.spec.tabular is not None
            n = self.spec.tabular.n_features
            if tabular.dim() != 2 or tabular.shape[1] != n:
                raise ValueError(f"tabular must be (B, {n}); got {tuple(tabular.shape)}")
        for m, x in given.items():
            if x is not None and x.shape[0] != batch:
                raise ValueError(f"{m} has batch size {x.shape[0]}, expected {batch}")


def build_model(spec: ArchitectureSpec, load_pretrained: bool = True) -> MultimodalModel:
    """A freshly initialised ``MultimodalModel`` for ``spec``; never downloads anything."""
    return MultimodalModel(spec, load_pretrained=load_pretrained)
