"""One joint bootstrap of every variant (coalitions, EMAP, neutral removals), the realistic
robustness mixes and the per-sample shares / interactions: all statistics are computed on
the same resamples (patients when given), so every drop is a paired comparison and Shapley
values, interactions and drops stay mutually consistent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mmaudit.checks.ablation.logit_game import LogitShapley
from mmaudit.checks.ablation.scoring import Scorer, nanmean
from mmaudit.checks.contract import AuditContext
from mmaudit.methods.shapley import pair_names
from mmaudit.methods.stats import bootstrap_groups

if TYPE_CHECKING:
    from mmaudit.checks.ablation.check import AblationCheck


@dataclass(frozen=True)
class Replicates:
    """Bootstrap replicates, B first: ``table`` (B, variants, metrics); ``realistic`` (B, M)
    the metric at the realistic missing rate; ``share`` (B, M) mean per-sample shares;
    ``logit_interaction`` (B, pairs) mean |interaction| over mean sum |phi|."""

    table: np.ndarray
    realistic: np.ndarray
    share: np.ndarray
    logit_interaction: np.ndarray


def joint_bootstrap(
    ctx: AuditContext,
    scorer: Scorer,
    variants: np.ndarray,
    realistic: dict[str, np.ndarray],
    game: LogitShapley,
    players: list[str],
    params: AblationCheck.Params,
) -> Replicates:
    """Every statistic on the same resamples (patients when given): (B, ...) arrays.

    The resamples are those ``stats.paired_bootstrap_diff`` draws for ``seed=ctx.seed``
    (both go through ``stats.bootstrap_groups``), so each drop here is that function's
    paired bootstrap, but all variants share one set of draws, which keeps Shapley
    values, interactions and drops mutually consistent.
    """
    p = params
    shares, abs_phi, inter = game.shares, game.abs_phi, game.inter
    n = len(ctx.target)
    draws = bootstrap_groups(n, ctx.groups, p.n_boot, np.random.default_rng(ctx.seed))
    pairs = pair_names(players)
    stacked = np.concatenate([realistic[m] for m in players])  # (M * draws, n[, K])
    tables, rob, share_means, logit_inter = [], [], [], []
    for rows in draws:
        tables.append(scorer.table(variants, rows))
        per_draw = scorer.table(stacked, rows, (p.metric,))[:, 0]
        rob.append(nanmean(per_draw.reshape(len(players), -1), axis=1))
        share_means.append(nanmean(shares[:, rows], axis=1))
        denom = abs_phi[:, rows].sum(0).mean()
        logit_inter.append(
            [np.abs(inter[j, k, rows]).mean() / denom if denom > 0 else np.nan for j, k, _ in pairs]
        )
    return Replicates(
        table=np.stack(tables),  # (B, variants, metrics)
        realistic=np.array(rob, dtype=float).reshape(p.n_boot, len(players)),
        share=np.stack(share_means),  # (B, M)
        logit_interaction=np.array(logit_inter, dtype=float).reshape(p.n_boot, len(pairs)),
    )
