"""Check ``embedding``: the shape of the representation space.

Clusters, neighbours, nuisance structure, exemplars and cross-modal alignment of every
captured embedding (the fused vector and each modality encoder), measured in the
original space; 2-D projections are drawn for people, never measured on.
"""

from __future__ import annotations

import math
import re
import textwrap
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from mmaudit.checks.contract import (
    AuditContext,
    Check,
    CheckOutput,
    Requirements,
    ThresholdRule,
    register,
)
from mmaudit.checks.findings import count_judged
from mmaudit.methods import neighbours as nb
from mmaudit.methods.stats import (
    Estimate,
    adjust_pvalues,
    bootstrap_ci,
    paired_bootstrap_diff,
    permutation_pvalue,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LAYERS: tuple[str, ...] = ("embedding", "image", "text", "tabular")
MODALITY_LAYERS: tuple[str, ...] = ("image", "text", "tabular")
# attribute names taken as acquisition / dataset identity when nuisance_attributes is unset
NUISANCE_HINTS: tuple[str, ...] = (
    "site",
    "scanner",
    "hospital",
    "centre",
    "center",
    "institution",
    "vendor",
    "manufacturer",
    "device",
    "source",
    "dataset",
    "protocol",
)
RECALL_KS: tuple[int, ...] = (1, 5, 10)


# ----------------------------------------------------------------------------- inputs


@dataclass
class Factor:
    """A labeling of the rows: the target (or one target column) or an attribute.

    ``codes`` are integer levels with -1 for unknown; ``values`` keeps a continuous
    attribute's raw numbers (for colouring and ordinal analysis).
    """

    name: str
    codes: np.ndarray
    levels: list[str]
    role: Literal["label", "attribute"]
    values: np.ndarray | None = None


@dataclass
class EmbeddingInputs:
    """Everything the analysis reads, independent of a model or a dataset object.

    ``run`` fills it from the audit context; tests and benchmarks build it directly.
    ``target`` is (N,) class indices, or (N, C) 0/1 for multilabel. ``probs`` are the
    model's probabilities (N, K) or None. ``continuous`` maps each continuous attribute
    to its bins (None: quartiles). ``present`` maps a modality layer to the rows where
    that modality was given (elsewhere the encoder output is a fill-in, not the data).
    ``load_image(i)`` returns row i's image as (H, W) or (H, W, 3) for thumbnails.
    """

    embeddings: dict[str, np.ndarray]
    ids: np.ndarray
    target: np.ndarray
    class_names: list[str]
    target_kind: str = "binary"
    probs: np.ndarray | None = None
    attributes: pd.DataFrame | None = None
    continuous: dict[str, list[float] | None] = field(default_factory=dict)
    groups: np.ndarray | None = None
    present: dict[str, np.ndarray] = field(default_factory=dict)
    texts: list[str] | None = None
    text_mask: np.ndarray | None = None
    load_image: Callable[[int], np.ndarray] | None = None
    shared_space: bool | None = None
    device: torch.device | str = "cpu"
    seed: int = 0

    def rng(self, salt: str) -> np.random.Generator:
        """The same stream ``AuditContext.rng`` gives for this seed and salt."""
        return np.random.default_rng([self.seed, zlib.crc32(salt.encode())])


@dataclass
class LayerResult:
    """What one layer's analysis keeps for the later cross-layer steps."""

    name: str
    rows: np.ndarray
    x: np.ndarray
    k: int
    neighbours: nb.Neighbours
    agreement: dict[str, np.ndarray] = field(default_factory=dict)
    pca: np.ndarray | None = None
    clusters: np.ndarray | None = None


def _metric_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-.]+", "_", str(name)).strip("_") or "unnamed"


def _is_missing(v: Any) -> bool:
    if v is None or v is pd.NA:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return str(v).strip() == ""


def _categorical_factor(name: str, values: np.ndarray, role: str) -> Factor:
    missing = np.array([_is_missing(v) for v in values], dtype=bool)
    text = np.array(
        ["" if m else str(v) for v, m in zip(values, missing, strict=True)], dtype=object
    )
    levels = sorted(set(text[~missing].tolist()))
    lookup = {lv: i for i, lv in enumerate(levels)}
    codes = np.array([-1 if m else lookup[t] for t, m in zip(text, missing, strict=True)])
    return Factor(name, codes.astype(np.int64), levels, role)  # type: ignore[arg-type]


def _continuous_factor(name: str, values: np.ndarray, bins: list[float] | None) -> Factor:
    v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    known = np.isfinite(v)
    if bins:
        edges = sorted(float(b) for b in bins)
    else:
        edges = (
            sorted(set(np.quantile(v[known], [0.25, 0.5, 0.75]).tolist())) if known.any() else []
        )
    codes = np.full(len(v), -1, dtype=np.int64)
    codes[known] = np.searchsorted(edges, v[known], side="right")
    labels = []
    for i in range(len(edges) + 1):
        if i == 0:
            labels.append(f"<{edges[0]:g}" if edges else "all")
        elif i == len(edges):
            labels.append(f">={edges[-1]:g}")
        else:
            labels.append(f"{edges[i - 1]:g}-{edges[i]:g}")
    used = np.unique(codes[known])
    remap = np.full(len(labels), -1)
    remap[used] = np.arange(len(used))
    codes[known] = remap[codes[known]]
    return Factor(name, codes, [labels[i] for i in used], "attribute", values=v)


def build_factors(inp: EmbeddingInputs) -> list[Factor]:
    """The label factor(s) first, then one factor per attribute (continuous ones binned)."""
    y = np.asarray(inp.target)
    if y.ndim == 2:
        out = [
            Factor(f"label.{_metric_name(c)}", y[:, j].astype(np.int64), ["0", "1"], "label")
            for j, c in enumerate(inp.class_names)
        ]
    else:
        levels = list(inp.class_names) or [str(v) for v in np.unique(y)]
        out = [Factor("label", y.astype(np.int64), levels, "label")]
    attrs = inp.attributes
    if attrs is not None:
        for col in attrs.columns:
            values = attrs[col].to_numpy()
            name = _metric_name(col)
            if name == "label" or name.startswith("label."):
                name = f"attribute_{name}"  # keep clear of the target's metric names
            if col in inp.continuous:
                f = _continuous_factor(name, values, inp.continuous[col])
            else:
                f = _categorical_factor(name, values, "attribute")
            out.append(f)
    return out


