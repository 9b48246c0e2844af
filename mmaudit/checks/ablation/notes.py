"""The closing notes of the ablation check: how CIs resample and which removal the
robustness curves use, and what the reader needs to tell this check's numbers apart from
look-alikes (a share of performance vs a share of the logit; leave-one-out vs the robustness
curve at 100 % missing)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmaudit.checks.ablation.plan import REMOVAL_WORDS
from mmaudit.checks.ablation.scoring import Scorer
from mmaudit.checks.contract import AuditContext
from mmaudit.methods.stats import Estimate

if TYPE_CHECKING:
    from mmaudit.checks.ablation.check import AblationCheck


def run_notes(ctx: AuditContext, p: AblationCheck.Params, how: str) -> list[str]:
    """How the CIs resample (patients, adjusted p-values) and how the robustness curves
    remove a modality (``how``)."""
    notes = []
    if ctx.groups is not None:
        notes.append(
            f"CIs resample {len(np.unique(ctx.groups))} patients, not {len(ctx.target)} rows;"
            f" p-values adjusted per family ({p.p_adjust})"
        )
    notes.append(
        f"robustness curves remove the modality as '{how}'"
        + (" (the model's own missing-modality path)" if how == "missing" else "")
        + f"; realistic missing rate {p.realistic_missing_rate:.0%}"
    )
    return notes


def reading_notes(
    metrics: dict[str, Any],
    curves: pd.DataFrame,
    players: list[str],
    p: AblationCheck.Params,
    strategy: str,
    how: str,
) -> list[str]:
    """What the reader needs to tell this check's numbers apart from look-alikes: the
    Shapley share of performance vs attribution's share of the logit, and leave-one-out
    under ``strategy`` vs the robustness curve at 100 % missing under ``how``."""
    removed = REMOVAL_WORDS.get(strategy, strategy)
    notes = [
        f"share.<m> is each modality's Shapley share of {p.metric} across patients, the"
        f" removed modalities {removed}: a share of performance. It is not the attribution"
        " check's shares.<m> (each sample's share of |Integrated Gradients| on its logit: a"
        " share of the output) nor logit_share.<m> here (per-sample |logit Shapley| share);"
        f" koi.* keeps one modality with the others {removed}, not absent"
    ]
    full = metrics.get(f"full.{p.metric}")
    if how == strategy or not isinstance(full, Estimate):
        return notes
    parts = []
    for mod in players:
        end = curves[(curves["modality"] == mod) & (curves["drop_rate"] == 1.0)]
        loo = metrics.get(f"drop.loo.{mod}")
        if end.empty or not isinstance(loo, Estimate):
            continue
        gone = float(end[p.metric].iloc[0])
        drop = Scorer.oriented(full.value, p.metric) - Scorer.oriented(gone, p.metric)
        # round before printing, so that a drop of -1e-17 does not read "-0.000"
        loo_drop, how_drop = round(loo.value, 3) + 0.0, round(drop, 3) + 0.0
        parts.append(f"{mod} {loo_drop:.3f} ({strategy}) vs {how_drop:.3f} ({how})")
    if parts:
        notes.append(
            f"removing a modality costs {p.metric} differently by how it is removed:"
            f" {'; '.join(parts)}. The first is drop.loo.<m> (the modality {removed}), the"
            f" second the robustness curve at 100% (the modality {REMOVAL_WORDS.get(how, how)}"
            " for every sample). A shuffled modality is another patient's real data, a wrong"
            " signal the model follows; a missing one is a neutral input that leaves the"
            " decision to the other modalities. drop.loo measures how much the model relies on"
            " the modality; the robustness curve how it copes when the modality is absent"
        )
    return notes
