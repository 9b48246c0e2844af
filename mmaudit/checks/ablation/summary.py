"""From the point and bootstrap tables of every variant to the check's estimates and tables:
full / leave-one-out / keep-one-in metrics and drops, the exact Shapley game of the chosen
metric and its shares, per-sample (logit) shares, interactions and redundancy, the EMAP gap,
the robustness drops at the realistic rate, and the coalition table. p-values are adjusted
per family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmaudit.checks.ablation.bootstrap import Replicates
from mmaudit.checks.ablation.estimates import adjust_family, estimate_from_boot, format_bound
from mmaudit.checks.ablation.logit_game import LogitShapley
from mmaudit.checks.ablation.redundancy import redundancy_ratio
from mmaudit.checks.ablation.scoring import METRICS, Scorer, nanmean
from mmaudit.methods.shapley import coalition_members, interaction_index, pair_names, shapley_values
from mmaudit.methods.stats import Estimate

if TYPE_CHECKING:
    from mmaudit.checks.ablation.check import AblationCheck


@dataclass(frozen=True)
class Summary:
    """The estimates (metric name -> Estimate or number, in report order), the tables
    ``coalitions``, ``contributions``, ``interactions`` and ``metrics``, and the notes the
    reader must know."""

    metrics: dict[str, Any]
    tables: dict[str, pd.DataFrame]
    notes: list[str]


@dataclass(frozen=True)
class _EstimateOf:
    """An estimate from a point value and its bootstrap replicates, for ``n`` rows."""

    n: int
    alpha: float

    def __call__(self, v0: float, vb: np.ndarray, with_p: bool = False) -> Estimate:
        return estimate_from_boot(v0, vb, self.n, self.alpha, with_p)


@dataclass(frozen=True)
class _Tables:
    """The point table (V, metrics) and its bootstrap replicates, as reported and oriented
    (lower-is-better metrics sign-flipped), with the rows of the full model and of EMAP."""

    table0: np.ndarray
    tableb: np.ndarray
    ori0: np.ndarray
    orib: np.ndarray
    full_idx: int
    emap_idx: int | None


def summarise(
    table0: np.ndarray,
    boot: Replicates,
    realistic_metric: dict[str, float],
    game: LogitShapley,
    players: list[str],
    masks: np.ndarray,
    n: int,
    params: AblationCheck.Params,
    with_emap: bool,
    neutral_rows: dict[int, int],
) -> Summary:
    """Estimates, adjusted p-values and tables from the point and bootstrap tables.

    ``neutral_rows`` maps the coalitions the redundancy ratio needs to their rows of the
    table under the neutral removal."""
    p = params
    k_primary = METRICS.index(p.metric)
    t = _Tables(
        table0=table0,
        tableb=boot.table,
        ori0=Scorer.oriented(table0, METRICS),  # (V, 7)
        orib=Scorer.oriented(boot.table, METRICS),  # (B, V, 7)
        full_idx=len(masks) - 1,
        emap_idx=len(masks) if with_emap else None,
    )
    est_of = _EstimateOf(n, p.alpha)
    est, long_rows = _performance(t, players, est_of, p)

    # the Shapley game of the chosen metric (higher = better)
    game0 = t.ori0[: len(masks), k_primary]
    gameb = t.orib[:, : len(masks), k_primary].T  # (2^M, B)
    shapley, contrib_rows, notes = _shapley(t, game0, gameb, game, boot, players, est, est_of, p)
    est.update(shapley)
    interactions, inter_rows = _interactions(
        t, game0, gameb, game, boot, players, masks, neutral_rows, est_of, p
    )
    est.update(interactions)

    # EMAP gap: what cross-modal interaction adds over the best additive projection
    if t.emap_idx is not None:
        e_idx = t.emap_idx
        est["emap.gap"] = est_of(
            t.ori0[t.full_idx, k_primary] - t.ori0[e_idx, k_primary],
            t.orib[:, t.full_idx, k_primary] - t.orib[:, e_idx, k_primary],
            with_p=True,
        )
    est.update(_robustness_drops(t, boot, realistic_metric, players, est_of, p))
    tables = {
        "coalitions": _coalition_table(t, players, masks, p),
        "contributions": pd.DataFrame(contrib_rows),
        "interactions": pd.DataFrame(inter_rows),
        "metrics": pd.DataFrame(long_rows),
    }
    return Summary(metrics=est, tables=tables, notes=notes)


def _performance(
    t: _Tables, players: list[str], est_of: _EstimateOf, p: AblationCheck.Params
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Full / LOO / KOI values and drops (all metrics), EMAP's values, and the rows of the
    long ``metrics`` table; then ``drop.loo.<m>`` / ``drop.koi.<m>`` of the chosen metric."""
    table0, tableb, ori0, orib, full_idx = t.table0, t.tableb, t.ori0, t.orib, t.full_idx
    est: dict[str, Any] = {}
    long_rows = []
    for k, metric in enumerate(METRICS):
        est[f"full.{metric}"] = est_of(table0[full_idx, k], tableb[:, full_idx, k])
        long_rows.append(_long_row("full", "", metric, est[f"full.{metric}"], None))
        for setting in ("loo", "koi"):
            drops: dict[str, Estimate] = {}
            for j, mod in enumerate(players):
                idx = (full_idx & ~(1 << j)) if setting == "loo" else (1 << j)
                est[f"{setting}.{mod}.{metric}"] = est_of(table0[idx, k], tableb[:, idx, k])
                drops[f"{setting}.{mod}.{metric}_drop"] = est_of(
                    ori0[full_idx, k] - ori0[idx, k],
                    orib[:, full_idx, k] - orib[:, idx, k],
                    with_p=True,
                )
            drops = adjust_family(drops, p.p_adjust)
            est.update(drops)
            for mod in players:
                long_rows.append(
                    _long_row(
                        setting,
                        mod,
                        metric,
                        est[f"{setting}.{mod}.{metric}"],
                        drops[f"{setting}.{mod}.{metric}_drop"],
                    )
                )
        if t.emap_idx is not None:
            e_idx = t.emap_idx
            est[f"emap.{metric}"] = est_of(table0[e_idx, k], tableb[:, e_idx, k])
            long_rows.append(_long_row("emap", "", metric, est[f"emap.{metric}"], None))
    for mod in players:
        est[f"drop.loo.{mod}"] = est[f"loo.{mod}.{p.metric}_drop"]
        est[f"drop.koi.{mod}"] = est[f"koi.{mod}.{p.metric}_drop"]
    return est, long_rows


