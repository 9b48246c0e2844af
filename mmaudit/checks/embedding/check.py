"""Check ``embedding``: the shape of the representation space.

Clusters, neighbours, nuisance structure, exemplars and cross-modal alignment of every
captured embedding (the fused vector and each modality encoder), measured in the
original space; 2-D projections are drawn for people, never measured on.

This module holds the check class and the order of the stages; each stage is a module of
its own and returns its part of the output, merged here in the order the stages ran.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mmaudit.checks.contract import (
    AuditContext,
    Check,
    CheckOutput,
    Requirements,
    ThresholdRule,
    register,
)
from mmaudit.checks.embedding.agreement import (
    adjust,
    agreement_figure,
    enough_permutations,
    knn_agreement,
    silhouettes,
)
from mmaudit.checks.embedding.alignment import alignment
from mmaudit.checks.embedding.clusters import clusters
from mmaudit.checks.embedding.exemplars import exemplars
from mmaudit.checks.embedding.factors import select_factors
from mmaudit.checks.embedding.identity import identity_margins
from mmaudit.checks.embedding.inputs import LAYERS, EmbeddingInputs, inputs_from_context
from mmaudit.checks.embedding.layer import LayerResult, prepare_layer
from mmaudit.checks.embedding.ordinal import ordinal
from mmaudit.checks.embedding.predictions import predictions
from mmaudit.checks.embedding.projections import projections
from mmaudit.checks.embedding.rules import EMBEDDING_RULES
from mmaudit.checks.embedding.summary import coverage, per_sample_frame
from mmaudit.methods import neighbours as nb

__all__ = ["EmbeddingCheck", "analyse"]


@register
class EmbeddingCheck(Check):
    """The shape of the representation space: neighbours, clusters, nuisance axes, exemplars.

    What: for every captured embedding (``embedding`` = the fused vector fed to the head,
    and each modality encoder), in the ORIGINAL space: kNN agreement (share of the k
    nearest neighbours, other patients only, sharing the label / each attribute) as a
    lift over chance (sum p^2) with a bootstrap CI by patient and a permutation p-value
    (labels shuffled, graph fixed); silhouette by label and by each attribute with its
    permutation null; k-means (k by silhouette) or HDBSCAN clusters with label and
    attribute purity; PCA / t-SNE / (optional; PCA when it fails to import) UMAP maps,
    each with its trustworthiness, coloured by label, prediction, correctness and
    attributes; nearest-neighbour exemplars (thumbnail, report snippet, label,
    prediction, site) for named cases, the most confident errors and a few random
    cases; image<->text (any equal-width modality pair)
    retrieval recall@1/5/10 and the modality gap in a shared space; and, when an ordinal
    attribute is named, the Spearman correlation along the first principal direction
    and along a cross-fitted linear direction.
    Why: diseases should group, severities should line up, and acquisition site should
    not be the strongest axis. When neighbours agree on site more than on the label, the
    representation encodes dataset identity more than disease (a shortcut candidate;
    whether it is *used* is for the ablation / intervention checks to show).
    Metrics: ``knn_lift.<layer>.<factor>`` and ``silhouette.<layer>.<factor>`` (Estimates;
    ``null_p`` is the permutation p adjusted across layers x factors by ``p_adjust``; both
    permutation counts are raised, with a note, to at least ``2 m / alpha`` for a family
    of m tests, so that the smallest adjusted p, m / (B + 1), can reach alpha / 2);
    ``identity_margin.<layer>.<attribute>`` (chance-corrected agreement on a nuisance
    attribute minus that on the label, paired bootstrap CI, adjusted p);
    ``clusters.<layer>.{k,silhouette}``, ``clusters.<layer>.purity.<factor>``,
    ``clusters.<layer>.nuisance_pure_label_mixed.<attribute>`` (share of rows in clusters
    pure in the attribute but mixed in label); ``trustworthiness.<layer>.<method>``;
    ``alignment.<a>_to_<b>.recall_at_{1,5,10}``, ``alignment.<a>_<b>.gap``;
    ``ordinal.<layer>.spearman_{pc1,fitted}`` (p two-sided for PC1, one-sided for the
    cross-fitted direction); ``excluded_rows.<layer>`` (count; the
    ``excluded_rows`` table names every id with its reason), ``layers_analysed``.
    Default thresholds: ``dataset_identity`` warns when any layer's identity margin has
    its CI above 0 (adjusted p <= 0.05); ``dataset_identity_head`` fails when the fused
    ``embedding`` (what the head reads) has a margin whose CI lower bound exceeds 0.1 (an
    encoder may encode site without the model using it; the head's input is another
    matter); ``nuisance_pure_clusters`` warns when over 10 % of a layer's rows sit in
    clusters pure in a nuisance attribute but mixed in label.
    """

    name = "embedding"
    description = "neighbours, clusters, nuisance axes, projections, exemplars, alignment"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        layers: list[str] | None = Field(
            default=None,
            description="layers to map; None: every captured one of embedding/image/text/tabular",
        )
        metric: Literal["euclidean", "cosine"] = Field(
            default="euclidean", description="distance in the embedding space"
        )
        k: int = Field(default=10, ge=1, description="neighbours per row for kNN agreement")
        n_permutations: int = Field(
            default=1000,
            ge=20,
            description="label shuffles per kNN-agreement / ordinal null (raised when Holm"
            " over the layers x factors family needs more)",
        )
        silhouette_permutations: int = Field(
            default=100,
            ge=0,
            description="label shuffles per silhouette null (0: no p-value; raised when Holm"
            " over the layers x factors family needs more)",
        )
        n_boot: int = Field(default=1000, ge=50, description="bootstrap resamples (by patient)")
        alpha: float = Field(default=0.05, gt=0, lt=1, description="1 - CI level")
        p_adjust: Literal["holm", "bh", "by", "none"] = Field(
            default="holm", description="multiplicity control of the permutation p-values"
        )
        nuisance_attributes: list[str] | None = Field(
            default=None,
            description="attributes that must not dominate; None: those named like site/scanner",
        )
        projections: list[Literal["pca", "tsne", "umap"]] = Field(
            default=["pca", "tsne"], description="2-D maps; umap compiles for ~30 s on first use"
        )
        projection_max_samples: int = Field(
            default=1000, ge=20, description="stratified subsample for t-SNE / UMAP"
        )
        silhouette_max_samples: int = Field(
            default=3000, ge=20, description="stratified subsample for silhouettes"
        )
        clustering: Literal["kmeans", "hdbscan", "none"] = Field(
            default="kmeans", description="k-means with k by silhouette, or HDBSCAN"
        )
        max_clusters: int = Field(default=8, ge=2, description="largest k tried by k-means")
        cluster_max_samples: int = Field(
            default=5000, ge=20, description="subsample the clustering is fitted on"
        )
        min_cluster_share: float = Field(
            default=0.02, gt=0, lt=1, description="clusters smaller than this share are ignored"
        )
        pure_share: float = Field(
            default=0.9, gt=0.5, le=1, description="majority share making a cluster 'pure'"
        )
        mixed_share: float = Field(
            default=0.75, gt=0, le=1, description="label majority share below which it is 'mixed'"
        )
        exemplar_layer: str = Field(
            default="embedding", description="layer whose neighbours explain the query cases"
        )
        exemplar_ids: list[str] | None = Field(
            default=None, description="study ids always shown as query cases (before the rest)"
        )
        exemplar_errors: int = Field(default=4, ge=0, description="most confident errors shown")
        exemplar_random: int = Field(default=2, ge=0, description="random query cases shown")
        exemplar_k: int = Field(default=5, ge=1, description="neighbours shown per query")
        snippet_chars: int = Field(default=240, ge=0, description="report text shown per case")
        alignment: Literal["auto", "always", "never"] = Field(
            default="auto",
            description="cross-modal retrieval; auto: shared-space models (built-in projection"
            " fusion) and any bring-your-own pair of equal width",
        )
        ordinal: str | None = Field(
            default=None, description="attribute holding an ordinal severity, e.g. 'grade'"
        )
        ordinal_levels: list[str] | None = Field(
            default=None, description="order of a categorical ordinal attribute's levels"
        )
        memory_budget_mb: float = Field(
            default=256.0, gt=0, description="largest distance block held on the device"
        )
        native_threads: int | None = Field(
            default=1,
            ge=1,
            description="OpenMP/BLAS threads for scikit-learn work (t-SNE, k-means); None: all",
        )

    default_thresholds: ClassVar[dict[str, ThresholdRule]] = EMBEDDING_RULES
    requires: ClassVar[Requirements] = Requirements(hooks=True)
    key_figures: ClassVar[tuple[str, ...]] = ("projection_embedding_pca",)
    layers_wanted: ClassVar[list[str]] = list(LAYERS)

    def missing_requirements(self, ctx: AuditContext) -> str | None:
        reason = super().missing_requirements(ctx)
        if reason is not None:
            return reason
        p: EmbeddingCheck.Params = self.params  # type: ignore[assignment]
        wanted = p.layers or list(LAYERS)
        if not [ly for ly in wanted if ly in ctx.adapter.layers]:
            return f"none of the layers {wanted} is configured or detected (model.layers)"
        return None

    def run(self, ctx: AuditContext) -> CheckOutput:
        p: EmbeddingCheck.Params = self.params  # type: ignore[assignment]
        return analyse(inputs_from_context(ctx, p), p)


def analyse(inp: EmbeddingInputs, p: EmbeddingCheck.Params) -> CheckOutput:
    """The whole check on plain arrays (what ``run`` calls after gathering the inputs)."""
    out = CheckOutput()
    n = len(inp.ids)
    groups = nb.group_codes(np.asarray(inp.groups), n) if inp.groups is not None else np.arange(n)
    fs = select_factors(inp, p)
    out.notes.extend(fs.notes)
    pred = predictions(inp)
    p, notes = enough_permutations(p, len(inp.embeddings) * len(fs.factors))
    out.notes.extend(notes)
    layers: dict[str, LayerResult] = {}
    agree_rows: list[dict[str, Any]] = []
    for name, raw in inp.embeddings.items():
        prepared = prepare_layer(name, raw, inp, groups, p)
        prepared.part.merge_into(out)
        res = prepared.layer
        if res is None:
            continue
        knn = knn_agreement(res, fs.factors, groups, inp, p)
        out.notes.extend(knn.notes)
        sil = silhouettes(res, fs.factors, groups, fs.strata, inp, p)
        out.notes.extend(sil.notes)
        agree_rows += knn.rows + sil.rows
        maps = projections(res, fs.factors, pred, fs.strata, inp, p)
        maps.part.merge_into(out)
        found = None
        if p.clustering != "none":
            clustered = clusters(res, fs.factors, fs.nuisance, fs.strata, inp, p)
            clustered.part.merge_into(out)
            found = clustered.labels
        layers[name] = replace(res, agreement=knn.agreement, pca=maps.pca, clusters=found)
    if not layers:
        out.notes.append("no layer could be analysed (see the notes above)")
        out.metrics["layers_analysed"] = 0
        out.judged, out.rows_used = 0, 0
        out.skip_reason = "no layer could be analysed (too few usable rows, or constant; see notes)"
        return out
    out.metrics["layers_analysed"] = len(layers)
    adjusted = adjust(agree_rows, p)
    out.metrics.update(adjusted.metrics)
    identity_margins(layers, fs.labels, fs.nuisance, groups, inp, p).merge_into(out)
    if adjusted.rows:
        table = pd.DataFrame(adjusted.rows)
        out.tables["agreement"] = table
        out.figures["knn_agreement"] = agreement_figure(table)
    exemplars(layers, fs.factors, fs.nuisance, pred, groups, inp, p).merge_into(out)
    alignment(layers, groups, inp, p).merge_into(out)
    if p.ordinal:
        ordinal(layers, groups, inp, p).merge_into(out)
    out.per_sample = per_sample_frame(inp.ids, layers)
    basis = coverage(layers, fs.nuisance, n, out.metrics, EmbeddingCheck.default_thresholds)
    out.judged, out.rows_used = basis.judged, basis.rows_used
    out.coverage.extend(basis.notes)
    out.skip_reason = basis.skip_reason
    out.notes = list(dict.fromkeys(out.notes))  # e.g. "UMAP unavailable" once, not per layer
    if inp.groups is not None:
        out.notes.append(
            f"neighbours of a row never include rows of the same patient; CIs resample"
            f" {len(np.unique(groups))} patients"
        )
    return out
