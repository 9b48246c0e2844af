"""Clusters of a layer (k-means with k by silhouette, or HDBSCAN) and how pure each is in
the label and in every attribute: a cluster pure in a nuisance attribute but mixed in the
label is a group the representation formed by dataset identity, not by disease."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmaudit.checks.embedding.budget import native_threads, stratified_subsample
from mmaudit.checks.embedding.factors import known_codes
from mmaudit.checks.embedding.layer import unit_rows
from mmaudit.checks.embedding.output import OutputPart
from mmaudit.methods import neighbours as nb

if TYPE_CHECKING:
    from mmaudit.checks.embedding.check import EmbeddingCheck
    from mmaudit.checks.embedding.factors import Factor
    from mmaudit.checks.embedding.inputs import EmbeddingInputs
    from mmaudit.checks.embedding.layer import LayerResult


@dataclass(frozen=True)
class Clusters:
    """The cluster of each analysed row (-1: none; None when nothing could be clustered)
    and the clusters' metrics, table rows and notes."""

    labels: np.ndarray | None
    part: OutputPart


def clusters(
    res: LayerResult,
    factors: list[Factor],
    nuisance: list[Factor],
    strata: np.ndarray,
    inp: EmbeddingInputs,
    p: EmbeddingCheck.Params,
) -> Clusters:
    """Cluster, then measure each cluster's purity in label and every attribute."""
    out = OutputPart()
    rng = inp.rng(f"clusters:{res.name}")
    n = len(res.rows)
    fit_rows = (
        stratified_subsample(strata[res.rows], p.cluster_max_samples, rng)
        if strata.size
        else np.arange(min(n, p.cluster_max_samples))
    )
    # k-means and HDBSCAN measure Euclidean distance: on unit rows it orders pairs as
    # the cosine distance does
    x_all = unit_rows(res.x) if p.metric == "cosine" else res.x
    x_fit = x_all[fit_rows]
    min_size = max(5, int(math.ceil(p.min_cluster_share * n)))
    labels = np.full(n, -1, dtype=np.int64)
    sil = math.nan
    if p.clustering == "kmeans":
        km, sil = _kmeans_by_silhouette(x_fit, p, inp, rng)
        if km is None:
            out.notes.append(f"layer {res.name}: too few distinct rows to cluster")
            return Clusters(None, out)
        with native_threads(p.native_threads):
            labels = km.predict(x_all).astype(np.int64)
    else:
        from sklearn.cluster import HDBSCAN

        hd = HDBSCAN(min_cluster_size=min(min_size, max(2, len(fit_rows) // 2)), copy=True)
        with native_threads(p.native_threads):
            labels[fit_rows] = hd.fit_predict(x_fit)
        if (labels >= 0).sum() and np.unique(labels[labels >= 0]).size >= 2:
            ok = labels >= 0
            r = nb.silhouette_with_null(
                x_all[ok],
                [labels[ok]],
                0,
                rng,
                metric=p.metric,
                device=inp.device,
                memory_budget_mb=p.memory_budget_mb,
            )
            sil = r[0].value
    k = int(np.unique(labels[labels >= 0]).size)
    out.metrics[f"clusters.{res.name}.k"] = k
    out.metrics[f"clusters.{res.name}.silhouette"] = sil
    label_factor = next((f for f in factors if f.role == "label"), None)
    table = []
    flagged_rows = {f.name: 0 for f in nuisance}
    clustered = 0
    purity_sum = {f.name: 0.0 for f in factors}
    purity_n = {f.name: 0 for f in factors}
    for c in np.unique(labels[labels >= 0]):
        members = labels == c
        size = int(members.sum())
        row: dict[str, Any] = {"layer": res.name, "cluster": int(c), "size": size}
        row["counted"] = size >= min_size
        pur: dict[str, tuple[float, str, float]] = {}
        for f in factors:
            codes = f.codes[res.rows]
            here = codes[members & (codes >= 0)]
            if here.size == 0:
                continue
            counts = np.bincount(here, minlength=len(f.levels))
            top = int(counts.argmax())
            share = float(counts[top] / here.size)
            overall = float(np.mean(known_codes(codes) == top))
            pur[f.name] = (share, f.levels[top], overall)
            row[f"purity.{f.name}"] = share
            row[f"majority.{f.name}"] = f.levels[top]
            if row["counted"]:
                purity_sum[f.name] += share * size
                purity_n[f.name] += size
        flags = []
        if row["counted"] and label_factor is not None and label_factor.name in pur:
            clustered += size
            label_share = pur[label_factor.name][0]
            for f in nuisance:
                if f.name not in pur:
                    continue
                share, _, overall = pur[f.name]
                enriched = overall < 1 and (share - overall) / (1 - overall) >= 0.5
                if share >= p.pure_share and enriched and label_share < p.mixed_share:
                    flags.append(f.name)
                    flagged_rows[f.name] += size
        # one boolean column per nuisance attribute, named like the metric it feeds: a
        # comma-joined list would be an empty cell (NaN to a CSV reader) when none is flagged
        for f in nuisance:
            row[f"nuisance_pure_label_mixed.{f.name}"] = f.name in flags
        table.append(row)
    for f in factors:
        if purity_n[f.name]:
            out.metrics[f"clusters.{res.name}.purity.{f.name}"] = (
                purity_sum[f.name] / purity_n[f.name]
            )
    for f in nuisance:
        out.metrics[f"clusters.{res.name}.nuisance_pure_label_mixed.{f.name}"] = (
            flagged_rows[f.name] / clustered if clustered else 0.0
        )
    if table:
        out.tables["clusters"] = pd.DataFrame(table)
    if p.clustering == "hdbscan" and len(fit_rows) < n:
        out.notes.append(
            f"layer {res.name}: HDBSCAN clusters the {len(fit_rows)}-row subsample only"
        )
    return Clusters(labels, out)


def _kmeans_by_silhouette(
    x: np.ndarray, p: EmbeddingCheck.Params, inp: EmbeddingInputs, rng: np.random.Generator
) -> tuple[Any, float]:
    from sklearn.cluster import KMeans

    distinct = len(np.unique(np.round(x, 12), axis=0))
    best, best_s = None, -math.inf
    sil_rows = np.sort(rng.choice(len(x), min(len(x), p.silhouette_max_samples), replace=False))
    for k in range(2, min(p.max_clusters, distinct, len(x) - 1) + 1):
        with warnings.catch_warnings(), native_threads(p.native_threads):
            warnings.simplefilter("ignore")
            km = KMeans(n_clusters=k, n_init=2, random_state=inp.seed).fit(x)
        lab = km.labels_[sil_rows]
        if np.unique(lab).size < 2:
            continue
        scored = nb.silhouette_with_null(
            x[sil_rows],
            [lab],
            0,
            rng,
            metric=p.metric,
            device=inp.device,
            memory_budget_mb=p.memory_budget_mb,
        )
        if scored[0].value > best_s + 1e-12:
            best, best_s = km, scored[0].value
    return best, (best_s if best is not None else math.nan)
