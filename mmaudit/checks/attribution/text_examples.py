"""Stage: example reports, the ones scored most strongly toward each class of each target,
every word shaded by its attribution toward that class.

Shown three ways: a figure (words on coloured cells), a table of every word's
attribution (private: it holds report text), and, unless the run is redacted, a note per
report with its strong words marked in plain text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mmaudit.checks.plotting import literal_text, pyplot
from mmaudit.methods.text_attribution import is_word

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mmaudit.checks.attribution.check import AttributionCheck
    from mmaudit.checks.contract import AuditContext
    from mmaudit.methods.attribution_target import Target


@dataclass(frozen=True)
class Examples:
    """The notes (one per example unless redacted, then how to read them), the
    ``text_examples`` table and its figure."""

    notes: list[str]
    table: pd.DataFrame
    figure: Figure


def example_reports(
    ctx: AuditContext,
    p: AttributionCheck.Params,
    targets: list[Target],
    rows: np.ndarray,
    spans: list[list[tuple[str, list[int]]]],
    attr: np.ndarray,
    fx: np.ndarray,
) -> Examples | None:
    """The reports scored most strongly toward each class of each target (``attr`` and
    ``fx`` hold one slice per target), each shown toward its class."""
    if p.n_examples == 0 or len(rows) == 0:
        return None
    views = [(t, c) for t, target in enumerate(targets) for c in target.classes]
    per_class = max(1, math.ceil(p.n_examples / len(views)))
    chosen: list[tuple[int, int, str, float]] = []
    for t, (name, sign, mask) in views:
        docs = np.arange(len(rows)) if mask is None else np.flatnonzero(mask[rows])
        order = docs[np.argsort(-sign * fx[t, docs], kind="stable")]
        for d in order[:per_class]:
            if int(d) not in [c for _, c, _, _ in chosen] and len(chosen) < p.n_examples:
                chosen.append((t, int(d), name, sign))
    examples = []
    table = []
    notes: list[str] = []
    names = ctx.dataset.class_names
    for t, d, cls_name, sign in chosen:
        sid = ctx.dataset.ids[rows[d]]
        raw = [(w, float(attr[t, d, pos].sum())) for w, pos in spans[d]]
        # shown toward the example's class: for the negative class of a binary model
        # (or "not <label>" of a multilabel one) the attributed logit, negated (red =
        # pushes toward the title)
        pieces = [(w, sign * a) for w, a in raw]
        y = np.asarray(ctx.target)[rows[d]]
        if np.ndim(y) == 0:
            title = f"{sid}: label {names[int(y)]}"
        else:
            title = f"{sid}: labels " + ", ".join(
                f"{n}={int(v)}" for n, v in zip(names, y, strict=True)
            )
        score = targets[t].score_label(cls_name, sign)
        view = (
            f"toward class {cls_name}: {score} = {sign * fx[t, d]:+.2f}, its words'"
            f" attributions sum to {sum(a for _, a in pieces):+.2f}"
        )
        examples.append((f"{title}; {view}", pieces))
        table.extend(
            {
                "id": sid,
                "position": k,
                "word": w,
                "attribution": a,
                "toward_class": cls_name,
                "score": score,
                "attribution_toward_class": sign * a,
            }
            for k, (w, a) in enumerate(raw)
        )
        if not ctx.redact:
            notes.append(f"example {title} ({view}): {_marked_text(pieces)}")
    notes.append(
        "examples: a title 'toward class c: S = +v, its words' attributions sum to +w'"
        " shows the score S attributed toward c (the attributed logit, negated toward the"
        " negative class of a binary model or toward 'not <label>' of a multilabel one),"
        " +v its value for the report as written, and"
        " +w = S minus S of the same report with every word [PAD] (IG completeness); a"
        " word at +x pushes toward class c by x"
    )
    return Examples(notes, pd.DataFrame(table), _highlight_figure(examples))


def _marked_text(pieces: list[tuple[str, float]], share: float = 0.25) -> str:
    """The report as plain text with its strong words marked: ``«word +0.42»`` for every word
    whose |attribution| is at least ``share`` of the report's largest (the HTML renderer
    escapes it; nothing here is markup)."""
    scale = max((abs(a) for _, a in pieces), default=0.0)
    parts: list[str] = []
    for word, a in pieces:
        strong = scale > 0 and abs(a) >= share * scale
        text = f"«{word} {a:+.2f}»" if strong else word
        if parts and not is_word(word) and not strong:
            parts[-1] += text
        else:
            parts.append(text)
    return " ".join(parts)


def _highlight_figure(examples: list[tuple[str, list[tuple[str, float]]]]) -> Figure:
    """Each example report with every word shaded by its attribution toward the class named
    in its title (red: toward, blue: against), scaled per report; white text on the dark
    shades so that the strongest words stay readable."""
    plt = pyplot()
    from matplotlib import colormaps

    cmap = colormaps["RdBu_r"]
    width_in = 10.0
    lines_est = [max(1, sum(len(w) + 1 for w, _ in ex) // 95 + 1) for _, ex in examples]
    height = 0.5 + sum(0.45 + 0.32 * n for n in lines_est)
    fig = plt.figure(figsize=(width_in, height))
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    fig_w = fig.get_figwidth() * fig.dpi
    y = 1.0 - 0.25 / height
    line_h = 0.32 / height
    for title, pieces in examples:
        fig.text(0.01, y, title, fontsize=9, weight="bold", va="top", parse_math=False)
        y -= 0.3 / height
        scale = max((abs(a) for _, a in pieces), default=0.0) or 1.0
        x = 0.01
        for word, a in pieces:
            glue = not is_word(word)
            t = fig.text(
                x,
                y,
                word,
                fontsize=9,
                va="top",
                parse_math=False,
                color="white" if abs(a) / scale > 0.6 else "black",
                bbox={
                    "facecolor": cmap(0.5 + 0.5 * a / scale),
                    "edgecolor": "none",
                    "pad": 1.0,
                },
            )
            w = t.get_window_extent(renderer).width / fig_w
            if x + w > 0.99 and x > 0.01:
                y -= line_h
                x = 0.01
                t.set_position((x, y))
            x += w + (0.004 if glue else 0.008)
        y -= line_h + 0.15 / height
    fig.text(
        0.99,
        0.005,
        "red: raises the titled score S, i.e. pushes toward the class in the title; blue:"
        " against (scaled per report); the words' sum is S minus S of the all-[PAD] report",
        fontsize=7,
        ha="right",
        va="bottom",
        color="#555",
    )
    return literal_text(fig)
