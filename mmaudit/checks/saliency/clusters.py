"""SpRAy-style spectral clustering of the lead method's maps (Lapuschkin et al. 2019): each
cluster's size, label purity and attribute purity; a small cluster nearly pure in one
attribute level is a candidate shortcut strategy."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mmaudit.checks.contract import CheckOutput, Finding
from mmaudit.checks.saliency.maps import Maps, downsample, live
from mmaudit.checks.saliency.setting import Setting
from mmaudit.checks.saliency.subgroups import Levels


@dataclass(frozen=True)
class Clusters:
    """Cluster per mapped row (-1: not clustered) and one table row per cluster."""

    of: np.ndarray
    table: pd.DataFrame = field(default_factory=pd.DataFrame)


def cluster_maps(
    s: Setting, main: Maps, method: str | None, levels: Levels
) -> tuple[Clusters, CheckOutput]:
    """SpRAy-style spectral clustering of the hotspot method's maps (eigengap count)."""
    p, out = s.params, CheckOutput()
    cluster_of = np.full(len(main.rows), -1)
    m = method
    if m is None:
        return Clusters(cluster_of), out
    alive = np.flatnonzero(live(main, m))
    if len(alive) < 10:
        out.notes.append("fewer than 10 live maps: no clustering")
        return Clusters(cluster_of), out
    if len(alive) > p.cluster_samples:
        alive = np.sort(s.ctx.rng("saliency.cluster").choice(alive, p.cluster_samples, False))
    feats = downsample(main.thumbs[m][alive], 16)
    feats = feats.reshape(len(alive), -1)
    feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    labels, k, gaps = spectral(feats, p.clusters_max, s.ctx.seed)
    cluster_of[alive] = labels
    out.metrics["clusters.n"] = int(k)
    out.metrics["clusters.eigengap"] = float(gaps)
    y = s.labels(main.rows)
    stat = main.stats[m][s.stat_key]
    table = []
    candidates = 0
    for c in range(k):
        sel = alive[labels == c]
        row: dict[str, Any] = {
            "cluster": c,
            "size": len(sel),
            "share": len(sel) / len(alive),
            f"mean_{s.stat_key}": float(np.nanmean(stat[sel])),
        }
        vals, counts = np.unique(y[sel], return_counts=True)
        row["label_purity"] = float(counts.max() / counts.sum())
        row["label_majority"] = str(vals[counts.argmax()])
        flagged, plain = [], []
        for attr, lab in levels.labels.items():
            spec = s.ctx.config.data.attributes.get(attr)
            if spec is not None and spec.kind == "continuous":
                continue
            known = [x for x in lab[sel] if x is not None]
            if not known:
                continue
            levs, cnt = np.unique(np.array(known, dtype=str), return_counts=True)
            purity = float(cnt.max() / cnt.sum())
            top = str(levs[cnt.argmax()])
            # the base rate over the same maps the clusters were built on
            base_share = float(np.mean([x == top for x in lab[alive] if x is not None]))
            row[f"{attr}_purity"] = purity
            row[f"{attr}_majority"] = top
            if row["share"] <= 0.5 and purity >= 0.9 and purity - base_share >= 0.2:
                flagged.append(
                    f"{attr}={top} ({purity:.0%} vs {base_share:.0%} of the clustered maps)"
                )
                plain.append(f"{attr} {top}")
        row["candidate_shortcut"] = bool(flagged)
        table.append(row)
        if flagged:
            candidates += 1
            out.findings.append(
                Finding(
                    check="saliency",
                    rule="cluster_candidate",
                    severity="note",
                    message=f"A group of {row['share']:.0%} of the {m} saliency maps share one"
                    f" pattern and come almost only from {' and '.join(plain)} cases: the"
                    " model may explain those cases by something other than the disease",
                    evidence=f"{m} map cluster {c}: {', '.join(flagged)}; mean"
                    f" {s.stat_key.replace('_', '-')} share {row[f'mean_{s.stat_key}']:.2f}",
                    next_step="look at the cluster's exemplar maps for what they share (a"
                    " marker, a border, text); if it is not anatomy, crop or in-paint it in"
                    " the training images, retrain and re-audit",
                    detail=f"{m} map cluster {c} ({row['share']:.0%} of maps) is nearly"
                    f" pure in {', '.join(flagged)}; its mean {s.stat_key} share is"
                    f" {row[f'mean_{s.stat_key}']:.2f}: a candidate shortcut strategy"
                    " (SpRAy-style spectral clustering of the maps)",
                    figure="cluster_exemplars",
                )
            )
    out.metrics["clusters.candidates"] = candidates
    cluster_table = pd.DataFrame(table)
    out.tables["clusters"] = cluster_table
    return Clusters(cluster_of, cluster_table), out


def spectral(x: np.ndarray, k_max: int, seed: int) -> tuple[np.ndarray, int, float]:
    """Spectral clustering of rows of ``x`` on a symmetric kNN affinity, the cluster count
    chosen by the largest eigengap of the normalised Laplacian (von Luxburg 2007); one
    cluster when the largest gap follows the first eigenvalue (homogeneous maps)."""
    from scipy.sparse.csgraph import laplacian
    from sklearn.cluster import SpectralClustering
    from sklearn.neighbors import kneighbors_graph

    n = x.shape[0]
    k_nn = int(min(n - 1, max(5, round(math.log(n) * 2))))
    a = kneighbors_graph(x, k_nn, mode="connectivity", include_self=False)
    a = 0.5 * (a + a.T)
    a = a.toarray()
    lap = laplacian(a, normed=True)
    ev = np.sort(np.linalg.eigvalsh(lap))[: min(k_max, n - 1) + 1]
    gaps = np.diff(ev)
    # the largest gap after the k-th eigenvalue gives k; after the first: one cluster
    k = int(np.argmax(gaps) + 1) if len(gaps) else 1
    if k < 2:
        return np.zeros(n, dtype=int), 1, float(gaps[0]) if len(gaps) else 0.0
    sc = SpectralClustering(
        n_clusters=k, affinity="precomputed", random_state=seed, assign_labels="cluster_qr"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "graph is not fully connected"
        labels = sc.fit_predict(a)
    return labels, k, float(gaps[k - 1])