@dataclass
class Predictions:
    """Predicted level names, correctness and how confident each error is."""

    names: np.ndarray
    correct: np.ndarray
    error_confidence: np.ndarray
    score: np.ndarray


def predictions(inp: EmbeddingInputs) -> Predictions | None:
    """Predictions from the probabilities for the target kind (None without probabilities)."""
    if inp.probs is None:
        return None
    prob = np.asarray(inp.probs, dtype=float)
    y = np.asarray(inp.target)
    names_ = list(inp.class_names)
    if y.ndim == 2:
        pred = prob >= 0.5
        correct = (pred == (y == 1)).all(1)
        err = np.where(pred != (y == 1), np.abs(prob - y), 0.0).max(1)
        label = np.array(
            [
                "+".join(n for n, on in zip(names_, row, strict=False) if on) or "none"
                for row in pred
            ],
            dtype=object,
        )
        return Predictions(label, correct, np.where(correct, 0.0, err), prob.max(1))
    if inp.target_kind == "multiclass" and prob.shape[1] > 1:
        pred_i = prob.argmax(1)
        conf = prob.max(1)
    else:
        score = prob[:, -1]
        pred_i = (score >= 0.5).astype(np.int64)
        conf = np.abs(score - 0.5) * 2
    correct = pred_i == y
    label = np.array([names_[i] if i < len(names_) else str(i) for i in pred_i], dtype=object)
    score = prob[:, -1] if prob.shape[1] <= 2 else prob.max(1)
    return Predictions(label, correct, np.where(correct, 0.0, conf), score)


def pool(x: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, str | None]:
    """(N, D) from a layer output: tokens (N, T, D) are mean-pooled (over ``mask`` when it
    fits), feature maps (N, C, H, W) averaged over space. Returns the note to report."""
    x = np.asarray(x)
    if x.ndim == 2:
        return x.astype(np.float64, copy=False), None
    if x.ndim == 1:
        return x[:, None].astype(np.float64), None
    if x.ndim == 3:
        if mask is not None and mask.shape == x.shape[:2]:
            w = mask.astype(np.float64)[:, :, None]
            den = np.maximum(w.sum(1), 1.0)
            return (x * w).sum(1) / den, f"token-shaped {x.shape[1:]}: masked mean over tokens"
        return x.mean(1), f"token-shaped {x.shape[1:]}: mean over tokens"
    axes = tuple(range(2, x.ndim))
    return x.mean(axis=axes), f"shaped {x.shape[1:]}: averaged over axes {axes}"


