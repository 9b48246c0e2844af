"""Stage: words ranked per class by their mean attribution per report toward the class.

Words seen in fewer than ``min_count`` reports are not ranked, so one rare word with one
huge score cannot top the ranking; each ranked word's mean has a CI by patient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmaudit.checks.plotting import literal_text, pyplot
from mmaudit.methods.stats import bootstrap_ci
from mmaudit.methods.text_attribution import metric_key

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mmaudit.checks.attribution.check import AttributionCheck
    from mmaudit.methods.attribution_target import Target


@dataclass(frozen=True)
class WordRanking:
    """One target's ranking (the ``word_ranking`` table's rows) and its metrics
    ``text.top_words.<class>`` (the first five words per class)."""

    table: pd.DataFrame
    top_words: dict[str, str]


def rank_words(
    p: AttributionCheck.Params,
    target: Target,
    rows: np.ndarray,
    words: pd.DataFrame,
    groups: np.ndarray | None,
    boot: dict[str, Any],
) -> WordRanking:
    """Words ranked per class by their mean attribution per report toward the class
    (``mean_attribution``, CI by patient). ``direction`` names the score that is, and
    ``logit_attribution`` is the attribution of the attributed score itself, the same
    for a word's rows of both classes of a binary model (there the negative class's
    ranking is the positive class's, negated and read from the other end)."""
    table = []
    top_words: dict[str, str] = {}
    for name, sign, mask in target.classes:
        sub = words if mask is None else words[mask[rows[words["doc"].to_numpy()]]]
        direction = f"toward {name}: {target.score_label(name, sign)}"
        if mask is not None:
            direction += f" (reports predicted {name})"
        if sub.empty:
            continue
        g = sub.groupby("word")
        stats = pd.DataFrame({"count": g["doc"].nunique(), "mean": sign * g["attribution"].mean()})
        stats = stats[stats["count"] >= p.min_count].sort_values(
            ["mean", "count"], ascending=[False, False], kind="stable"
        )
        top = stats.head(p.top_words)
        for rank, (word, row) in enumerate(top.iterrows(), start=1):
            mine = sub[sub["word"] == word]
            values = sign * mine["attribution"].to_numpy()
            g_w = None if groups is None else groups[mine["doc"].to_numpy()]
            est = bootstrap_ci(np.mean, values, groups=g_w, **boot)
            table.append(
                {
                    "class": name,
                    "rank": rank,
                    "word": word,
                    "count": int(row["count"]),
                    "mean_attribution": float(row["mean"]),
                    "ci_low": est.ci_low,
                    "ci_high": est.ci_high,
                    "direction": direction,
                    "logit_attribution": sign * float(row["mean"]),
                }
            )
        key = metric_key(name)
        top_words[f"text.top_words.{key}"] = ", ".join(top.index[:5].tolist())
    frame = pd.DataFrame(
        table,
        columns=[
            "class",
            "rank",
            "word",
            "count",
            "mean_attribution",
            "ci_low",
            "ci_high",
            "direction",
            "logit_attribution",
        ],
    )
    return WordRanking(frame, top_words)


def ranking_figure(ranking: pd.DataFrame, top: int, classes: list[str]) -> Figure:
    """One panel per class in ``classes`` (its top words, titled by the score shown)."""
    plt = pyplot()
    fig, axes = plt.subplots(
        1, len(classes), figsize=(4.5 * len(classes), 0.3 * min(top, 15) + 1.2), squeeze=False
    )
    for ax, name in zip(axes[0], classes, strict=True):
        sub = ranking[ranking["class"] == name].head(top).iloc[::-1]
        y = np.arange(len(sub))
        lo = (sub["mean_attribution"] - sub["ci_low"].astype(float)).clip(lower=0).fillna(0)
        hi = (sub["ci_high"].astype(float) - sub["mean_attribution"]).clip(lower=0).fillna(0)
        ax.barh(y, sub["mean_attribution"], xerr=[lo, hi], color="#c0504d", alpha=0.85)
        ax.set_yticks(y, [f"{w} (n={c})" for w, c in zip(sub["word"], sub["count"], strict=True)])
        ax.axvline(0, color="#333", lw=0.6)
        ax.set_title(str(sub["direction"].iloc[0]) if len(sub) else f"toward {name}", fontsize=10)
        ax.set_xlabel("mean attribution per report toward the class (95% CI)")
    fig.tight_layout()
    return literal_text(fig)
