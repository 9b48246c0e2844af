"""Stage: Integrated Gradients of every target's score over the report tokens.

The report's words move from the baseline token (``[PAD]`` by default) to their values
on the token-embedding layer while image and labs stay at their observed, cached encoder
outputs; one IG pass per target (one for a binary or multiclass model, one per label
column of a multilabel one). The stage hands back the raw attributions; ranking, shares
and examples are the stages that read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from mmaudit.checks.attribution.rows import strata_of, stratified_cap
from mmaudit.methods.text_attribution import (
    baseline_token_id,
    content_mask,
    find_text_embedding_layer,
    text_integrated_gradients,
)

if TYPE_CHECKING:
    from mmaudit.checks.attribution.check import AttributionCheck
    from mmaudit.checks.contract import AuditContext
    from mmaudit.engine.data import Batch
    from mmaudit.methods.attribution_target import Target
    from mmaudit.methods.memory_budget import MemoryBudget


@dataclass(frozen=True)
class ReportAttribution:
    """IG over the attributed reports: ``rows`` (dataset rows, in order) of the
    ``n_eligible`` reports with words; ``attr`` (targets, reports, tokens) the token
    attributions, ``fx`` and ``fb`` (targets, reports) the score of each report as written
    and of its all-baseline reference."""

    rows: np.ndarray
    n_eligible: int
    attr: np.ndarray
    fx: np.ndarray
    fb: np.ndarray
    #: what the cap's draw was stratified by (``label`` or ``label x <site attribute>``)
    strata_by: str = "label"
    #: (label, site) cells among the eligible reports, and those the draw kept
    n_cells: int = 0
    n_cells_kept: int = 0


def attribute_reports(
    ctx: AuditContext,
    p: AttributionCheck.Params,
    targets: list[Target],
    budget: MemoryBudget | None = None,
) -> ReportAttribution:
    """IG of every target's score over the tokens of the reports that have words; above
    ``max_text_samples`` of them, a seeded draw stratified by label and site."""
    ds, adapter = ctx.dataset, ctx.adapter
    tok = ds.tokenizer
    assert ds.input_ids is not None and ds.attention_mask is not None
    layer = find_text_embedding_layer(adapter)
    assert layer is not None
    content_all = content_mask(ds.input_ids, ds.attention_mask, tok)
    present = ds.present[:, ds.modalities.index("text")]
    eligible = np.flatnonzero(present & content_all.any(1).numpy())
    strata, strata_by = strata_of(ctx, eligible, p.site_attribute)
    rows = stratified_cap(eligible, p.max_text_samples, strata, ctx.rng("attribution.text"))
    fixed = {
        m: torch.from_numpy(np.array(ctx.cache.embeddings(m)))  # writable copy of a memmap
        for m in ds.modalities
        if m != "text" and m in adapter.layers
    }
    token_id = baseline_token_id(tok, p.baseline_token)
    score_fns = [t.score_fn() for t in targets]

    def attribute(b: Batch) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        assert b.input_ids is not None and b.attention_mask is not None
        content = content_mask(b.input_ids, b.attention_mask, tok)
        held = {m: t[b.index.cpu()].to(adapter.device) for m, t in fixed.items()}
        result = []
        for score_fn in score_fns:
            attr, fx, fb = text_integrated_gradients(
                adapter,
                b,
                layer,
                score_fn,
                content,
                token_id,
                n_steps=p.ig_steps,
                steps_per_pass=p.ig_steps_per_pass,
                method=p.ig_method,
                fixed=held,
                budget=budget,
            )
            result.append((attr.detach().cpu().numpy(), fx.cpu().numpy(), fb.cpu().numpy()))
        return result

    parts = ctx.cache.map_batches(attribute, grad=True, desc="text IG", indices=rows)
    # (targets, reports, tokens) and (targets, reports)
    attr = np.stack([np.concatenate([q[t][0] for q in parts]) for t in range(len(targets))])
    fx = np.stack([np.concatenate([q[t][1] for q in parts]) for t in range(len(targets))])
    fb = np.stack([np.concatenate([q[t][2] for q in parts]) for t in range(len(targets))])
    kept = len(np.unique(strata[np.isin(eligible, rows)]))
    return ReportAttribution(
        rows, len(eligible), attr, fx, fb, strata_by, len(np.unique(strata)), kept
    )


def token_table(
    ctx: AuditContext,
    rows: np.ndarray,
    spans: list[list[tuple[str, list[int]]]],
    attr: np.ndarray,
) -> pd.DataFrame:
    """Every attributed token: report id, token position and text, the word it belongs to
    (``word_index`` counts words within the report) and its IG attribution."""
    ds = ctx.dataset
    assert ds.input_ids is not None
    columns = ["id", "position", "token", "word_index", "word", "attribution"]
    # one flat entry per (report, word, token position), in report and word order
    doc_of, position, word_index, word = [], [], [], []
    for d, doc in enumerate(spans):
        for w, (text, positions) in enumerate(doc):
            doc_of.extend([d] * len(positions))
            position.extend(positions)
            word_index.extend([w] * len(positions))
            word.extend([text] * len(positions))
    if not position:
        return pd.DataFrame(columns=columns)
    doc_arr = np.asarray(doc_of, dtype=np.int64)
    pos_arr = np.asarray(position, dtype=np.int64)
    token_ids = ds.input_ids[rows].numpy()[doc_arr, pos_arr]
    convert = getattr(ds.tokenizer, "convert_ids_to_tokens", None)
    tokens = convert(token_ids.tolist()) if convert is not None else token_ids.astype(str)
    return pd.DataFrame(
        {
            "id": np.asarray(ds.ids, dtype=object)[np.asarray(rows)[doc_arr]],
            "position": pos_arr,
            "token": tokens,
            "word_index": np.asarray(word_index, dtype=np.int64),
            "word": word,
            "attribution": attr[doc_arr, pos_arr].astype(float),
        },
        columns=columns,
    )
