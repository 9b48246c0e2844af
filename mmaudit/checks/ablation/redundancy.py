"""The redundancy ratio of each pair of modalities, under a neutral removal: a permuted
modality is a competing signal, not an absent one, so "either alone suffices" cannot show
under 'permute'. Here: the neutral variants the ratio needs (rows of the joint bootstrap
table) and the ratio itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mmaudit.checks.ablation.coalitions import coalition_removals
from mmaudit.checks.ablation.plan import Plan
from mmaudit.checks.ablation.scoring import predicted_probs
from mmaudit.checks.contract import AuditContext
from mmaudit.methods.shapley import pair_names

# a pair whose joint removal costs less than this (metric units) is too unimportant for a
# redundancy ratio to mean anything
MIN_JOINT_DROP = 0.01


@dataclass(frozen=True)
class NeutralGame:
    """Predictions of the coalitions the redundancy ratio reads under the neutral removal
    (none when that is the run's own removal), ``rows``: coalition mask -> its row of the
    variant table, and the note saying which removal it was."""

    probs: np.ndarray
    rows: dict[int, int]
    notes: list[str]


def neutral_game(
    ctx: AuditContext,
    plan: Plan,
    masks: np.ndarray,
    probs: np.ndarray,
    kind: str,
    with_emap: bool,
) -> NeutralGame:
    """The leave-one-out and leave-two-out coalitions under ``plan.neutral``; their rows
    follow the coalitions and the EMAP variant (when ``with_emap``) in the variant table."""
    players, neutral, level = plan.players, plan.neutral, plan.level
    if neutral == plan.strategy:
        neutral_rows = {int(s): int(s) for s in masks}
        neutral_probs = np.empty((0, *probs.shape[1:]))
    else:
        full_mask = int(masks[-1])
        wanted = sorted(
            {full_mask & ~(1 << j) for j in range(len(players))}
            | {full_mask & ~(1 << j) & ~(1 << k) for j, k, _ in pair_names(players)}
        )
        extra = ctx.cache.ablated_many(
            coalition_removals(players, np.array(wanted), neutral), level
        )
        neutral_probs = np.stack([predicted_probs(r.logits, kind) for r in extra])
        first = len(masks) + (1 if with_emap else 0)
        neutral_rows = {full_mask: full_mask}
        neutral_rows.update({s: first + i for i, s in enumerate(wanted)})
    note = (
        f"redundancy.* is computed with the modalities removed as '{neutral}'"
        + (
            " (the model's own missing-modality path)"
            if neutral == "missing"
            else f" (the dataset mean, at the {level} level)"
        )
        + ": a neutral removal, so that a modality whose information another one carries"
        " shows as redundant"
    )
    return NeutralGame(probs=neutral_probs, rows=neutral_rows, notes=[note])


def redundancy_ratio(game: np.ndarray, full: int, j: int, k: int, both: int) -> Any:
    """1 - max(drop without j, drop without k, 0) / drop without both (NaN if that is tiny)."""
    d_j = game[full] - game[full & ~(1 << j)]
    d_k = game[full] - game[full & ~(1 << k)]
    d_jk = game[full] - game[both]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = 1.0 - np.maximum(np.maximum(d_j, d_k), 0.0) / d_jk
    return np.where(d_jk > MIN_JOINT_DROP, ratio, np.nan)
