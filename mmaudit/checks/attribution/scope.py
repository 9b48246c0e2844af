"""What the check can attribute on this model and data, and what it attributes.

Each part (report words, labs, modality shares) has a reason it cannot run, or None:
``missing_requirements`` skips the whole check when neither words nor labs can be
attributed, and ``run`` notes each part it skips with its reason. A multilabel run also
says which label each part explains.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from mmaudit.methods.attribution_target import unknown_tokens
from mmaudit.methods.text_attribution import (
    content_mask,
    find_text_embedding_layer,
    text_layer_problem,
)

if TYPE_CHECKING:
    from mmaudit.checks.contract import AuditContext
    from mmaudit.methods.attribution_target import Target


def text_unavailable(ctx: AuditContext, enabled: bool = True) -> str | None:
    """Why report words cannot be attributed on this model and data, or None."""
    ds, adapter = ctx.dataset, ctx.adapter
    if not enabled:
        return "disabled (params.text: false)"
    if "text" not in ds.modalities or ds.input_ids is None:
        return "the data has no report text"
    if "text" not in adapter.keywords:
        return "the model takes no report text"
    if not adapter.supports_hooks:
        return "needs layer hooks, which a TorchScript model does not allow"
    layer = find_text_embedding_layer(adapter)
    if layer is None:
        return (
            "no token-embedding layer found (name the nn.Embedding that reads the token ids in"
            " model.layers.text_embeddings, e.g. text_encoder.embeddings.word_embeddings)"
        )
    tok = ds.tokenizer
    content = content_mask(ds.input_ids, ds.attention_mask, tok)  # type: ignore[arg-type]
    present = torch.from_numpy(ds.present[:, ds.modalities.index("text")])
    content &= present[:, None]
    if not bool(content.any()):
        return "every report is empty or missing"
    unknown = unknown_tokens(tok, ds.input_ids, content)
    if unknown is not None:
        return unknown
    # one small forward: the layer must give one vector per token (an EmbeddingBag fed
    # flat ids, or a pooled layer named by mistake, cannot be attributed word by word)
    rows = np.flatnonzero(content.any(1).numpy())[:4]
    return text_layer_problem(adapter, layer, next(iter(ds.batches(len(rows), indices=rows))))


def tabular_unavailable(ctx: AuditContext, enabled: bool = True) -> str | None:
    """Why lab features cannot be attributed on this model and data, or None."""
    ds = ctx.dataset
    if not enabled:
        return "disabled (params.tabular: false)"
    if "tabular" not in ds.modalities or ds.tabular is None:
        return "the data has no tabular columns"
    if "tabular" not in ctx.adapter.keywords:
        return "the model takes no tabular input"
    missing = ds.tabular_missing.numpy() if ds.tabular_missing is not None else None
    if missing is not None and missing.all():
        return "every tabular column is empty in every row"
    if not ds.present[:, ds.modalities.index("tabular")].any():
        return "no sample has any lab value"
    return None


def shares_unavailable(ctx: AuditContext, enabled: bool = True) -> str | None:
    """Why modality shares cannot be computed, or None."""
    if not enabled:
        return "disabled (params.shares: false)"
    if not ctx.adapter.supports_hooks:
        return "needs layer hooks, which a TorchScript model does not allow"
    mods = [m for m in ctx.dataset.modalities if m in ctx.adapter.layers]
    if len(mods) < 2:
        return "needs at least two modality encoder layers (model.layers.image / text / tabular)"
    cols = [ctx.dataset.modalities.index(m) for m in mods]
    if not ctx.dataset.present[:, cols].all(1).any():
        return f"no sample has all of {mods}"
    return None


def multilabel_note(labels: list[Target], target: Target, target_class: int) -> str:
    """What a multilabel run attributes: every label's logit for the report words, one
    label's for the labs and the modality shares."""
    names = [t.label for t in labels]
    return (
        f"multilabel target: each of the {len(labels)} label columns ({', '.join(map(str, names))})"
        " is explained as a binary target of its own, never the arg-max label. Report words:"
        f" one Integrated Gradients pass per label ({len(labels)} passes over the attributed"
        " reports); word_ranking ranks the words of every report for each label, toward the"
        " label (its logit) and toward 'not <label>' (the logit negated); its direction and"
        " logit_attribution columns and the score column of text_token_attributions name the"
        " logit. text.stoplist_share, text.punctuation_share and text.site_word_share.* pool"
        " every label's |attribution|. Lab SHAP values (tabular.*) and modality shares"
        f" (shares.*) explain label {target.label} only (params.target_class={target_class};"
        " set it for another label)"
    )