def stratified_subsample(strata: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted row indices, at most ``cap``, with each stratum kept in proportion (at least 1)."""
    n = len(strata)
    if n <= cap:
        return np.arange(n)
    _, inv = np.unique(np.asarray(strata).astype(str), return_inverse=True)
    inv = inv.reshape(-1)
    counts = np.bincount(inv)
    exact = counts * cap / n
    quota = np.maximum(np.floor(exact).astype(int), (counts > 0).astype(int))
    quota = np.minimum(quota, counts)
    spare = cap - quota.sum()
    if spare > 0:
        order = np.argsort(-(exact - np.floor(exact)), kind="stable")
        for s in order:
            if spare <= 0:
                break
            if quota[s] < counts[s]:
                quota[s] += 1
                spare -= 1
    picks = [
        rng.choice(np.flatnonzero(inv == s), size=int(q), replace=False)
        for s, q in enumerate(quota)
        if q > 0
    ]
    return np.sort(np.concatenate(picks))


def _native(threads: int | None) -> Any:
    """Cap the OpenMP / BLAS threads of scikit-learn and numpy work (not torch's).

    On a machine whose cores are already busy, OpenMP threads that spin-wait cost far more
    than they save: t-SNE of 1000 rows took 34 s with two threads on two contended cores
    and 9 s with one; k-means 14 s and 0.8 s.
    """
    import contextlib

    from threadpoolctl import threadpool_limits

    return threadpool_limits(threads) if threads else contextlib.nullcontext()


# ----------------------------------------------------------------------------- statistics


def _known(codes: np.ndarray) -> np.ndarray:
    return codes[codes >= 0]


def _lift(agree: np.ndarray, codes: np.ndarray) -> float:
    chance = nb.chance_agreement(codes)
    ok = (codes >= 0) & ~np.isnan(agree)
    if not ok.any() or not chance > 0:
        return math.nan
    return float(agree[ok].mean() / chance)


def _kappa(agree: np.ndarray, codes: np.ndarray) -> float:
    """Chance-corrected agreement: (agreement - sum p^2) / (1 - sum p^2)."""
    chance = nb.chance_agreement(codes)
    ok = (codes >= 0) & ~np.isnan(agree)
    if not ok.any() or not chance < 1:
        return math.nan
    return float((agree[ok].mean() - chance) / (1 - chance))


def _nanmean(v: np.ndarray) -> float:
    ok = ~np.isnan(v)
    return float(v[ok].mean()) if ok.any() else math.nan


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def _spearman_null(a: np.ndarray, b: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Spearman of ``a`` with ``n`` shuffles of ``b`` (Pearson of ranks, vectorised)."""
    from scipy.stats import rankdata

    ra = rankdata(a)
    rb = rankdata(b)
    ra = (ra - ra.mean()) / (ra.std() or 1.0)
    rb = (rb - rb.mean()) / (rb.std() or 1.0)
    perms = np.stack([rng.permutation(rb) for _ in range(n)])
    return perms @ ra / len(ra)


# ----------------------------------------------------------------------------- the check


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

    default_thresholds: ClassVar[dict[str, ThresholdRule]] = {
        "dataset_identity": ThresholdRule(
            metric="identity_margin.*",
            statistic="ci_low",
            warn_above=0.0,
            max_p=0.05,
            message="neighbours agree on a nuisance attribute more than on the label"
            " (dataset identity is a stronger axis than disease in this layer)",
        ),
        "dataset_identity_head": ThresholdRule(
            metric="identity_margin.embedding.*",
            statistic="ci_low",
            fail_above=0.1,
            max_p=0.05,
            message="the vector the head reads is organised by a nuisance attribute more"
            " than by the label",
        ),
        "nuisance_pure_clusters": ThresholdRule(
            metric="clusters.*.nuisance_pure_label_mixed.*",
            warn_above=0.1,
            message="clusters pure in a nuisance attribute but mixed in label",
        ),
    }
    requires: ClassVar[Requirements] = Requirements(hooks=True)
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


def inputs_from_context(ctx: AuditContext, p: EmbeddingCheck.Params) -> EmbeddingInputs:
    """Gather the cached embeddings, predictions and dataset fields the analysis reads."""
    from mmaudit.engine.cache import logits_to_probs

    ds = ctx.dataset
    wanted = [ly for ly in (p.layers or list(LAYERS)) if ly in ctx.adapter.layers]
    kind = ctx.config.data.target.kind
    sweep = ctx.cache.sweep()
    probs = logits_to_probs(sweep.logits, "multiclass" if kind == "multiclass" else "multilabel")
    if kind == "multiclass" and sweep.logits.shape[1] == 1:
        probs = logits_to_probs(sweep.logits, "multilabel")
    present = {
        m: ds.present[:, ds.modalities.index(m)] for m in MODALITY_LAYERS if m in ds.modalities
    }
    continuous = {
        name: a.bins for name, a in ctx.config.data.attributes.items() if a.kind == "continuous"
    }
    load_image = None
    if ds.cfg.image is not None:

        def load_image(i: int) -> np.ndarray:
            if ds.image_paths[i] is None:
                return np.zeros((8, 8))
            t = ds.load_image(i)
            return t[0].numpy() if t.shape[0] == 1 else t.permute(1, 2, 0).numpy()

    spec = getattr(ctx.adapter.module, "spec", None)
    fusion = getattr(spec, "fusion", None)
    shared = None if fusion is None else fusion == "projection"
    mask = ds.attention_mask.numpy() if ds.attention_mask is not None else None
    return EmbeddingInputs(
        embeddings={ly: ctx.cache.embeddings(ly) for ly in wanted},
        ids=np.asarray(ds.ids),
        target=np.asarray(ds.target),
        class_names=list(ds.class_names),
        target_kind=kind,
        probs=probs,
        attributes=ds.attributes.reset_index(drop=True) if len(ds.attributes.columns) else None,
        continuous=continuous,
        groups=ctx.groups,
        present=present,
        texts=list(ds.texts) if ds.texts else None,
        text_mask=mask,
        load_image=load_image,
        shared_space=shared,
        device=ctx.adapter.device,
        seed=ctx.seed,
    )


# ----------------------------------------------------------------------------- analysis


def analyse(inp: EmbeddingInputs, p: EmbeddingCheck.Params) -> CheckOutput:
    """The whole check on plain arrays (what ``run`` calls after gathering the inputs)."""
    out = CheckOutput()
    n = len(inp.ids)
    groups = nb.group_codes(np.asarray(inp.groups), n) if inp.groups is not None else np.arange(n)
    factors = _usable_factors(build_factors(inp), out.notes)
    labels = [f for f in factors if f.role == "label"]
    nuisance = _nuisance(factors, p, out.notes)
    pred = predictions(inp)
    strata = _strata(labels, nuisance)
    p = _enough_permutations(p, len(inp.embeddings) * len(factors), out.notes)
    layers: dict[str, LayerResult] = {}
    agree_rows: list[dict[str, Any]] = []
    for name, raw in inp.embeddings.items():
        res = _prepare_layer(name, raw, inp, groups, p, out)
        if res is None:
            continue
        layers[name] = res
        agree_rows += _agreement(res, factors, groups, inp, p, out)
        agree_rows += _silhouettes(res, factors, groups, strata, inp, p, out)
        _projections(res, factors, pred, strata, inp, p, out)
        if p.clustering != "none":
            _clusters(res, factors, nuisance, strata, inp, p, out)
    if not layers:
        out.notes.append("no layer could be analysed (see the notes above)")
        out.metrics["layers_analysed"] = 0
        out.judged, out.rows_used = 0, 0
        out.skip_reason = "no layer could be analysed (too few usable rows, or constant; see notes)"
        return out
    out.metrics["layers_analysed"] = len(layers)
    _adjust(agree_rows, out, p)
    _identity(layers, labels, nuisance, groups, inp, p, out)
    if agree_rows:
        table = pd.DataFrame(agree_rows)
        out.tables["agreement"] = table
        out.figures["knn_agreement"] = _agreement_figure(table)
    _exemplars(layers, factors, nuisance, pred, groups, inp, p, out)
    _alignment(layers, groups, inp, p, out)
    if p.ordinal:
        _ordinal(layers, groups, inp, p, out)
    frame = pd.DataFrame({"id": inp.ids})
    for name, res in layers.items():
        if res.clusters is not None:
            col = np.full(n, -1, dtype=np.int64)
            col[res.rows] = res.clusters
            frame[f"cluster.{name}"] = col
        if res.pca is not None:
            for j in range(min(2, res.pca.shape[1])):
                col = np.full(n, np.nan)
                col[res.rows] = res.pca[:, j]
                frame[f"pc{j + 1}.{name}"] = col
    out.per_sample = frame
    _coverage(layers, nuisance, n, out)
    out.notes = list(dict.fromkeys(out.notes))  # e.g. "UMAP unavailable" once, not per layer
    if inp.groups is not None:
        out.notes.append(
            f"neighbours of a row never include rows of the same patient; CIs resample"
            f" {len(np.unique(groups))} patients"
        )
    return out


def _coverage(
    layers: dict[str, LayerResult], nuisance: list[Factor], n: int, out: CheckOutput
) -> None:
    """What the verdict rests on: ``judged`` (the identity margins and nuisance-pure
    cluster shares the rules judge), ``rows_used`` (rows of the analysed layers), a coverage
    note per layer analysed on part of the rows, and the skip reason when nothing could be
    judged (no nuisance attribute: kNN lifts and silhouettes alone are descriptive)."""
    out.judged = count_judged(out.metrics, EmbeddingCheck.default_thresholds)
    used = np.zeros(n, dtype=bool)
    for name, res in layers.items():
        used[res.rows] = True
        if len(res.rows) < n:
            out.coverage.append(
                f"layer {name}: analysed on {len(res.rows)} of {n} rows (the others lack that"
                " modality or have a non-finite embedding; the excluded_rows table names them)"
            )
    out.rows_used = int(used.sum())
    if not nuisance:
        out.skip_reason = (
            "no nuisance attribute to test for a dataset-identity axis: none is named like a"
            f" site / scanner ({', '.join(NUISANCE_HINTS)}) or has two levels here; set"
            " params.nuisance_attributes (kNN lifts and silhouettes are reported, not judged)"
        )
    else:
        out.skip_reason = (
            f"no identity margin or cluster purity could be computed for"
            f" {', '.join(f.name for f in nuisance)} (no label agreement to compare with;"
            " see the notes)"
        )


def _enough_permutations(
    p: EmbeddingCheck.Params, tests: int, notes: list[str]
) -> EmbeddingCheck.Params:
    """``p`` with the kNN and silhouette permutation counts raised to ``ceil(2 m / alpha) -
    1`` for a family of ``m`` tests (layers x factors).

    Why: a permutation p is at least 1 / (B + 1), so Holm over m tests cannot go below
    m / (B + 1); with 100 shuffles and 16 tests that is 0.158 and no silhouette, however
    clear, could ever be significant. The raised count lets the smallest adjusted p reach
    alpha / 2."""
    if p.p_adjust == "none" or tests <= 0:
        return p
    needed = math.ceil(2 * tests / p.alpha) - 1
    changes: dict[str, int] = {}
    for name in ("n_permutations", "silhouette_permutations"):
        asked = getattr(p, name)
        if 0 < asked < needed:  # 0 silhouette permutations: no p-value asked for
            changes[name] = needed
            notes.append(
                f"{name}: {needed} (not {asked}) so that {p.p_adjust} over the {tests}"
                f" layer x factor tests can reach alpha = {p.alpha}"
            )
    return p.model_copy(update=changes) if changes else p


def _usable_factors(factors: list[Factor], notes: list[str]) -> list[Factor]:
    keep = []
    for f in factors:
        known = _known(f.codes)
        levels = np.unique(known)
        if levels.size < 2:
            what = f"one level ({f.levels[int(levels[0])]!r})" if levels.size else "no values"
            notes.append(
                f"{f.role} '{f.name}' has {what} among the audited rows: neighbour agreement,"
                " silhouette and purity need at least two, so it is left out"
            )
            continue
        keep.append(f)
    return keep


def _nuisance(factors: list[Factor], p: EmbeddingCheck.Params, notes: list[str]) -> list[Factor]:
    attrs = {f.name: f for f in factors if f.role == "attribute"}
    if p.nuisance_attributes is not None:
        names = [_metric_name(a) for a in p.nuisance_attributes]
        lacking = [a for a in names if a not in attrs]
        if lacking:
            notes.append(
                f"nuisance_attributes {lacking} are not usable attributes here (known:"
                f" {sorted(attrs)})"
            )
        return [attrs[a] for a in names if a in attrs]
    picked = [f for name, f in attrs.items() if any(h in name.lower() for h in NUISANCE_HINTS)]
    if not picked and attrs:
        notes.append(
            "no attribute is named like an acquisition site / scanner; set"
            " params.nuisance_attributes to test for a dataset-identity axis"
        )
    return picked


def _strata(labels: list[Factor], nuisance: list[Factor]) -> np.ndarray:
    parts = [labels[0].codes.astype(str)] if labels else []
    if nuisance:
        parts.append(nuisance[0].codes.astype(str))
    if not parts:
        return np.zeros(0, dtype=object)
    out = parts[0].astype(object)
    for extra in parts[1:]:
        out = out + "|" + extra
    return out


def _prepare_layer(
    name: str,
    raw: np.ndarray,
    inp: EmbeddingInputs,
    groups: np.ndarray,
    p: EmbeddingCheck.Params,
    out: CheckOutput,
) -> LayerResult | None:
    """Pool, drop absent-modality and non-finite rows, refuse constant embeddings, kNN."""
    mask = inp.text_mask if name == "text" else None
    x, how = pool(raw, mask)
    if how:
        out.notes.append(f"layer {name}: {how}")
    n = len(x)
    keep = np.ones(n, dtype=bool)
    reason = np.full(n, "", dtype=object)
    if name in inp.present:
        absent = ~np.asarray(inp.present[name], dtype=bool)
        if absent.any():
            out.notes.append(
                f"layer {name}: {int(absent.sum())} rows without that modality left out (their"
                " encoder output is a fill-in, not data)"
            )
        keep &= ~absent
        reason[absent] = "modality_absent"
    bad = keep & ~np.isfinite(x).all(axis=1)
    if bad.any():
        bad_ids = [str(i) for i in inp.ids[bad]]
        shown = ", ".join(bad_ids[:10]) + (
            f" and {len(bad_ids) - 10} more (all in the excluded_rows table)"
            if len(bad_ids) > 10
            else ""
        )
        out.notes.append(f"layer {name}: NaN/inf in the embedding of {len(bad_ids)} rows: {shown}")
        keep &= ~bad
        reason[bad] = "nan_inf"
    out.metrics[f"excluded_rows.{name}"] = int((~keep).sum())
    if not keep.all():
        dropped = np.flatnonzero(~keep)
        frame = pd.DataFrame(
            {"layer": name, "id": [str(i) for i in inp.ids[dropped]], "reason": reason[dropped]}
        )
        prev = out.tables.get("excluded_rows")
        out.tables["excluded_rows"] = (
            frame if prev is None else pd.concat([prev, frame], ignore_index=True)
        )
    rows = np.flatnonzero(keep)
    x = x[rows]
    if len(rows) < 3:
        out.notes.append(f"layer {name}: only {len(rows)} usable rows; nothing to measure")
        return None
    scale = float(np.abs(x).max()) if x.size else 0.0
    if x.size == 0 or float(x.std(axis=0).max()) <= 1e-9 * max(1.0, scale):
        out.notes.append(
            f"layer {name}: the embedding is constant across rows (no variance): neighbours"
            " and clusters are undefined, so the layer is left out"
        )
        return None
    g = groups[rows]
    largest = int(np.bincount(np.unique(g, return_inverse=True)[1].reshape(-1)).max())
    k = min(p.k, len(rows) - largest)
    if k < 1:
        out.notes.append(f"layer {name}: no row has a neighbour from another patient")
        return None
    if k < p.k:
        out.notes.append(
            f"layer {name}: {len(rows)} usable rows allow only k = {k} neighbours (asked {p.k})"
        )
    neigh = nb.knn(
        x, k, groups=g, metric=p.metric, device=inp.device, memory_budget_mb=p.memory_budget_mb
    )
    return LayerResult(name, rows, x, k, neigh)


def _agreement(
    res: LayerResult,
    factors: list[Factor],
    groups: np.ndarray,
    inp: EmbeddingInputs,
    p: EmbeddingCheck.Params,
    out: CheckOutput,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    g = groups[res.rows]
    for f in factors:
        codes = f.codes[res.rows]
        if np.unique(_known(codes)).size < 2:
            out.notes.append(f"layer {res.name}: '{f.name}' has one level among its rows; skipped")
            continue
        agree = nb.agreement(res.neighbours.indices, codes)
        res.agreement[f.name] = agree
        observed = _nanmean(agree)
        null = nb.agreement_null(
            res.neighbours.indices,
            codes,
            p.n_permutations,
            inp.rng(f"knn:{res.name}:{f.name}"),
            device=inp.device,
            memory_budget_mb=p.memory_budget_mb,
        )
        est = bootstrap_ci(
            _lift, agree, codes, groups=g, n_boot=p.n_boot, alpha=p.alpha, seed=inp.seed
        )
        chance = nb.chance_agreement(codes)
        rows.append(
            {
                "test": "knn_lift",
                "layer": res.name,
                "factor": f.name,
                "role": f.role,
                "levels": len(np.unique(_known(codes))),
                "k": res.k,
                "n": int((codes >= 0).sum()),
                "agreement": observed,
                "chance": chance,
                "value": est.value,
                "kappa": _kappa(agree, codes),
                "ci_low": est.ci_low,
                "ci_high": est.ci_high,
                "p_raw": permutation_pvalue(observed, null),
                "null_mean": float(np.nanmean(null)),
            }
        )
    return rows


def _silhouettes(
    res: LayerResult,
    factors: list[Factor],
    groups: np.ndarray,
    strata: np.ndarray,
    inp: EmbeddingInputs,
    p: EmbeddingCheck.Params,
    out: CheckOutput,
) -> list[dict[str, Any]]:
    rng = inp.rng(f"silhouette:{res.name}")
    sub = (
        stratified_subsample(strata[res.rows], p.silhouette_max_samples, rng)
        if strata.size
        else np.arange(min(len(res.rows), p.silhouette_max_samples))
    )
    usable = []
    for f in factors:
        codes = f.codes[res.rows][sub]
        counts = np.bincount(_known(codes)) if (codes >= 0).any() else np.zeros(0)
        if (counts > 0).sum() >= 2 and (counts > 1).any():
            usable.append((f, codes))
    if not usable:
        return []
    results = nb.silhouette_with_null(
        res.x[sub],
        [c for _, c in usable],
        p.silhouette_permutations,
        rng,
        metric=p.metric,
        device=inp.device,
        memory_budget_mb=p.memory_budget_mb,
    )
    g = groups[res.rows][sub]
    rows = []
    for (f, codes), r in zip(usable, results, strict=True):
        est = bootstrap_ci(
            _nanmean, r.per_row, groups=g, n_boot=p.n_boot, alpha=p.alpha, seed=inp.seed
        )
        rows.append(
            {
                "test": "silhouette",
                "layer": res.name,
                "factor": f.name,
                "role": f.role,
                "levels": len(np.unique(_known(codes))),
                "k": None,
                "n": int((codes >= 0).sum()),
                "agreement": None,
                "chance": None,
                "value": r.value,
                "kappa": None,
                "ci_low": est.ci_low,
                "ci_high": est.ci_high,
                "p_raw": permutation_pvalue(r.value, r.null),
                "null_mean": float(np.nanmean(r.null)) if r.null.size else math.nan,
            }
        )
    if len(sub) < len(res.rows):
        out.notes.append(
            f"layer {res.name}: silhouettes on a stratified subsample of {len(sub)} of"
            f" {len(res.rows)} rows"
        )
    return rows


def _adjust(rows: list[dict[str, Any]], out: CheckOutput, p: EmbeddingCheck.Params) -> None:
    """Multiplicity control within each test family; adjusted p goes into the metric."""
    for test in ("knn_lift", "silhouette"):
        family = [r for r in rows if r["test"] == test]
        if not family:
            continue
        adj = adjust_pvalues([r["p_raw"] for r in family], p.p_adjust)
        for r, a in zip(family, adj, strict=True):
            r["p_adjusted"] = float(a)
            out.metrics[f"{test}.{r['layer']}.{r['factor']}"] = Estimate(
                r["value"], r["ci_low"], r["ci_high"], r["n"], float(a)
            )


def _identity(
    layers: dict[str, LayerResult],
    labels: list[Factor],
    nuisance: list[Factor],
    groups: np.ndarray,
    inp: EmbeddingInputs,
    p: EmbeddingCheck.Params,
    out: CheckOutput,
) -> None:
    """Chance-corrected kNN agreement on each nuisance attribute minus that on the label."""
    tests: list[tuple[str, str, Estimate, str, float, float]] = []
    for name, res in layers.items():
        label_ok = [f for f in labels if f.name in res.agreement]
        if not label_ok:
            continue
        g = groups[res.rows]
        # multilabel: compare with the label column the neighbours agree on best
        ref = max(label_ok, key=lambda f: _kappa(res.agreement[f.name], f.codes[res.rows]))
        a_label = (res.agreement[ref.name], ref.codes[res.rows])
        for f in nuisance:
            if f.name not in res.agreement:
                continue
            est = paired_bootstrap_diff(
                _kappa,
                a_label,
                (res.agreement[f.name], f.codes[res.rows]),
                groups=g,
                n_boot=p.n_boot,
                alpha=p.alpha,
                seed=inp.seed,
            )
            tests.append(
                (
                    name,
                    f.name,
                    est,
                    ref.name,
                    _kappa(*a_label),
                    _kappa(res.agreement[f.name], f.codes[res.rows]),
                )
            )
    if not tests:
        return
    raw = [t[2].null_p if t[2].null_p is not None else math.nan for t in tests]
    adj = adjust_pvalues(raw, p.p_adjust)
    table = []
    for (layer, attr, est, ref, k_label, k_attr), a, r in zip(tests, adj, raw, strict=True):
        null_p = None if math.isnan(a) else float(a)
        out.metrics[f"identity_margin.{layer}.{attr}"] = Estimate(
            est.value, est.ci_low, est.ci_high, est.n, null_p
        )
        table.append(
            {
                "layer": layer,
                "attribute": attr,
                "label": ref,
                "kappa_attribute": k_attr,
                "kappa_label": k_label,
                "margin": est.value,
                "ci_low": est.ci_low,
                "ci_high": est.ci_high,
                "p_raw": r,
                "p_adjusted": a,
            }
        )
    out.tables["identity"] = pd.DataFrame(table)


# ----------------------------------------------------------------------------- projections


def _projections(
    res: LayerResult,
    factors: list[Factor],
    pred: Predictions | None,
    strata: np.ndarray,
    inp: EmbeddingInputs,
    p: EmbeddingCheck.Params,
    out: CheckOutput,
) -> None:
    """PCA on every row; t-SNE / UMAP on a stratified subsample; trustworthiness of each."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import trustworthiness

    x = res.x
    n, d = x.shape
    n_comp = min(2, d, n)
    pca = PCA(
        n_components=n_comp,
        svd_solver="randomized" if min(n, d) > 64 else "full",
        random_state=inp.seed,
    )
    with _native(p.native_threads):
        coords = pca.fit_transform(x)
    if n_comp < 2:
        coords = np.column_stack([coords, np.zeros(n)])
    res.pca = coords
    rng = inp.rng(f"projection:{res.name}")
    sub = (
        stratified_subsample(strata[res.rows], p.projection_max_samples, rng)
        if strata.size
        else np.arange(min(n, p.projection_max_samples))
    )
    maps: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if "pca" in p.projections:
        maps["pca"] = (np.arange(n), coords)
    umap_error = None
    for method in ("tsne", "umap"):
        if method not in p.projections:
            continue
        if d < 2:
            out.notes.append(
                f"layer {res.name}: a {d}-d embedding has no 2-D map to find; {method} skipped"
                " (the PCA map shows the values themselves)"
            )
            maps.setdefault("pca", (np.arange(n), coords))
            continue
        if len(sub) < 10:
            out.notes.append(f"layer {res.name}: too few rows for {method} ({len(sub)})")
            continue
        if method == "umap":
            umap_error = _umap_import_error()
            if umap_error is not None:
                maps.setdefault("pca", (np.arange(n), coords))  # the fallback map
                continue
        maps[method] = (sub, _embed_2d(method, x[sub], inp.seed, p.native_threads))
    if umap_error is not None:
        drawn = ", ".join(_MAP_NAMES[m] for m in maps)
        out.notes.append(f"UMAP unavailable ({umap_error}); maps drawn: {drawn}")
    # trustworthiness is O(n^2): every map is scored on the same subsample
    n_t = min(res.k, (len(sub) - 1) // 2 - 1)
    for method, (rows, y) in maps.items():
        y_sub = y[sub] if method == "pca" else y
        trust = math.nan
        if n_t >= 1:
            with _native(p.native_threads):
                trust = float(trustworthiness(x[sub], y_sub, n_neighbors=n_t, metric=p.metric))
        out.metrics[f"trustworthiness.{res.name}.{method}"] = trust
        title = f"{res.name}: {_MAP_NAMES[method]} (trustworthiness {trust:.2f}, {len(rows)} rows"
        if method == "pca":
            title += f", {pca.explained_variance_ratio_.sum():.0%} of variance"
        out.figures[f"projection_{res.name}_{method}"] = _projection_figure(
            title + ")", y, res.rows[rows], factors, pred
        )


_MAP_NAMES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}


def _umap_import_error() -> str | None:
    """None when umap-learn imports; otherwise why not (it is optional, and its first
    import compiles with numba, which can fail)."""
    try:
        import umap  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _embed_2d(method: str, x: np.ndarray, seed: int, threads: int | None) -> np.ndarray:
    """2-D t-SNE or UMAP coordinates of the rows of ``x`` (at least two columns)."""
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, (len(x) - 1) / 3.0))
        with warnings.catch_warnings(), _native(threads):
            warnings.simplefilter("ignore")
            tsne = TSNE(2, perplexity=perplexity, init="pca", max_iter=500, random_state=seed)
            return tsne.fit_transform(x)
    import umap

    with warnings.catch_warnings(), _native(threads):
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_neighbors=min(15, len(x) - 1), random_state=seed, n_jobs=1)
        return np.asarray(reducer.fit_transform(x))


def _colour_panels(
    factors: list[Factor], pred: Predictions | None
) -> list[tuple[str, np.ndarray, list[str] | None]]:
    """(title, values, level names or None for continuous) for every colouring."""
    panels: list[tuple[str, np.ndarray, list[str] | None]] = []
    for f in factors:
        if f.role == "label":
            panels.append((f.name, f.codes, f.levels))
    if pred is not None:
        names = sorted(set(pred.names.tolist()))
        lookup = {v: i for i, v in enumerate(names)}
        panels.append(("prediction", np.array([lookup[v] for v in pred.names]), names))
        panels.append(("correct", pred.correct.astype(np.int64), ["wrong", "right"]))
    for f in factors:
        if f.role == "attribute":
            if f.values is not None:
                panels.append((f.name, f.values, None))
            else:
                panels.append((f.name, f.codes, f.levels))
    return panels


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _projection_figure(
    title: str,
    coords: np.ndarray,
    rows: np.ndarray,
    factors: list[Factor],
    pred: Predictions | None,
) -> Figure:
    panels = _colour_panels(factors, pred)
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig = _figure(3.4 * cols, 3.1 * nrows)
    fig.suptitle(title, fontsize=10)
    size = 6 if len(rows) < 2000 else 2
    for i, (name, values, levels) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, i + 1)
        v = np.asarray(values)[rows]
        _scatter(ax, coords, v, levels, size)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def _scatter(
    ax: Axes, xy: np.ndarray, v: np.ndarray, levels: list[str] | None, size: float
) -> None:
    if levels is None:
        known = np.isfinite(v.astype(float))
        ax.scatter(xy[~known, 0], xy[~known, 1], s=size, c="lightgrey", linewidths=0)
        sc = ax.scatter(
            xy[known, 0], xy[known, 1], s=size, c=v[known], cmap="viridis", linewidths=0
        )
        ax.figure.colorbar(sc, ax=ax, shrink=0.7)
        return
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    unknown = v < 0
    if unknown.any():
        ax.scatter(xy[unknown, 0], xy[unknown, 1], s=size, c="lightgrey", linewidths=0, label="?")
    for j, name in enumerate(levels[:10]):
        sel = v == j
        ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=cmap(j), linewidths=0, label=name)
    if len(levels) > 10:
        sel = v >= 10
        ax.scatter(xy[sel, 0], xy[sel, 1], s=size, c="black", linewidths=0, label="other")
    ax.legend(fontsize=6, markerscale=2, loc="best", frameon=False)


def _agreement_figure(table: pd.DataFrame) -> Figure:
    knn = table[table["test"] == "knn_lift"]
    layers = list(dict.fromkeys(knn["layer"]))
    fig = _figure(max(4.0, 2.8 * len(layers)), 3.2)
    fig.suptitle(
        "kNN agreement: lift over chance (sum p²), 95% CI; * adjusted p <= 0.05", fontsize=9
    )
    for i, layer in enumerate(layers):
        ax = fig.add_subplot(1, len(layers), i + 1)
        part = knn[knn["layer"] == layer]
        pos = np.arange(len(part))
        val = part["value"].to_numpy(dtype=float)
        lo = part["ci_low"].to_numpy(dtype=float)
        hi = part["ci_high"].to_numpy(dtype=float)
        # a percentile interval need not contain the point estimate
        err = np.clip(np.vstack([np.nan_to_num(val - lo), np.nan_to_num(hi - val)]), 0, None)
        colours = ["tab:blue" if r == "label" else "tab:orange" for r in part["role"]]
        ax.bar(pos, val, yerr=err, color=colours, capsize=2)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        names = [
            f"{f}*" if (pa := part["p_adjusted"].iloc[j]) == pa and pa <= 0.05 else f
            for j, f in enumerate(part["factor"])
        ]
        ax.set_xticks(pos, names, rotation=45, ha="right", fontsize=7)
        ax.set_title(layer, fontsize=9)
    return fig


# ----------------------------------------------------------------------------- clusters


def _clusters(
    res: LayerResult,
    factors: list[Factor],
    nuisance: list[Factor],
    strata: np.ndarray,
    inp: EmbeddingInputs,
    p: EmbeddingCheck.Params,
    out: CheckOutput,
) -> None:
    """Cluster, then measure each cluster's purity in label and every attribute."""
    rng = inp.rng(f"clusters:{res.name}")
    n = len(res.rows)
    fit_rows = (
        stratified_subsample(strata[res.rows], p.cluster_max_samples, rng)
        if strata.size
        else np.arange(min(n, p.cluster_max_samples))
    )
    # k-means and HDBSCAN measure Euclidean distance: on unit rows it orders pairs as
    # the cosine distance does
    x_all = _unit_rows(res.x) if p.metric == "cosine" else res.x
    x_fit = x_all[fit_rows]
    min_size = max(5, int(math.ceil(p.min_cluster_share * n)))
    labels = np.full(n, -1, dtype=np.int64)
    sil = math.nan
    if p.clustering == "kmeans":
        km, sil = _kmeans_by_silhouette(x_fit, p, inp, rng)
        if km is None:
            out.notes.append(f"layer {res.name}: too few distinct rows to cluster")
            return
        with _native(p.native_threads):
            labels = km.predict(x_all).astype(np.int64)
    else:
        from sklearn.cluster import HDBSCAN

        hd = HDBSCAN(min_cluster_size=min(min_size, max(2, len(fit_rows) // 2)), copy=True)
        with _native(p.native_threads):
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
    res.clusters = labels
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
            overall = float(np.mean(_known(codes) == top))
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
        prev = out.tables.get("clusters")
        frame = pd.DataFrame(table)
        out.tables["clusters"] = (
            frame if prev is None else pd.concat([prev, frame], ignore_index=True)
        )
    if p.clustering == "hdbscan" and len(fit_rows) < n:
        out.notes.append(
            f"layer {res.name}: HDBSCAN clusters the {len(fit_rows)}-row subsample only"
        )


def _kmeans_by_silhouette(
    x: np.ndarray, p: EmbeddingCheck.Params, inp: EmbeddingInputs, rng: np.random.Generator
) -> tuple[Any, float]:
    from sklearn.cluster import KMeans

    distinct = len(np.unique(np.round(x, 12), axis=0))
    best, best_s = None, -math.inf
    sil_rows = np.sort(rng.choice(len(x), min(len(x), p.silhouette_max_samples), replace=False))
    for k in range(2, min(p.max_clusters, distinct, len(x) - 1) + 1):
        with warnings.catch_warnings(), _native(p.native_threads):
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


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------- exemplars


def _exemplars(
    layers: dict[str, LayerResult],
    factors: list[Factor],
    nuisance: list[Factor],
    pred: Predictions | None,
    groups: np.ndarray,
    inp: EmbeddingInputs,
    p: EmbeddingCheck.Params,
    out: CheckOutput,
) -> None:
    """Nearest reference cases for named cases, the most confident errors and a few random
    cases."""
    if not p.exemplar_ids and p.exemplar_errors + p.exemplar_random == 0:
        return
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
        return
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
    fig = _figure(2.1 * cols, 3.4 + 0.11 * max(len(w) for w in wrapped))
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


# ----------------------------------------------------------------------------- alignment


def _alignment(
    layers: dict[str, LayerResult],
    groups: np.ndarray,
    inp: EmbeddingInputs,
    p: EmbeddingCheck.Params,
    out: CheckOutput,
) -> None:
    """Matched-pair retrieval between equal-width modality embeddings, and the modality gap."""
    if p.alignment == "never":
        return
    if p.alignment == "auto" and inp.shared_space is False:
        out.notes.append(
            "alignment: the model has no shared projection space (built-in fusion is not"
            " 'projection'); set alignment: always to measure it anyway"
        )
        return
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
            na, nbv = _unit_rows(xa), _unit_rows(xb)

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


# ----------------------------------------------------------------------------- ordinal


def _ordinal_values(
    inp: EmbeddingInputs, p: EmbeddingCheck.Params, notes: list[str]
) -> np.ndarray | None:
    attrs = inp.attributes
    name = p.ordinal
    if attrs is None or name not in attrs.columns:
        known = [] if attrs is None else list(attrs.columns)
        notes.append(f"ordinal: '{name}' is not a configured attribute (known: {known})")
        return None
    raw = attrs[name].to_numpy()
    if p.ordinal_levels:
        lookup = {str(v): float(i) for i, v in enumerate(p.ordinal_levels)}
        vals = np.array([lookup.get(str(v), np.nan) if not _is_missing(v) else np.nan for v in raw])
        unknown = sorted({str(v) for v in raw if not _is_missing(v) and str(v) not in lookup})
        if unknown:
            notes.append(f"ordinal: values {unknown[:5]} are not in ordinal_levels; left out")
        return vals
    vals = pd.to_numeric(pd.Series(raw), errors="coerce").to_numpy(dtype=float)
    text_vals = [v for v in raw if not _is_missing(v)]
    if np.isfinite(vals).sum() < len(text_vals):
        notes.append(
            f"ordinal: '{name}' is not numeric; give params.ordinal_levels to order its levels"
        )
        return None
    return vals


def _ordinal(
    layers: dict[str, LayerResult],
    groups: np.ndarray,
    inp: EmbeddingInputs,
    p: EmbeddingCheck.Params,
    out: CheckOutput,
) -> None:
    """Spearman of the ordinal value with PC1 and with a cross-fitted ridge direction."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold, cross_val_predict

    vals = _ordinal_values(inp, p, out.notes)
    if vals is None:
        return
    fig_data = []
    for name, res in layers.items():
        v = vals[res.rows]
        ok = np.isfinite(v)
        if ok.sum() < 10 or np.unique(v[ok]).size < 2:
            out.notes.append(f"ordinal: layer {name} has too few rows with distinct values")
            continue
        x, y, g = res.x[ok], v[ok], groups[res.rows][ok]
        boot = {"groups": g, "n_boot": p.n_boot, "alpha": p.alpha, "seed": inp.seed}
        rng = inp.rng(f"ordinal:{name}")
        pc1 = res.pca[ok, 0] if res.pca is not None else x[:, 0]
        sign = 1.0 if (_spearman(pc1, y) or 0) >= 0 else -1.0
        pc1 = sign * pc1
        n_splits = min(5, np.unique(g).size)
        fitted = None
        if n_splits >= 2:
            model = RidgeCV(alphas=np.logspace(-3, 3, 13))
            with _native(p.native_threads):
                fitted = cross_val_predict(model, x, y, groups=g, cv=GroupKFold(n_splits))
        for kind, score in (("pc1", pc1), ("fitted", fitted)):
            if score is None:
                continue
            rho = _spearman(score, y)
            null = _spearman_null(score, y, p.n_permutations, rng)
            est = bootstrap_ci(_spearman, score, y, **boot)
            # PC1's sign was set from the data, so only |rho| is evidence: two-sided. The
            # fitted direction is evidence only when it ranks severity the right way round;
            # out-of-fold ridge predictions on unrelated values lean negative (the shuffled
            # null does not), so a two-sided test would flag that bias: one-sided, greater.
            if rho != rho:
                p_value = math.nan
            elif kind == "pc1":
                p_value = permutation_pvalue(abs(rho), np.abs(null))
            else:
                p_value = permutation_pvalue(rho, null, "greater")
            out.metrics[f"ordinal.{name}.spearman_{kind}"] = Estimate(
                rho, est.ci_low, est.ci_high, len(y), p_value
            )
        if fitted is not None:
            fig_data.append((name, fitted, y))
    if fig_data:
        fig = _figure(3.2 * len(fig_data), 3.0)
        fig.suptitle(f"position along a cross-fitted direction vs '{p.ordinal}'", fontsize=9)
        for i, (name, score, y) in enumerate(fig_data):
            ax = fig.add_subplot(1, len(fig_data), i + 1)
            ax.scatter(y, score, s=5, alpha=0.6)
            ax.set_xlabel(p.ordinal or "", fontsize=8)
            ax.set_title(name, fontsize=9)
        out.figures["ordinal"] = fig
