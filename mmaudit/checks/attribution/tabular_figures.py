"""Figures of the lab SHAP stage: the beeswarm summary, dependence plots of the top
features and mean |SHAP| per subgroup."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mmaudit.checks.plotting import literal_text, pyplot

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def beeswarm_figure(
    values: np.ndarray, raw: np.ndarray, names: list[str], order: list[int]
) -> Figure:
    """SHAP summary: one row per feature (most important on top), a dot per sample at its
    SHAP value, coloured by the feature's value (rank within the feature). Missing values
    are hollow black rings with their own legend entry: a grey dot would read as the
    colour scale's midpoint (a median value)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(order) + 1.4))
    rng = np.random.default_rng(0)
    n_missing = int(np.sum(~np.isfinite(raw[:, order]))) if len(order) else 0
    labelled = False
    for pos, j in enumerate(reversed(order)):
        v = values[:, j]
        r = raw[:, j]
        color = np.full(len(v), 0.5)
        ok = np.isfinite(r)
        if ok.sum() > 1:
            ranks = pd.Series(r[ok]).rank(pct=True).to_numpy()
            color[ok] = ranks
        jitter = _swarm_offsets(v, rng) * 0.35
        ax.scatter(
            v[~ok],
            pos + jitter[~ok],
            s=14,
            facecolors="none",
            edgecolors="black",
            linewidths=0.7,
            label=None if labelled or ok.all() else f"missing value (n={n_missing})",
        )
        labelled = labelled or not ok.all()
        sc = ax.scatter(v[ok], pos + jitter[ok], s=8, c=color[ok], cmap="coolwarm", vmin=0, vmax=1)
    ax.set_yticks(range(len(order)), [names[j] for j in reversed(order)])
    ax.axvline(0, color="#333", lw=0.6)
    ax.set_xlabel("SHAP value (contribution to the score)")
    if n_missing:
        ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    if len(order):
        cb = fig.colorbar(sc, ax=ax, pad=0.01)
        cb.set_label("feature value, rank within the feature (low -> high)")
    fig.tight_layout()
    return literal_text(fig)


def _swarm_offsets(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Vertical offsets in [-1, 1] that grow with the local density of ``v`` (a cheap swarm)."""
    if len(v) < 2 or np.ptp(v) == 0:
        return rng.uniform(-1, 1, len(v)) * 0.3
    bins = np.clip(((v - v.min()) / np.ptp(v) * 40).astype(int), 0, 40)
    counts = np.bincount(bins, minlength=41)
    density = counts[bins] / counts.max()
    return rng.uniform(-1, 1, len(v)) * density


def dependence_figure(
    raw: np.ndarray, shap_values: np.ndarray, label: np.ndarray, name: str, label_name: str
) -> Figure:
    """SHAP value of one lab against its value, coloured by ``label_name`` (the label)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ok = np.isfinite(raw)
    lab = label if np.ndim(label) == 1 else np.zeros(len(raw))
    for c in np.unique(lab):
        sel = ok & (lab == c)
        ax.scatter(raw[sel], shap_values[sel], s=10, alpha=0.7, label=f"{label_name} {c:g}")
    ax.axhline(0, color="#333", lw=0.6)
    ax.set_xlabel(f"{name} (missing: {int((~ok).sum())} not shown)")
    ax.set_ylabel(f"SHAP value of {name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return literal_text(fig)


def subgroup_figure(table: pd.DataFrame) -> Figure:
    """One heat map per attribute: mean |SHAP| of each feature (columns) per group (rows)."""
    plt = pyplot()
    attrs = list(dict.fromkeys(table["attribute"]))
    fig, axes = plt.subplots(1, len(attrs), figsize=(4.2 * len(attrs), 3.2), squeeze=False)
    for ax, attr in zip(axes[0], attrs, strict=True):
        pivot = table[table["attribute"] == attr].pivot(
            index="group", columns="feature", values="mean_abs_shap"
        )
        im = ax.imshow(pivot.to_numpy(), aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(pivot.index)), [str(g) for g in pivot.index])
        ax.set_xticks(range(len(pivot.columns)), list(pivot.columns), rotation=45, ha="right")
        ax.set_title(f"mean |SHAP| by {attr}", fontsize=10)
        fig.colorbar(im, ax=ax, pad=0.01)
    fig.tight_layout()
    return literal_text(fig)
