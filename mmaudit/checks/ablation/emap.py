"""EMAP (Hessel & Lee 2020): the model's best additive projection, one more variant scored
like the model. A model that fuses its modalities does better than its projection; one that
only adds them up does not."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmaudit.checks.ablation.plan import Plan
from mmaudit.checks.ablation.scoring import predicted_probs
from mmaudit.checks.contract import AuditContext
from mmaudit.engine.data import Batch
from mmaudit.methods.shapley import emap_projection

if TYPE_CHECKING:
    from mmaudit.checks.ablation.check import AblationCheck


@dataclass(frozen=True)
class Emap:
    """Predicted probabilities of the additive projection (n[, K]) and how they were made."""

    probs: np.ndarray
    notes: list[str]


def emap_variant(ctx: AuditContext, plan: Plan, kind: str, params: AblationCheck.Params) -> Emap:
    """The projection with ``emap_partners`` reference samples at the encoder level (only
    fusion and head run), ``emap_partners_input`` at the input (the whole model runs)."""
    partners = params.emap_partners if plan.level == "encoder" else params.emap_partners_input
    projected, note = emap_logits(ctx, plan.players, plan.level, partners)
    return Emap(probs=predicted_probs(projected, kind), notes=[note])


def emap_logits(
    ctx: AuditContext, players: list[str], level: str, partners: int
) -> tuple[np.ndarray, str]:
    """Logits of the model's additive projection (N, K), and a note saying how they were made.

    Each sample's modality ``m`` is combined with every other modality of ``R`` reference
    samples (the same for all samples, drawn with the run seed): N x R x M evaluations
    instead of Hessel & Lee's N^2 x M. At the encoder level the encoders are replaced by
    their cached outputs, so only fusion and head run; at the input level the whole
    model runs on the mixed inputs. The presence flags and raw inputs (e.g. the text
    attention mask an attention fusion reads) travel with their modality.
    """
    ds = ctx.dataset
    n = len(ds)
    adapter = ctx.adapter
    device = adapter.device
    rng = ctx.rng("ablation.emap")
    ref = np.sort(rng.choice(n, size=min(partners, n), replace=False))
    donor = ds.collate([ds[int(j)] for j in ref]).to(device)
    ref_t = torch.from_numpy(ref)
    cached: dict[str, torch.Tensor] = {}
    if level == "encoder":
        cached = {
            # a private in-RAM copy: the cache's arrays may be read-only memory maps, and a
            # model that edits its inputs in place must not write into them
            m: torch.from_numpy(np.array(ctx.cache.embeddings(m))).to(device)
            for m in ds.modalities
            if m in adapter.layers
        }
    current: dict[str, torch.Tensor] = {}

    def evaluate(batch: Batch) -> np.ndarray:
        rows = batch.index.cpu()
        size = len(batch)
        cols: list[list[np.ndarray]] = [[] for _ in players]
        with contextlib.ExitStack() as stack:
            for m in cached:
                stack.enter_context(
                    adapter.substitute(m, lambda m=m: current[m])  # type: ignore[misc]
                )
            for r in range(len(ref)):
                for a, keep in enumerate(players):
                    others = [m for m in players if m != keep]
                    mixed = _mix(batch, donor, r, others)
                    for m in cached:
                        if m in others:
                            current[m] = cached[m][ref_t[r]].expand(size, *cached[m].shape[1:])
                        else:
                            current[m] = cached[m][rows]
                    cols[a].append(adapter.logits(mixed).float().cpu().numpy())
        return np.stack([np.stack(c, axis=1) for c in cols])  # (M, B, R, K)

    start = time.perf_counter()
    parts = ctx.cache.map_batches(evaluate, desc="ablation EMAP")
    cross = np.concatenate(parts, axis=1)
    took = time.perf_counter() - start
    base = ctx.cache.sweep().logits
    note = (
        f"EMAP: each sample's modality combined with the other modalities of {len(ref)}"
        f" reference samples ({cross.shape[0] * cross.shape[1] * cross.shape[2]}"
        f" evaluations at the {level} level, {took:.2f} s) instead of all {n} (N^2 cost);"
        " the projection is exactly additive and reproduces an additive model exactly"
    )
    return emap_projection(base, cross), note


def _mix(batch: Batch, donor: Batch, r: int, others: list[str]) -> Batch:
    """``batch`` with the modalities ``others`` (inputs and presence) from donor row ``r``."""
    size = len(batch)
    changes: dict[str, Any] = {}
    present = batch.present.clone()
    for m in others:
        col = batch.modalities.index(m)
        present[:, col] = donor.present[r, col]
        if m == "image" and donor.image is not None:
            changes["image"] = donor.image[r : r + 1].expand(size, *donor.image.shape[1:])
        elif m == "text" and donor.input_ids is not None:
            changes["input_ids"] = donor.input_ids[r : r + 1].expand(size, -1)
            changes["attention_mask"] = donor.attention_mask[r : r + 1].expand(size, -1)  # type: ignore[index]
        elif m == "tabular" and donor.tabular is not None:
            changes["tabular"] = donor.tabular[r : r + 1].expand(size, -1)
            if donor.tabular_missing is not None:
                changes["tabular_missing"] = donor.tabular_missing[r : r + 1].expand(size, -1)
    changes["present"] = present
    return batch.replace(**changes)
