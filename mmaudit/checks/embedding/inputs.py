"""The check's inputs as plain arrays: what the analysis reads, gathered from an audit
context by ``inputs_from_context`` or built directly by tests and benchmarks.

Why apart from the stages: every stage reads the same inputs, and none needs a model or a
dataset object to do so.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

if TYPE_CHECKING:
    from mmaudit.checks.contract import AuditContext
    from mmaudit.checks.embedding.check import EmbeddingCheck

LAYERS: tuple[str, ...] = ("embedding", "image", "text", "tabular")
MODALITY_LAYERS: tuple[str, ...] = ("image", "text", "tabular")


@dataclass
class EmbeddingInputs:
    """Everything the analysis reads, independent of a model or a dataset object.

    ``run`` fills it from the audit context; tests and benchmarks build it directly.
    ``target`` is (N,) class indices, or (N, C) 0/1 for multilabel. ``probs`` are the
    model's probabilities (N, K) or None. ``continuous`` maps each continuous attribute
    to its bins (None: quartiles). ``present`` maps a modality layer to the rows where
    that modality was given (elsewhere the encoder output is a fill-in, not the data).
    ``load_image(i)`` returns row i's image as (H, W) or (H, W, 3) for thumbnails.
    """

    embeddings: dict[str, np.ndarray]
    ids: np.ndarray
    target: np.ndarray
    class_names: list[str]
    target_kind: str = "binary"
    probs: np.ndarray | None = None
    attributes: pd.DataFrame | None = None
    continuous: dict[str, list[float] | None] = field(default_factory=dict)
    groups: np.ndarray | None = None
    present: dict[str, np.ndarray] = field(default_factory=dict)
    texts: list[str] | None = None
    text_mask: np.ndarray | None = None
    load_image: Callable[[int], np.ndarray] | None = None
    shared_space: bool | None = None
    device: torch.device | str = "cpu"
    seed: int = 0

    def rng(self, salt: str) -> np.random.Generator:
        """The same stream ``AuditContext.rng`` gives for this seed and salt."""
        return np.random.default_rng([self.seed, zlib.crc32(salt.encode())])


def inputs_from_context(ctx: AuditContext, p: EmbeddingCheck.Params) -> EmbeddingInputs:
    """Gather the cached embeddings, predictions and dataset fields the analysis reads."""
    from mmaudit.engine.sweep_outputs import logits_to_probs

    ds = ctx.dataset
    wanted = [ly for ly in (p.layers or list(LAYERS)) if ly in ctx.adapter.layers]
    kind = ctx.config.data.target.kind
    sweep = ctx.cache.sweep()
    probs = logits_to_probs(sweep.logits, "multiclass" if kind == "multiclass" else "multilabel")
    if kind == "multiclass" and sweep.logits.shape[1] == 1:
        probs = logits_to_probs(sweep.logits, "multilabel")
    present = {
        m: ds.present[:, ds.modalities.index(m)] for m in MODALITY_LAYERS if m in ds.modalities
    }
    continuous = {
        name: a.bins for name, a in ctx.config.data.attributes.items() if a.kind == "continuous"
    }
    load_image = None
    if ds.cfg.image is not None:

        def load_image(i: int) -> np.ndarray:
            if ds.image_paths[i] is None:
                return np.zeros((8, 8))
            t = ds.load_image(i)
            return t[0].numpy() if t.shape[0] == 1 else t.permute(1, 2, 0).numpy()

    spec = getattr(ctx.adapter.module, "spec", None)
    fusion = getattr(spec, "fusion", None)
    shared = None if fusion is None else fusion == "projection"
    mask = ds.attention_mask.numpy() if ds.attention_mask is not None else None
    return EmbeddingInputs(
        embeddings={ly: ctx.cache.embeddings(ly) for ly in wanted},
        ids=np.asarray(ds.ids),
        target=np.asarray(ds.target),
        class_names=list(ds.class_names),
        target_kind=kind,
        probs=probs,
        attributes=ds.attributes.reset_index(drop=True) if len(ds.attributes.columns) else None,
        continuous=continuous,
        groups=ctx.groups,
        present=present,
        texts=list(ds.texts) if ds.texts else None,
        text_mask=mask,
        load_image=load_image,
        shared_space=shared,
        device=ctx.adapter.device,
        seed=ctx.seed,
    )
