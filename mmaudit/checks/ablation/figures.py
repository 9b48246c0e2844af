"""The figures of the ablation check: modality contributions (Shapley share, LOO drop, KOI
metric with CIs), metrics per coalition, missing-modality robustness curves, and the
per-sample MM-SHAP shares."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmaudit.checks.ablation.plan import REMOVAL_WORDS
from mmaudit.checks.ablation.scoring import LOWER_IS_BETTER, METRICS
from mmaudit.checks.plotting import text_colour_on

if TYPE_CHECKING:
    from mmaudit.checks.ablation.check import AblationCheck


def ablation_figures(
    tables: dict[str, pd.DataFrame],
    curves: pd.DataFrame,
    shares: np.ndarray,
    players: list[str],
    p: AblationCheck.Params,
    strategy: str,
    how: str,
) -> dict[str, Any]:
    """The four figures, by name: ``contributions``, ``coalitions``, ``robustness`` and
    ``sample_shares`` (``shares`` are the per-sample MM-SHAP shares, M x n)."""
    from mmaudit.checks.plotting import pyplot

    plt = pyplot()
    figs: dict[str, Any] = {}
    contrib = tables["contributions"]
    x = np.arange(len(players))
    removed = REMOVAL_WORDS.get(strategy, strategy)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.9))
    for ax, col, title in (
        (
            axes[0],
            "share_pct",
            f"share.*: Shapley share of {p.metric} (%)\n(performance"
            " share, not attribution's shares.*)",
        ),
        (axes[1], "loo_drop", f"{p.metric} drop, this modality\n{removed}"),
        (axes[2], "koi", f"{p.metric}, only this modality kept\n(the others {removed})"),
    ):
        val = contrib[col].to_numpy(dtype=float)
        lo = contrib[f"{col}_ci_low"].to_numpy(dtype=float)
        hi = contrib[f"{col}_ci_high"].to_numpy(dtype=float)
        err = np.vstack([np.nan_to_num(val - lo), np.nan_to_num(hi - val)])
        ax.bar(x, val, yerr=np.abs(err), capsize=4, color="#4C72B0")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(x, players)
        ax.set_title(title, fontsize=10)
    fig.suptitle(
        f"Modality contributions, removed modalities {removed} (95% bootstrap CIs)",
        fontsize=11,
    )
    fig.tight_layout()
    figs["contributions"] = fig

    coal = tables["coalitions"]
    values = coal[list(METRICS)].to_numpy(dtype=float)
    lo, hi = np.nanmin(values, 0), np.nanmax(values, 0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    scaled = (values - lo) / span
    scaled[:, [METRICS.index(m) for m in LOWER_IS_BETTER]] *= -1
    scaled[:, [METRICS.index(m) for m in LOWER_IS_BETTER]] += 1
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(coal) + 1.2))
    shown = np.nan_to_num(scaled, nan=0.5)
    ax.imshow(shown, cmap="RdYlGn", aspect="auto", vmin=0, vmax=1)
    for (r, c), v in np.ndenumerate(values):
        ax.text(
            c,
            r,
            "-" if not np.isfinite(v) else f"{v:.3f}",
            ha="center",
            va="center",
            fontsize=8,
            color=text_colour_on("RdYlGn", float(shown[r, c])),
        )
    ax.set_xticks(range(len(METRICS)), METRICS, rotation=30, ha="right")
    ax.set_yticks(range(len(coal)), coal["coalition"])
    ax.set_title(
        f"Metrics per coalition of kept modalities, the others {removed} (green = better)",
        fontsize=10,
    )
    fig.tight_layout()
    figs["coalitions"] = fig

    fig, ax = plt.subplots(figsize=(6, 4))
    for mod in players:
        c = curves[curves["modality"] == mod]
        ax.plot(c["drop_rate"] * 100, c[p.metric], marker="o", ms=3, label=mod)
        ax.fill_between(c["drop_rate"] * 100, c["band_low"], c["band_high"], alpha=0.2)
    ax.axvline(p.realistic_missing_rate * 100, color="grey", ls="--", lw=0.8)
    ax.set_xlabel(f"samples with the modality {REMOVAL_WORDS.get(how, how)}, %")
    ax.set_ylabel(p.metric)
    ax.set_title(
        f"Missing-modality robustness (removal '{how}'; 100% is not drop.loo,"
        f" removal '{strategy}')",
        fontsize=9,
    )
    ax.legend()
    fig.tight_layout()
    figs["robustness"] = fig

    fig, ax = plt.subplots(figsize=(6, 3.6))
    data = [s[np.isfinite(s)] * 100 for s in shares]
    ax.boxplot([d if d.size else np.array([np.nan]) for d in data], showfliers=False)
    ax.set_xticks(range(1, len(players) + 1), players)
    ax.set_ylabel("per-sample share of |logit Shapley|, %")
    ax.set_title("Per-sample modality shares (MM-SHAP)", fontsize=10)
    fig.tight_layout()
    figs["sample_shares"] = fig
    return figs
