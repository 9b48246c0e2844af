"""Cross-modal alignment in a shared space: matched-pair retrieval recall@1/5/10 between
equal-width modality embeddings (image <-> text and any other pair), and the modality gap
(distance between the modalities' mean unit vectors)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mmaudit.checks.embedding.inputs import MODALITY_LAYERS
from mmaudit.checks.embedding.layer import unit_rows
from mmaudit.checks.embedding.output import OutputPart
from mmaudit.methods import neighbours as nb
from mmaudit.methods.stats import bootstrap_ci

if TYPE_CHECKING:
    from mmaudit.checks.embedding.check import EmbeddingCheck
    from mmaudit.checks.embedding.inputs import EmbeddingInputs
    from mmaudit.checks.embedding.layer import LayerResult

RECALL_KS: tuple[int, ...] = (1, 5, 10)


def alignment(
    layers: dict[str, LayerResult],
    groups: np.ndarray,
    inp: EmbeddingInputs,
    p: EmbeddingCheck.Params,
) -> OutputPart:
    """Matched-pair retrieval between equal-width modality embeddings, and the modality gap."""
    out = OutputPart()
    if p.alignment == "never":
        return out
    if p.alignment == "auto" and inp.shared_space is False:
        out.notes.append(
            "alignment: the model has no shared projection space (built-in fusion is not"
            " 'projection'); set alignment: always to measure it anyway"
        )
        return out
    mods = [m for m in MODALITY_LAYERS if m in layers]
    rows_all = []
    for i, a in enumerate(mods):
        for b in mods[i + 1 :]:
            ra, rb = layers[a], layers[b]
            if ra.x.shape[1] != rb.x.shape[1]:
                if p.alignment == "always":
                    out.notes.append(
                        f"alignment {a}-{b}: widths differ ({ra.x.shape[1]} vs"
                        f" {rb.x.shape[1]}); matched retrieval needs one shared space, skipped"
                    )
                continue
            both = np.intersect1d(ra.rows, rb.rows)
            if len(both) < 3:
                out.notes.append(f"alignment {a}-{b}: fewer than 3 rows with both modalities")
                continue
            xa = ra.x[np.searchsorted(ra.rows, both)]
            xb = rb.x[np.searchsorted(rb.rows, both)]
            g = groups[both]
            kw = {"device": inp.device, "memory_budget_mb": p.memory_budget_mb}
            boot = {"groups": g, "n_boot": p.n_boot, "alpha": p.alpha, "seed": inp.seed}
            for src, dst, qa, qb in ((a, b, xa, xb), (b, a, xb, xa)):
                closer, ties = nb.matched_ranks(qa, qb, metric="cosine", **kw)
                for kk in RECALL_KS:
                    hit = nb.recall_at(closer, ties, kk)
                    est = bootstrap_ci(np.mean, hit, **boot)
                    out.metrics[f"alignment.{src}_to_{dst}.recall_at_{kk}"] = est
                    rows_all.append(
                        {
                            "query": src,
                            "target": dst,
                            "k": kk,
                            "recall": est.value,
                            "ci_low": est.ci_low,
                            "ci_high": est.ci_high,
                            "chance": min(1.0, kk / len(both)),
                            "n": len(both),
                        }
                    )
            na, nbv = unit_rows(xa), unit_rows(xb)

            def gap(u: np.ndarray, v: np.ndarray) -> float:
                return float(np.linalg.norm(u.mean(0) - v.mean(0)))

            out.metrics[f"alignment.{a}_{b}.gap"] = bootstrap_ci(gap, na, nbv, **boot)
    if rows_all:
        out.tables["alignment"] = pd.DataFrame(rows_all)
        if inp.shared_space is None and p.alignment == "auto":
            out.notes.append(
                "alignment: measured for every pair of equal-width modality embeddings; it is"
                " meaningful only if the model maps them into one shared space"
            )
    return out
