"""Exemplars: named cases, the most confident errors and a few random cases, each shown
with its nearest cases from other patients (thumbnail, label, prediction, nuisance
attributes, report snippet) so that a person can see what the neighbourhood is made of."""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmaudit.checks.embedding.canvas import new_figure
from mmaudit.checks.embedding.output import OutputPart
from mmaudit.methods import neighbours as nb

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mmaudit.checks.embedding.check import EmbeddingCheck
    from mmaudit.checks.embedding.factors import Factor
    from mmaudit.checks.embedding.inputs import EmbeddingInputs
    from mmaudit.checks.embedding.layer import LayerResult
    from mmaudit.checks.embedding.predictions import Predictions


def exemplars(
    layers: dict[str, LayerResult],
    factors: list[Factor],
    nuisance: list[Factor],
    pred: Predictions | None,
    groups: np.ndarray,
    inp: EmbeddingInputs,
    p: EmbeddingCheck.Params,
) -> OutputPart:
    """Nearest reference cases for named cases, the most confident errors and a few random
    cases."""
    out = OutputPart()
    if not p.exemplar_ids and p.exemplar_errors + p.exemplar_random == 0:
        return out
    name = p.exemplar_layer if p.exemplar_layer in layers else next(iter(layers))
    if name != p.exemplar_layer:
        out.notes.append(f"exemplars: layer '{p.exemplar_layer}' not analysed; using '{name}'")
    res = layers[name]
    rng = inp.rng(f"exemplars:{name}")
    queries: list[tuple[int, str]] = []
    if p.exemplar_ids:
        local = {str(inp.ids[r]): j for j, r in enumerate(res.rows)}
        queries += [(local[i], "named") for i in dict.fromkeys(p.exemplar_ids) if i in local]
        unknown = [i for i in p.exemplar_ids if i not in local]
        if unknown:
            out.notes.append(
                f"exemplars: ids {unknown[:10]} are not among the analysed rows of layer"
                f" '{name}' (unknown, or left out there); not shown"
            )
    taken = {i for i, _ in queries}
    if pred is not None and p.exemplar_errors:
        wrong = np.array(
            [i for i in np.flatnonzero(~pred.correct[res.rows]) if i not in taken], dtype=np.int64
        )
        order = wrong[np.argsort(-pred.error_confidence[res.rows][wrong], kind="stable")]
        queries += [(int(i), "confident error") for i in order[: p.exemplar_errors]]
    taken = {i for i, _ in queries}
    pool_rows = np.array([i for i in range(len(res.rows)) if i not in taken], dtype=np.int64)
    if p.exemplar_random and pool_rows.size:
        pick = rng.choice(pool_rows, size=min(p.exemplar_random, pool_rows.size), replace=False)
        queries += [(int(i), "random") for i in np.sort(pick)]
    if not queries:
        return out
    k = p.exemplar_k
    neigh = res.neighbours
    if k > res.k:
        largest = int(np.bincount(np.unique(groups[res.rows], return_inverse=True)[1]).max())
        k = max(1, min(k, len(res.rows) - largest))
        neigh = nb.knn(
            res.x,
            k,
            groups=groups[res.rows],
            metric=p.metric,
            device=inp.device,
            memory_budget_mb=p.memory_budget_mb,
        )
    attrs = [f for f in factors if f.role == "attribute"]
    label = next((f for f in factors if f.role == "label"), None)
    table = []
    for q_num, (q, kind) in enumerate(queries):
        cases = [(q, 0, 0.0)] + [
            (int(j), r + 1, float(d))
            for r, (j, d) in enumerate(
                zip(neigh.indices[q, :k], neigh.distances[q, :k], strict=True)
            )
            if j >= 0
        ]
        rows_here = []
        for local, rank, dist in cases:
            i = int(res.rows[local])
            row: dict[str, Any] = {
                "query": str(inp.ids[res.rows[q]]),
                "query_kind": kind,
                "rank": rank,
                "id": str(inp.ids[i]),
                "distance": dist,
                "label": label.levels[label.codes[i]]
                if label is not None and label.codes[i] >= 0
                else "",
                "prediction": pred.names[i] if pred is not None else "",
                "score": float(pred.score[i]) if pred is not None else math.nan,
            }
            for f in attrs:
                if f.values is not None:
                    row[f.name] = f.values[i]
                else:
                    row[f.name] = f.levels[f.codes[i]] if f.codes[i] >= 0 else ""
            row["snippet"] = _snippet(inp, i, p.snippet_chars)
            rows_here.append((i, row))
            table.append(row)
        key = f"exemplars_{q_num + 1:02d}"
        out.figures[key] = _exemplar_figure(name, kind, rows_here, nuisance, inp)
        out.private.add(key)
    out.tables["exemplars"] = pd.DataFrame(table)
    out.private.add("exemplars")
    return out


def _snippet(inp: EmbeddingInputs, i: int, chars: int) -> str:
    if not inp.texts or chars == 0:
        return ""
    text = " ".join(str(inp.texts[i]).split())
    if len(text) <= chars:
        return text
    head = text[: max(1, chars - 1)]
    # end at a sentence past half the budget, else at a word, never mid-phrase
    sentence = head.rfind(". ")
    if sentence >= chars // 2:
        return head[: sentence + 1] + " …"
    word = head.rfind(" ")
    return (head[:word] if word > 0 else head).rstrip() + "…"


def _exemplar_figure(
    layer: str,
    kind: str,
    cases: list[tuple[int, dict[str, Any]]],
    nuisance: list[Factor],
    inp: EmbeddingInputs,
) -> Figure:
    """The query and its neighbours side by side: thumbnail, label, prediction, the
    nuisance attributes (site) and a report snippet under each."""
    cols = len(cases)
    wrapped = [textwrap.wrap(row["snippet"], 26) if row["snippet"] else [] for _, row in cases]
    fig = new_figure(2.1 * cols, 3.4 + 0.11 * max(len(w) for w in wrapped))
    first = cases[0][1]
    fig.suptitle(
        f"{kind} {first['id']} and its nearest cases in '{layer}' (other patients only)",
        fontsize=9,
    )
    for c, ((i, row), snippet) in enumerate(zip(cases, wrapped, strict=True)):
        ax = fig.add_subplot(1, cols, c + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        if inp.load_image is not None:
            img = np.asarray(inp.load_image(i), dtype=float)
            lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
            img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        else:
            ax.set_facecolor("whitesmoke")
        head = "query" if row["rank"] == 0 else f"#{row['rank']}  d={row['distance']:.3g}"
        ax.set_title(head, fontsize=8, color="darkred" if row["rank"] == 0 else "black")
        lines = [f"label {row['label']}  pred {row['prediction']}"]
        lines += [f"{f.name} {row[f.name]}" for f in nuisance]
        lines += snippet
        ax.set_xlabel("\n".join(lines), fontsize=6.5, loc="left")
    return fig
