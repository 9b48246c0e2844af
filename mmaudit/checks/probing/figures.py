"""The probing check's figures: the layer x attribute probe heatmap, each attribute's
probes against their null and baselines, and the erasure effects against random erasure."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mmaudit.checks.plotting import pyplot, text_colour_on
from mmaudit.checks.probing.records import ErasureRow, ProbeRow

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def heatmap_label(r: ProbeRow, alpha: float) -> str:
    """A heatmap cell's text: the reported score, and the score the permutation test is
    about beside its null band and Holm mark. For a categorical attribute the reported
    score is the logistic AUROC and the tested one the ridge AUROC on the same folds (see
    ``mmaudit.methods.probes``); for a continuous one they are the same ridge R². A probe beyond
    the target adds the plain (marginal) score on a third line."""
    lo, hi = r.result.null_band(alpha)
    star = "*" if r.p_holm < alpha else ""
    null = f"null [{lo:.2f}, {hi:.2f}]"
    if r.result.metric == "auroc":
        text = f"AUROC {r.result.score:.2f}\nridge {r.result.test_score:.2f}{star} vs {null}"
    else:
        text = f"R² {r.result.score:.2f}{star}\nvs {null}"
    if r.marginal is not None:
        text += f"\nmarginal {r.marginal.value:.2f}"
    return text


def heatmap(rows: list[ProbeRow], layers: list[str], alpha: float) -> Figure:
    """Layer x attribute probe scores; each cell annotated with the tested score and its null
    band (``heatmap_label``)."""
    plt = pyplot()
    attrs = list(dict.fromkeys(r.attribute for r in rows))
    lays = [ly for ly in layers if any(r.layer == ly for r in rows)]
    grid = np.full((len(lays), len(attrs)), np.nan)
    fig, ax = plt.subplots(figsize=(1.9 * len(attrs) + 2.2, 1.1 * len(lays) + 1.6))
    for r in rows:
        i, j = lays.index(r.layer), attrs.index(r.attribute)
        score = r.result.score
        # decodability on one scale: 2 AUROC - 1 (0 = chance) or R^2
        grid[i, j] = 2 * score - 1 if r.result.metric == "auroc" else score
        colour = text_colour_on("Oranges", float(np.clip(grid[i, j], 0, 1)))
        ax.text(j, i, heatmap_label(r, alpha), ha="center", va="center", fontsize=7, color=colour)
    image = ax.imshow(np.clip(grid, 0, 1), cmap="Oranges", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(attrs)), attrs)
    ax.set_yticks(range(len(lays)), lays)
    within = any(r.result.conditional for r in rows)
    ax.set_title(
        "probe score per layer and attribute"
        + (" -- within target classes (beyond the target)" if within else "")
        + f"\nnull band and * (Holm p < {alpha:g}): the ridge read-out the permutation test"
        " scores",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, label="decodability (2 AUROC - 1, or R²)")
    fig.tight_layout()
    return fig


def null_figure(rows: list[ProbeRow], layers: list[str], alpha: float) -> Figure:
    """Per attribute: probe score with CI per layer against the null band, control and the
    random-weights baseline."""
    plt = pyplot()
    attrs = list(dict.fromkeys(r.attribute for r in rows))
    fig, axes = plt.subplots(1, len(attrs), figsize=(3.6 * len(attrs), 3.4), squeeze=False)
    for ax, attr in zip(axes[0], attrs, strict=True):
        mine = [r for r in rows if r.attribute == attr]
        mine.sort(key=lambda r: layers.index(r.layer) if r.layer in layers else 99)
        for i, r in enumerate(mine):
            lo, hi = r.result.null_band(alpha)
            ax.fill_between([i - 0.3, i + 0.3], lo, hi, color="0.85", lw=0)
            e = r.estimate
            err = (
                [[e.value - e.ci_low], [e.ci_high - e.value]]
                if e.ci_low is not None and e.ci_high is not None
                else None
            )
            ax.errorbar(i, e.value, yerr=err, fmt="o", color="C0", capsize=3)
            if r.result.metric == "auroc":  # the statistic the null band is for
                ax.plot(i + 0.15, r.result.test_score, "D", ms=4, color="C1")
            ax.plot(i, r.result.control, "x", color="C3")
            if r.random is not None:
                ax.plot(i, r.random.value, "s", mfc="none", color="C2")
            if r.marginal is not None:
                ax.plot(i - 0.15, r.marginal.value, "+", ms=7, color="0.3")
        ax.set_xticks(range(len(mine)), [r.layer for r in mine], rotation=30)
        ax.set_title(f"{attr} ({mine[0].result.metric})")
        ax.axhline(mine[0].result.chance, color="0.5", lw=0.8, ls=":")
    within = any(r.result.conditional for r in rows)
    axes[0][0].set_ylabel("probe score" + (" within target classes" if within else ""))
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Line2D([], [], marker="o", ls="", color="C0", label="probe (95% CI)"),
        Line2D([], [], marker="D", ms=4, ls="", color="C1", label="ridge read-out (tested)"),
        Patch(color="0.85", label="permutation null of the tested score, 95%"),
        Line2D([], [], marker="x", ls="", color="C3", label="control task"),
        Line2D([], [], marker="s", ls="", mfc="none", color="C2", label="random weights"),
    ]
    if any(r.marginal is not None for r in rows):
        handles.append(
            Line2D([], [], marker="+", ms=7, ls="", color="0.3", label="marginal (not judged)")
        )
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    return fig


def erasure_figure(rows: list[ErasureRow]) -> Figure:
    """Mean |dp|, flip rate and change in AUROC after erasing each attribute vs a random
    subspace of the same rank; the |dp| panel also marks each random draw."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(5 + 2.1 * len(rows), 3.4))
    names = [r.attribute for r in rows]
    x = np.arange(len(rows))
    for ax, (own, rand, label) in zip(
        axes,
        [
            ("dp", "dp_random", "mean |Δp|"),
            ("flip", "flip_random", "flip rate"),
            ("dauroc", "dauroc_random", "Δ AUROC"),
        ],
        strict=True,
    ):
        for offset, key, colour, text in (
            (-0.18, own, "C3", "attribute erased (LEACE)"),
            (0.18, rand, "0.6", "random subspace, same rank"),
        ):
            est = [getattr(r, key) for r in rows]
            values = np.array([e.value for e in est], dtype=float)
            lo = np.array([e.ci_low if e.ci_low is not None else e.value for e in est], float)
            hi = np.array([e.ci_high if e.ci_high is not None else e.value for e in est], float)
            ax.bar(x + offset, values, width=0.36, color=colour, label=text)
            ax.errorbar(
                x + offset,
                values,
                yerr=[values - lo, hi - values],
                fmt="none",
                ecolor="k",
                capsize=3,
            )
        ax.set_xticks(x, names)
        ax.set_ylabel(label)
        ax.axhline(0, color="0.4", lw=0.8)
    for i, r in enumerate(rows):  # the spread the random reference comes from
        axes[0].plot(
            np.full(r.dp_draws.size, i + 0.18),
            r.dp_draws,
            "_",
            color="k",
            ms=8,
            label="each random draw" if i == 0 else None,
        )
    axes[0].legend(fontsize=8)
    fig.suptitle("used or only encoded: the head's predictions after erasure (95% CI)")
    fig.tight_layout()
    return fig