def _shapley(
    t: _Tables,
    game0: np.ndarray,
    gameb: np.ndarray,
    game: LogitShapley,
    boot: Replicates,
    players: list[str],
    est: dict[str, Any],
    est_of: _EstimateOf,
    p: AblationCheck.Params,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """Shapley values of the metric game and their shares (undefined, with a note, when the
    total is indistinguishable from 0), per-sample logit shares, and the ``contributions``
    rows (which read the drops in ``est``)."""
    k_primary = METRICS.index(p.metric)
    out: dict[str, Any] = {}
    notes: list[str] = []
    phi0 = shapley_values(game0)
    phib = shapley_values(gameb)  # (M, B)
    total0 = game0[-1] - game0[0]
    totalb = gameb[-1] - gameb[0]
    out["shapley.total"] = est_of(total0, totalb)
    out["shapley.empty"] = est_of(t.table0[0, k_primary], t.tableb[:, 0, k_primary])
    with np.errstate(invalid="ignore", divide="ignore"):
        shareb = np.where(np.abs(totalb) > 1e-12, phib / totalb, np.nan)
    share0 = phi0 / total0 if abs(total0) > 1e-12 else np.full(len(players), np.nan)
    total = out["shapley.total"]
    if total.ci_low is None or total.ci_high is None or total.ci_low <= 0 <= total.ci_high:
        # a share of a total indistinguishable from 0 is noise over noise
        notes.append(
            f"shares undefined: the full model's {p.metric} is not distinguishable from the"
            f" empty coalition's (shapley.total = {total0:.3g}, CI"
            f" [{format_bound(total.ci_low)}, {format_bound(total.ci_high)}] contains 0); the"
            " Shapley values themselves are still reported"
        )
        share0 = np.full(len(players), np.nan)
    contrib_rows = []
    for j, mod in enumerate(players):
        out[f"shapley.{mod}"] = est_of(phi0[j], phib[j])
        out[f"share.{mod}"] = est_of(share0[j], shareb[j])
        out[f"logit_share.{mod}"] = est_of(float(nanmean(game.shares[j], 0)), boot.share[:, j])
        out[f"logit_shapley.{mod}"] = float(game.abs_phi[j].mean())
        contrib_rows.append(
            {
                "modality": mod,
                **_cols("shapley", out[f"shapley.{mod}"]),
                **_cols("share_pct", out[f"share.{mod}"], 100.0),
                **_cols("logit_share_pct", out[f"logit_share.{mod}"], 100.0),
                "logit_shapley_mean": float(game.phi[j].mean()),
                "logit_shapley_mean_abs": float(game.abs_phi[j].mean()),
                **_cols("loo_drop", est[f"drop.loo.{mod}"]),
                "loo_drop_p_adj": est[f"drop.loo.{mod}"].null_p,
                **_cols("koi", est[f"koi.{mod}.{p.metric}"]),
                **_cols("koi_drop", est[f"drop.koi.{mod}"]),
            }
        )
    return out, contrib_rows, notes


def _interactions(
    t: _Tables,
    game0: np.ndarray,
    gameb: np.ndarray,
    game: LogitShapley,
    boot: Replicates,
    players: list[str],
    masks: np.ndarray,
    neutral_rows: dict[int, int],
    est_of: _EstimateOf,
    p: AblationCheck.Params,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Pairwise interaction index of the metric game (adjusted p), per-sample logit
    interaction, and the redundancy ratio from the neutral-removal game; ``interactions``
    rows."""
    k_primary = METRICS.index(p.metric)
    full_idx = t.full_idx
    # the neutral-removal game: only the coalitions the redundancy ratio reads
    ngame0 = np.full(len(masks), np.nan)
    ngameb = np.full((len(masks), gameb.shape[1]), np.nan)
    for s, row in neutral_rows.items():
        ngame0[s] = t.ori0[row, k_primary]
        ngameb[s] = t.orib[:, row, k_primary]

    inter0 = interaction_index(game0)
    interb = interaction_index(gameb)
    pairs = pair_names(players)
    est = adjust_family(
        {
            f"interaction.{name}": est_of(inter0[j, k], interb[j, k], with_p=True)
            for j, k, name in pairs
        },
        p.p_adjust,
    )
    tot = game.abs_phi.sum(0).mean()
    inter_rows = []
    for a, (j, k, name) in enumerate(pairs):
        li0 = float(np.abs(game.inter[j, k]).mean() / tot) if tot > 0 else np.nan
        est[f"logit_interaction.{name}"] = est_of(li0, boot.logit_interaction[:, a])
        both = full_idx & ~(1 << j) & ~(1 << k)
        est[f"redundancy.{name}"] = est_of(
            float(redundancy_ratio(ngame0, full_idx, j, k, both)),
            redundancy_ratio(ngameb, full_idx, j, k, both),
        )
        inter_rows.append(
            {
                "pair": name,
                **_cols("interaction", est[f"interaction.{name}"]),
                "interaction_p_adj": est[f"interaction.{name}"].null_p,
                **_cols("logit_interaction", est[f"logit_interaction.{name}"]),
                **_cols("redundancy", est[f"redundancy.{name}"]),
            }
        )
    return est, inter_rows


def _robustness_drops(
    t: _Tables,
    boot: Replicates,
    realistic_metric: dict[str, float],
    players: list[str],
    est_of: _EstimateOf,
    p: AblationCheck.Params,
) -> dict[str, Any]:
    """The drop at the realistic missing rate per modality (adjusted p), and the rate."""
    k_primary = METRICS.index(p.metric)
    full_primary = Scorer.oriented(t.table0[t.full_idx, k_primary], p.metric)
    fullb = Scorer.oriented(t.tableb[:, t.full_idx, k_primary], p.metric)
    rob_est = {
        f"robustness.{mod}.realistic_drop": est_of(
            full_primary - Scorer.oriented(realistic_metric[mod], p.metric),
            fullb - Scorer.oriented(boot.realistic[:, j], p.metric),
            with_p=True,
        )
        for j, mod in enumerate(players)
    }
    est: dict[str, Any] = dict(adjust_family(rob_est, p.p_adjust))
    est["robustness.realistic_rate"] = float(p.realistic_missing_rate)
    return est


def _coalition_table(
    t: _Tables, players: list[str], masks: np.ndarray, p: AblationCheck.Params
) -> pd.DataFrame:
    """One row per coalition: the kept modalities, every metric, the chosen metric's CI."""
    k_primary = METRICS.index(p.metric)
    coal_rows = []
    for s in masks:
        kept = coalition_members(int(s), players)
        row: dict[str, Any] = {
            "coalition": "+".join(kept) or "(none)",
            "n_kept": len(kept),
        }
        row.update({metric: t.table0[s, k] for k, metric in enumerate(METRICS)})
        lo, hi = _quantiles(t.tableb[:, s, k_primary], p.alpha)
        row[f"{p.metric}_ci_low"], row[f"{p.metric}_ci_high"] = lo, hi
        coal_rows.append(row)
    return pd.DataFrame(coal_rows)


def _quantiles(x: np.ndarray, alpha: float) -> tuple[float | None, float | None]:
    """The percentile interval of the finite replicates; none when under half are finite."""
    ok = x[np.isfinite(x)]
    if ok.size < max(1, x.size / 2):
        return None, None
    lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _cols(prefix: str, est: Estimate, scale: float = 1.0) -> dict[str, float | None]:
    """An estimate as three table columns (value, CI low, CI high), scaled; None if absent."""

    def s(v: float | None) -> float | None:
        return None if v is None or not np.isfinite(v) else float(v) * scale

    return {
        prefix: s(est.value),
        f"{prefix}_ci_low": s(est.ci_low),
        f"{prefix}_ci_high": s(est.ci_high),
    }


def _long_row(
    setting: str, modality: str, metric: str, value: Estimate, drop: Estimate | None
) -> dict[str, Any]:
    """A row of the long ``metrics`` table: a value and, for LOO / KOI, its drop."""
    row: dict[str, Any] = {"setting": setting, "modality": modality, "metric": metric}
    row.update(_cols("value", value))
    if drop is not None:
        row.update(_cols("drop", drop))
        row["drop_p_adj"] = drop.null_p
    return row
