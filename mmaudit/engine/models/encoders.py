"""Per-modality encoders: timm image backbone, BERT-style text model, tabular MLP.

Every encoder's ``forward`` returns exactly one tensor of width ``dim`` so that a forward
hook on the encoder module can read or replace the whole modality embedding:

* ``tokens=False``: a pooled vector ``(B, dim)``; with ``normalize=True`` it is
  L2-normalised (the shared space of the ``projection`` fusion).
* ``tokens=True`` (``attention`` fusion): a token sequence ``(B, T, dim)``: image
  region / patch tokens, text token states, or one tabular token.

timm and transformers are imported inside the constructors because importing them
costs seconds and ``import mmaudit.engine.models`` must stay fast.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmaudit.engine.errors import ModelLoadError
from mmaudit.engine.layer_detection import detect_cam_target
from mmaudit.engine.models.spec import ImageSpec, TabularSpec, TextSpec

FeatureLayout = Literal["NCHW", "NHWC", "NLC"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B, T, D) over the positions where ``mask`` (B, T) is true; 0 if none."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


class ImageEncoder(nn.Module):
    """A timm backbone (``pretrained=False, num_classes=0``) plus a linear map to ``dim``.

    At construction a single dummy image is run through the backbone (in eval mode, no
    grad) to learn the feature layout: ``NCHW`` conv maps, ``NHWC`` maps (Swin-like) or
    ``NLC`` token sequences (ViT-like, whose ``num_prefix_tokens`` class/register
    tokens are dropped from the token output). Pooling uses timm's own
    ``forward_head(pre_logits=True)``, so a CNN is average-pooled and a ViT uses its
    class token (or whatever ``global_pool`` says).
    """

    def __init__(self, spec: ImageSpec, dim: int, tokens: bool, normalize: bool) -> None:
        super().__init__()
        self.tokens = tokens
        self.normalize = normalize
        self.backbone = _create_timm(spec)
        layout, channels, grid, prefix = _probe_backbone(self.backbone, spec)
        self.feature_layout: FeatureLayout = layout
        self.feature_channels = channels
        #: (rows, cols) of the region/patch grid (None when unknown); with
        #: ``num_prefix_tokens`` it lets a Grad-CAM reshape_transform rebuild the map.
        self.grid_size: tuple[int, int] | None = grid
        self.num_prefix_tokens = prefix
        self.num_tokens = grid[0] * grid[1] if grid else 0
        self.proj = nn.Linear(channels, dim)
        #: Dotted path (relative to this module) of the Grad-CAM target layer and the rule
        #: that chose it (:func:`~mmaudit.engine.layer_detection.detect_cam_target`).
        self.gradcam_layer, self.gradcam_rule = _gradcam_layer(self.backbone, spec)

    def _token_features(self, feats: torch.Tensor) -> torch.Tensor:
        if self.feature_layout == "NCHW":
            return feats.flatten(2).transpose(1, 2)
        if self.feature_layout == "NHWC":
            return feats.flatten(1, 2)
        return feats[:, self.num_prefix_tokens :]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, dim) pooled, or (B, T_img, dim) region tokens."""
        feats = self.backbone.forward_features(image)
        if self.tokens:
            return self.proj(self._token_features(feats))
        pooled = self.backbone.forward_head(feats, pre_logits=True)
        out = self.proj(pooled)
        return F.normalize(out, dim=-1) if self.normalize else out


def _create_timm(spec: ImageSpec) -> nn.Module:
    """``timm.create_model`` without any download; ``img_size`` is passed when accepted."""
    import timm

    kwargs = dict(spec.timm_kwargs)
    base = {"pretrained": False, "num_classes": 0, "in_chans": spec.in_chans}
    clash = sorted(set(base) & set(kwargs))
    if clash:
        raise ModelLoadError(
            f"image.timm_kwargs may not set {clash}: they are fixed by mmaudit",
            hint="use image.in_chans; weights are never downloaded",
        )
    if not timm.is_model(spec.timm_name):
        raise ModelLoadError(
            f"image.timm_name '{spec.timm_name}' is not a timm model",
            hint="see timm.list_models(), e.g. 'resnet18' or 'vit_tiny_patch16_224'",
        )
    try:
        if "img_size" not in kwargs:
            try:
                return timm.create_model(spec.timm_name, **base, img_size=spec.img_size, **kwargs)
            except TypeError as exc:
                if "img_size" not in str(exc):
                    raise
        return timm.create_model(spec.timm_name, **base, **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"cannot build timm model '{spec.timm_name}' with timm_kwargs {spec.timm_kwargs}:"
            f" {type(exc).__name__}: {exc}",
            hint="check image.timm_kwargs against the timm model's constructor",
        ) from exc


