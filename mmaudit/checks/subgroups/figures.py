"""Stage 6 of ``subgroups``: its figures -- per-group metrics as bars with CIs (gaps and
their p in the titles) and, for a binary target, per-group ROC curves with the global
operating point."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mmaudit.checks.plotting import pyplot
from mmaudit.checks.subgroups.analysis import GroupResult
from mmaudit.checks.subgroups.group_metrics import GAP_METRICS
from mmaudit.checks.subgroups.operating_point import rates
from mmaudit.methods.stats import percentile_interval

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def p_text(p: float, n_permutations: int) -> str:
    """A gap's p as shown in a figure: ``< 1/(B+1)`` when it lies below what ``B``
    permutations resolve (``analysis._range_p`` extrapolated it from a normal tail, and Holm
    only raises p, so a smaller value is always such an extrapolation; report.json keeps the
    number), else two significant digits."""
    floor = 1 / (n_permutations + 1)
    return f"< {floor:.1g}" if p < floor else f"{p:.2g}"


def group_metrics_figure(
    results: list[GroupResult], n_boot: int, alpha: float, kind: str, n_permutations: int
) -> Figure:
    """One row per attribute, one panel per metric: groups as bars with 95% CIs."""
    plt = pyplot()
    metrics = list(GAP_METRICS) if kind == "binary" else ["auroc", "ece"]
    fig, axes = plt.subplots(
        len(results),
        len(metrics),
        figsize=(3.0 * len(metrics), 2.5 * len(results) + 0.6),
        squeeze=False,
    )
    for row, res in zip(axes, results, strict=True):
        x = np.arange(len(res.grouping.labels))
        for ax, m in zip(row, metrics, strict=True):
            values = res.values[m]
            cis = [
                (percentile_interval(res.boot[m][:, g], alpha, n_boot / 2) or (None, None))
                for g in x
            ]
            lo = np.array([c[0] if c[0] is not None else np.nan for c in cis])
            hi = np.array([c[1] if c[1] is not None else np.nan for c in cis])
            colours = ["C0" if j else "0.75" for j in res.judged]
            ax.bar(x, np.nan_to_num(values), color=colours)
            err = np.vstack([values - lo, hi - values])
            ax.errorbar(
                x,
                values,
                yerr=np.nan_to_num(np.clip(err, 0, None)),
                fmt="none",
                ecolor="k",
                capsize=3,
            )
            ax.set_xticks(
                x,
                [f"{lab}\n(n={n})" for lab, n in zip(res.grouping.labels, res.n, strict=True)],
                fontsize=7,
            )
            title = f"{res.grouping.attribute}: {m}"
            if m in res.gaps and res.gaps[m].null_p is not None:
                shown = p_text(res.gaps[m].null_p, n_permutations)
                title += f"\ngap {res.gaps[m].value:.3f} (p {shown})"
            ax.set_title(title, fontsize=8)
    fig.suptitle(
        "per-group metrics with 95% bootstrap CIs (grey: too small to judge);"
        f" gap p: Holm-corrected permutation p ({n_permutations} shuffles)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def roc_figure(
    results: list[GroupResult], y: np.ndarray, score: np.ndarray, threshold: float
) -> Figure:
    """Per-group ROC curves for each attribute, the global operating point marked."""
    from sklearn.metrics import roc_curve

    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(3.4 * len(results), 3.4), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        codes = res.grouping.codes[res.rows]
        yy, ss = y[res.rows], score[res.rows]
        for g, label in enumerate(res.grouping.labels):
            sel = codes == g
            if len(np.unique(yy[sel])) < 2:
                continue
            fpr, tpr, _ = roc_curve(yy[sel], ss[sel])
            line = ax.plot(fpr, tpr, lw=1.4, label=f"{label} (AUROC {res.values['auroc'][g]:.2f})")
            t, f = rates(yy[sel], ss[sel], threshold)
            ax.plot(f, t, "o", color=line[0].get_color())
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls=":")
        ax.set_title(res.grouping.attribute)
        ax.set_xlabel("FPR")
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("TPR")
    fig.suptitle(f"ROC per group (dots: the global threshold {threshold:.3f})", fontsize=10)
    fig.tight_layout()
    return fig
