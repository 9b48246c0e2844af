"""Every coalition of the players (all 2^M subsets of modalities kept), evaluated with the
other modalities removed: at the encoder level all coalitions run in one pass on the fusion
head from the cached encoder outputs; at the input level each reruns the whole model."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmaudit.checks.ablation.plan import Plan
from mmaudit.checks.ablation.scoring import predicted_probs
from mmaudit.checks.contract import AuditContext


@dataclass(frozen=True)
class Coalitions:
    """The coalition masks (bit j set = player j kept; the last is the full model), their
    logits and predicted probabilities (2^M, n[, K]), and notes on how they were made."""

    masks: np.ndarray
    logits: list[np.ndarray]
    probs: np.ndarray
    notes: list[str]


def coalition_removals(players: list[str], masks: np.ndarray, how: str) -> list[dict[str, Any]]:
    """The removal of every coalition mask: each player whose bit is clear, removed as ``how``."""
    return [{mod: how for j, mod in enumerate(players) if not (int(s) >> j) & 1} for s in masks]


def evaluate_coalitions(ctx: AuditContext, plan: Plan, kind: str) -> Coalitions:
    """Every coalition from the cache (memoised), timed, with the removal of ``plan``."""
    players, strategy, level = plan.players, plan.strategy, plan.level
    masks = np.arange(1 << len(players))
    start = time.perf_counter()
    coal_logits = [
        r.logits
        for r in ctx.cache.ablated_many(coalition_removals(players, masks, strategy), level)
    ]
    took = time.perf_counter() - start
    notes = [
        f"{len(masks)} coalitions of {', '.join(players)} at the {level} level"
        f" (removal: {strategy}) in {took:.2f} s ({took / len(masks):.3f} s per coalition,"
        " cached sweeps included)"
    ]
    if strategy == "mean" and level == "input" and "text" in players:
        notes.append(
            "'mean' removal of the report at the input is the empty report (a report has"
            " no mean); images and labs take their dataset mean"
        )
    probs = np.stack([predicted_probs(lg, kind) for lg in coal_logits])
    return Coalitions(masks=masks, logits=coal_logits, probs=probs, notes=notes)
