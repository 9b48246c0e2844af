"""A CLIP-style zero-shot classifier, wrapped so that mmaudit can audit it.

Why: many teams classify chest X-rays zero-shot with a dual encoder (CheXzero, BiomedCLIP,
MedCLIP style): the image embedding is compared with the embeddings of fixed class prompts
("no opacity" / "opacity"), and the scaled cosine similarities are the class logits. Such a
model takes the image only -- the prompts are part of the model, not of the study -- so
mmaudit sees a one-modality image classifier whose "head" is the prompt similarity.

A config points ``model.factory`` at :func:`build` (see ``examples/clip_zero_shot.yaml`` and
``docs/own-model.md``, "A CLIP-style zero-shot model")::

    model:
      factory: "clip_zero_shot:build"
      python_path: [.]                      # the folder of this file
      kwargs: {pretrained: /models/my-clip, prompts: [["no opacity"], ["opacity"]]}
      inputs: {image: pixel_values}

Two ways to get the weights, both offline:

- ``pretrained``: a local folder written by ``CLIPModel.save_pretrained`` (its tokenizer
  saved beside it, or named by ``tokenizer``); no ``model.weights`` needed;
- no ``pretrained``: a CLIP built from a small config (the shape kwargs below, used by the
  tests) whose trained weights come from ``model.weights``, a state_dict of
  :class:`ClipZeroShot` (keys ``clip.*``).

The prompts are tokenised once, here, with a tokenizer loaded by
``AutoTokenizer.from_pretrained(folder)`` (never ``BertTokenizerFast(vocab_file=...)``, which
maps every word to ``[UNK]`` under transformers 5). Their token ids are non-persistent
buffers: the state_dict holds the CLIP weights only, so a checkpoint does not pin the prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from transformers import CLIPModel

#: The tokenizer bundled with the sample (a BERT WordPiece vocabulary), for the tiny model.
SAMPLE_TOKENIZER = Path(__file__).resolve().parent.parent / "sample_data" / "tokenizer"
#: One list of prompts per class, in the target's class order (0 = negative, 1 = positive).
DEFAULT_PROMPTS: tuple[tuple[str, ...], ...] = (
    ("no opacity", "clear lungs"),
    ("opacity", "consolidation"),
)
#: CLIP's published preprocessing, for ``data.image.mean`` / ``std`` (channels: 3).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipZeroShot(nn.Module):
    """A ``transformers`` ``CLIPModel`` whose forward takes mmaudit's image batch and returns
    the prompt similarities as logits ``(B, K)``, K = number of classes.

    ``logits[b, k] = exp(logit_scale) * cos(image_embedding[b], class_embedding[k])``, where
    ``class_embedding[k]`` is the normalised mean of the normalised embeddings of class k's
    prompts (prompt ensembling, as in CLIP's zero-shot recipe). The softmax over K is CLIP's
    zero-shot probability.

    Named layers for ``model.layers`` (see :func:`layers_for`): ``clip.visual_projection`` is the
    image embedding the similarities read; ``clip.vision_model.post_layernorm`` is the vision
    tower's pooled output; the last block's ``layer_norm1`` is the ViT Grad-CAM target.
    """

    def __init__(
        self,
        clip: CLIPModel,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        prompt_class: torch.Tensor,
        n_classes: int,
    ) -> None:
        super().__init__()
        self.clip = clip
        self.n_classes = n_classes
        self.register_buffer("prompt_ids", prompt_ids, persistent=False)
        self.register_buffer("prompt_mask", prompt_mask, persistent=False)
        self.register_buffer("prompt_class", prompt_class, persistent=False)

    def class_embeddings(self) -> torch.Tensor:
        """One unit vector per class ``(K, D)``: the prompts' text embeddings, averaged per
        class. Fixed for fixed weights; recomputed per call because it costs a few prompts
        through the text tower and must follow a state_dict loaded after construction."""
        text = self.clip.get_text_features(
            input_ids=self.prompt_ids, attention_mask=self.prompt_mask
        ).pooler_output
        text = F.normalize(text.float(), dim=-1)
        sums = torch.zeros(self.n_classes, text.shape[1], device=text.device, dtype=text.dtype)
        sums.index_add_(0, self.prompt_class, text)
        return F.normalize(sums, dim=-1)

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The image embedding ``(B, D)`` (output of ``clip.visual_projection``), unnormalised."""
        return self.clip.get_image_features(pixel_values=pixel_values).pooler_output

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Prompt-similarity logits ``(B, K)`` for images ``(B, 3, H, W)`` already normalised
        as the model expects (``data.image``: channels 3, CLIP's mean / std)."""
        if pixel_values.shape[1] == 1:  # a greyscale batch: CLIP's stem wants RGB
            pixel_values = pixel_values.expand(-1, 3, -1, -1)
        image = F.normalize(self.image_embeddings(pixel_values).float(), dim=-1)
        scale = self.clip.logit_scale.exp().float()
        return scale * image @ self.class_embeddings().t()


def layers_for(n_layers: int) -> dict[str, str]:
    """The dotted module paths ``model.layers`` names for a :class:`ClipZeroShot` whose ViT
    vision tower has ``n_layers`` blocks: the image embedding the similarities read, the
    vision tower's pooled output, and the ViT Grad-CAM target (the last block's first
    LayerNorm, pytorch-grad-cam's ViT recipe: its patch tokens still reach the class token
    through that block's attention, which the output of ``layer_norm2`` no longer does)."""
    vision = "clip.vision_model"
    return {
        "embedding": "clip.visual_projection",
        "image": f"{vision}.post_layernorm",
        "gradcam": f"{vision}.encoder.layers.{n_layers - 1}.layer_norm1",
    }


def tokenize_prompts(
    tokenizer: Any, prompts: Sequence[Sequence[str]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, attention mask and class index of every prompt (one list per class)."""
    flat = [(k, text) for k, texts in enumerate(prompts) for text in texts]
    enc = tokenizer([text for _, text in flat], padding=True, return_tensors="pt")
    classes = torch.tensor([k for k, _ in flat], dtype=torch.long)
    return enc["input_ids"], enc["attention_mask"], classes


def _class_prompts(prompts: Sequence[str | Sequence[str]]) -> list[list[str]]:
    """Prompts as one list per class: a plain string is a class with one prompt."""
    out = [[p] if isinstance(p, str) else [str(t) for t in p] for p in prompts]
    if len(out) < 2 or any(not texts for texts in out):
        raise ValueError(
            f"prompts: give at least two classes, each with at least one prompt; got {prompts!r}"
        )
    return out


def build(
    prompts: Sequence[str | Sequence[str]] = DEFAULT_PROMPTS,
    pretrained: str | None = None,
    tokenizer: str | None = None,
    image_size: int = 224,
    patch_size: int = 16,
    hidden_size: int = 768,
    n_layers: int = 12,
    n_heads: int = 12,
    projection_dim: int = 512,
    seed: int = 0,
) -> ClipZeroShot:
    """The factory ``model.factory: "clip_zero_shot:build"`` names.

    ``prompts``: one entry per class in the target's class order, each a prompt or a list
    of prompts (averaged). ``pretrained``: a local ``CLIPModel.save_pretrained`` folder; its
    tokenizer is loaded from ``tokenizer`` or, when that is not given, from the same
    folder. Without ``pretrained``, a randomly initialised CLIP of the given shape (ViT-B/16
    by default; the tests use a tiny one), whose weights ``model.weights`` then loads; its
    text tower's vocabulary is the tokenizer's (default: the sample's, ``SAMPLE_TOKENIZER``).
    Relative folders are read from the working directory. Nothing is downloaded.
    """
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    classes = _class_prompts(prompts)
    if pretrained is not None:
        clip = CLIPModel.from_pretrained(pretrained, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(tokenizer or pretrained, local_files_only=True)
    else:
        tok = AutoTokenizer.from_pretrained(tokenizer or SAMPLE_TOKENIZER, local_files_only=True)
        # CLIP pools the text at the first end-of-text token: [SEP] for a BERT vocabulary
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        config = CLIPConfig(
            projection_dim=projection_dim,
            vision_config=_tower(hidden_size, n_layers, n_heads, projection_dim)
            | {"image_size": image_size, "patch_size": patch_size},
            text_config=_tower(hidden_size, n_layers, n_heads, projection_dim)
            | {
                "vocab_size": len(tok),
                "max_position_embeddings": 77,
                "eos_token_id": eos,
                "bos_token_id": bos,
                "pad_token_id": tok.pad_token_id,
            },
        )
        torch.manual_seed(seed)
        clip = CLIPModel(config)
    ids, mask, cls = tokenize_prompts(tok, classes)
    return ClipZeroShot(clip.eval(), ids, mask, cls, len(classes))


def _tower(hidden_size: int, n_layers: int, n_heads: int, projection_dim: int) -> dict[str, int]:
    return {
        "hidden_size": hidden_size,
        "intermediate_size": 4 * hidden_size,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "projection_dim": projection_dim,
    }