@torch.no_grad()
def _probe_backbone(
    backbone: nn.Module, spec: ImageSpec
) -> tuple[FeatureLayout, int, tuple[int, int] | None, int]:
    """Run one blank image to find layout, channel count, grid and prefix-token count."""
    was_training = backbone.training
    backbone.eval()
    try:
        dummy = torch.zeros(1, spec.in_chans, spec.img_size, spec.img_size)
        feats = backbone.forward_features(dummy)
    except Exception as exc:
        raise ModelLoadError(
            f"timm model '{spec.timm_name}' fails on a {spec.in_chans}x{spec.img_size}x"
            f"{spec.img_size} image: {type(exc).__name__}: {exc}",
            hint="check image.img_size / in_chans / timm_kwargs",
        ) from exc
    finally:
        backbone.train(was_training)
    if not isinstance(feats, torch.Tensor) or feats.dim() not in (3, 4):
        raise ModelLoadError(
            f"timm model '{spec.timm_name}': forward_features gave an unsupported output"
            f" ({getattr(feats, 'shape', type(feats).__name__)}); expected a 4-D map or 3-D tokens"
        )
    if feats.dim() == 4:
        if str(getattr(backbone, "output_fmt", "NCHW")) == "NHWC":
            return "NHWC", int(feats.shape[3]), (int(feats.shape[1]), int(feats.shape[2])), 0
        return "NCHW", int(feats.shape[1]), (int(feats.shape[2]), int(feats.shape[3])), 0
    prefix = int(getattr(backbone, "num_prefix_tokens", 0))
    n = int(feats.shape[1]) - prefix
    grid = getattr(getattr(backbone, "patch_embed", None), "grid_size", None)
    grid_t = (int(grid[0]), int(grid[1])) if grid is not None and grid[0] * grid[1] == n else None
    return "NLC", int(feats.shape[2]), grid_t, prefix


def _gradcam_layer(backbone: nn.Module, spec: ImageSpec) -> tuple[str, str]:
    """Path under the encoder of the Grad-CAM target, and the rule that chose it.

    One hooked forward of a blank image through ``forward_features`` and the pooling of
    ``forward_head``: the feature map that feeds the global pool (timm's
    ``forward_features`` output, final norm / activation included), or for token models
    the first norm of the last transformer block (see ``detect_cam_target``).
    """
    image = torch.zeros(1, spec.in_chans, spec.img_size, spec.img_size)
    target = detect_cam_target(
        backbone,
        lambda: backbone.forward_head(backbone.forward_features(image), pre_logits=True),
        image,
    )
    if target.layer is None:
        return "backbone", f"{target.rule} ({target.reason}; the whole backbone is hooked)"
    return "backbone" + (f".{target.layer}" if target.layer else ""), target.rule


class TextEncoder(nn.Module):
    """A Hugging Face encoder (random-init BERT, or a local folder) plus a map to ``dim``.

    Pooled output is the attention-mask-weighted mean of the last hidden states (no
    pooler layer: random-init BERT poolers are untrained noise), projected to ``dim``.
    """

    def __init__(
        self,
        spec: TextSpec,
        dim: int,
        tokens: bool,
        normalize: bool,
        dropout: float,
        load_pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.tokens = tokens
        self.normalize = normalize
        if spec.pretrained_dir is not None:
            self.backbone = _load_pretrained_text(spec.pretrained_dir, load_pretrained)
        else:
            from transformers import BertConfig, BertModel

            config = BertConfig(
                vocab_size=spec.vocab_size,
                hidden_size=spec.hidden_size,
                num_hidden_layers=spec.num_layers,
                num_attention_heads=spec.num_heads,
                intermediate_size=spec.intermediate_size,
                max_position_embeddings=spec.max_length,
                pad_token_id=spec.pad_token_id,
                hidden_dropout_prob=dropout,
                attention_probs_dropout_prob=dropout,
            )
            self.backbone = BertModel(config, add_pooling_layer=False)
        config = self.backbone.config
        self.hidden_size = int(config.hidden_size)
        self.max_length = int(getattr(config, "max_position_embeddings", spec.max_length))
        self.proj = nn.Linear(self.hidden_size, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids and mask -> (B, dim) pooled, or (B, L, dim) token states."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        states = hidden.last_hidden_state
        if self.tokens:
            return self.proj(states)
        out = self.proj(masked_mean(states, attention_mask.bool()))
        return F.normalize(out, dim=-1) if self.normalize else out


def _load_pretrained_text(folder: str, load_weights: bool) -> nn.Module:
    """``AutoModel.from_pretrained(folder, local_files_only=True)`` (config only if not weights)."""
    from pathlib import Path

    from transformers import AutoConfig, AutoModel

    if not Path(folder).is_dir():
        raise ModelLoadError(
            f"text.pretrained_dir '{folder}' is not a folder",
            hint="point it at a local Hugging Face model folder (config.json + weights)",
        )
    try:
        if load_weights:
            return AutoModel.from_pretrained(folder, local_files_only=True)
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        return AutoModel.from_config(config)
    except Exception as exc:
        raise ModelLoadError(
            f"text.pretrained_dir '{folder}': cannot load a Hugging Face model:"
            f" {type(exc).__name__}: {exc}",
            hint="the folder needs config.json (and weights) as written by save_pretrained",
        ) from exc


class TabularEncoder(nn.Module):
    """MLP ``n_features -> hidden... -> dim`` with ReLU (and dropout) between layers."""

    def __init__(
        self, spec: TabularSpec, dim: int, tokens: bool, normalize: bool, dropout: float
    ) -> None:
        super().__init__()
        self.tokens = tokens
        self.normalize = normalize
        layers: list[nn.Module] = []
        width = spec.n_features
        for h in spec.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, tabular: torch.Tensor) -> torch.Tensor:
        """(B, n_features) -> (B, dim) pooled, or (B, 1, dim) as a single token."""
        out = self.mlp(tabular)
        if self.tokens:
            return out.unsqueeze(1)
        return F.normalize(out, dim=-1) if self.normalize else out
