"""The per-sample game of the model's output (MM-SHAP style): each sample's logit-scale
output under every coalition, its exact Shapley values, shares of |value|, and pairwise
interactions with float rounding set to 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmaudit.checks.ablation.coalitions import coalition_removals
from mmaudit.checks.ablation.plan import Plan
from mmaudit.checks.contract import AuditContext
from mmaudit.methods.shapley import interaction_index, shapley_values

if TYPE_CHECKING:
    from mmaudit.checks.ablation.check import AblationCheck

# per-sample logit interactions smaller than this fraction of the typical |logit| are float
# rounding (float32 eps is 1.2e-7; a game value sums a few rounded logits), not interaction
LOGIT_INTERACTION_RTOL = 1e-5


@dataclass(frozen=True)
class SampleGame:
    """The per-sample game (2^M, n) of the output value, and the note on its permutations."""

    values: np.ndarray
    notes: list[str]


@dataclass(frozen=True)
class LogitShapley:
    """Per-sample Shapley values ``phi`` (M, n), their absolute values, the MM-SHAP shares
    of |phi| (NaN where every value is 0), the interactions (M, M, n) with float rounding
    set to 0, and the largest efficiency error (sum of phi vs full minus empty)."""

    values: np.ndarray
    phi: np.ndarray
    abs_phi: np.ndarray
    shares: np.ndarray
    inter: np.ndarray
    efficiency: float


def output_value(logits: np.ndarray, kind: str, reference: np.ndarray | None = None) -> np.ndarray:
    """The per-sample scalar that per-sample Shapley attributes (MM-SHAP style).

    Binary: the log-odds of the positive class. Multiclass: the log-probability of the
    class the full model predicts (``reference``). Multilabel: the mean label logit.
    """
    if kind == "binary":
        return logits[:, 0] if logits.shape[1] == 1 else logits[:, -1] - logits[:, 0]
    if kind == "multiclass" and logits.shape[1] > 1:
        z = logits - logits.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        ref = logits.argmax(1) if reference is None else reference
        return logp[np.arange(len(logp)), ref]
    return logits.mean(1)


def sample_game(
    ctx: AuditContext,
    coal_logits: list[np.ndarray],
    plan: Plan,
    masks: np.ndarray,
    params: AblationCheck.Params,
) -> SampleGame:
    """The per-sample game (2^M, n) of the output value that MM-SHAP attributes.

    Under 'permute' one donor per sample makes every per-sample value a single draw, so
    at the encoder level (fusion head only) the game is averaged over
    ``logit_permutations`` independent permutations; the metric game keeps the shared
    first permutation. Averaging games keeps efficiency exact.
    """
    players, strategy, level = plan.players, plan.strategy, plan.level
    kind = ctx.config.data.target.kind
    base = ctx.cache.sweep().logits
    ref_class = base.argmax(1) if kind == "multiclass" and base.shape[1] > 1 else None
    values = np.stack([output_value(lg, kind, ref_class) for lg in coal_logits])
    if strategy != "permute":
        return SampleGame(values=values, notes=[])
    draws = params.logit_permutations if level == "encoder" else 1
    removals = coalition_removals(players, masks, strategy)
    for draw in range(1, draws):
        extra = ctx.cache.ablated_many(removals, "encoder", draw=draw)  # type: ignore[arg-type]
        values = values + np.stack([output_value(r.logits, kind, ref_class) for r in extra])
    note = (
        f"per-sample (MM-SHAP) values average {draws} permutation(s) of the removed"
        " modalities" + ("" if draws > 1 else " (one donor per sample: single-draw values)")
    )
    return SampleGame(values=values / draws, notes=[note])


def logit_shapley(values: np.ndarray) -> LogitShapley:
    """Exact per-sample Shapley values, shares and interactions of the game ``values``."""
    phi = shapley_values(values)  # (M, n)
    inter = _round_interactions(interaction_index(values), values)  # (M, M, n)
    abs_phi = np.abs(phi)
    tot_abs = abs_phi.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(tot_abs > 0, abs_phi / np.where(tot_abs > 0, tot_abs, 1), np.nan)
    efficiency = float(np.max(np.abs(phi.sum(0) - (values[-1] - values[0]))))
    return LogitShapley(
        values=values,
        phi=phi,
        abs_phi=abs_phi,
        shares=shares,
        inter=inter,
        efficiency=efficiency,
    )


def per_sample_frame(ctx: AuditContext, game: LogitShapley, players: list[str]) -> pd.DataFrame:
    """One row per sample: id, target, the output of the full and the empty coalition, and
    every modality's Shapley value and share."""
    target = ctx.target
    frame: dict[str, Any] = {"id": ctx.dataset.ids}
    if target.ndim == 1:
        frame["target"] = target
    frame["output_full"] = game.values[-1]
    frame["output_empty"] = game.values[0]
    for j, mod in enumerate(players):
        frame[f"shapley.{mod}"] = game.phi[j]
    for j, mod in enumerate(players):
        frame[f"share.{mod}"] = game.shares[j]
    return pd.DataFrame(frame)


def _round_interactions(inter: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-sample interactions (M, M, n) with float rounding set to exactly 0: entries below
    ``LOGIT_INTERACTION_RTOL`` times the mean |game value| (the logit scale). An additive
    head gives ~1e-7 relative noise, whose bootstrap CI would otherwise "exclude 0"."""
    scale = float(np.mean(np.abs(values))) if values.size else 0.0
    tol = LOGIT_INTERACTION_RTOL * scale
    return np.where(np.abs(inter) < tol, 0.0, inter)
