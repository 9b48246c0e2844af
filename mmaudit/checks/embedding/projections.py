"""2-D maps of a layer for people to look at, never measured on: PCA on every row, t-SNE /
UMAP (PCA when UMAP fails to import) on a stratified subsample, each scored by its
trustworthiness and drawn coloured by label, prediction, correctness and attributes."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mmaudit.checks.embedding.budget import native_threads, stratified_subsample
from mmaudit.checks.embedding.canvas import new_figure
from mmaudit.checks.embedding.output import OutputPart

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from mmaudit.checks.embedding.check import EmbeddingCheck
    from mmaudit.checks.embedding.factors import Factor
    from mmaudit.checks.embedding.inputs import EmbeddingInputs
    from mmaudit.checks.embedding.layer import LayerResult
    from mmaudit.checks.embedding.predictions import Predictions

_MAP_NAMES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}


@dataclass(frozen=True)
class Projections:
    """The layer's PCA coordinates (N, 2) for the per-sample table and the ordinal stage,
    and the maps' metrics, figures and notes."""

    pca: np.ndarray
    part: OutputPart


def projections(
    res: LayerResult,
    factors: list[Factor],
    pred: Predictions | None,
    strata: np.ndarray,
    inp: EmbeddingInputs,
    p: EmbeddingCheck.Params,
) -> Projections:
    """PCA on every row; t-SNE / UMAP on a stratified subsample; trustworthiness of each."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import trustworthiness

    out = OutputPart()
    x = res.x
    n, d = x.shape
    n_comp = min(2, d, n)
    pca = PCA(
        n_components=n_comp,
        svd_solver="randomized" if min(n, d) > 64 else "full",
        random_state=inp.seed,
    )
    with native_threads(p.native_threads):
        coords = pca.fit_transform(x)
    if n_comp < 2:
        coords = np.column_stack([coords, np.zeros(n)])
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
            with native_threads(p.native_threads):
                trust = float(trustworthiness(x[sub], y_sub, n_neighbors=n_t, metric=p.metric))
        out.metrics[f"trustworthiness.{res.name}.{method}"] = trust
        title = f"{res.name}: {_MAP_NAMES[method]} (trustworthiness {trust:.2f}, {len(rows)} rows"
        if method == "pca":
            title += f", {pca.explained_variance_ratio_.sum():.0%} of variance"
        out.figures[f"projection_{res.name}_{method}"] = _projection_figure(
            title + ")", y, res.rows[rows], factors, pred
        )
    return Projections(coords, out)


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
        with warnings.catch_warnings(), native_threads(threads):
            warnings.simplefilter("ignore")
            tsne = TSNE(2, perplexity=perplexity, init="pca", max_iter=500, random_state=seed)
            return tsne.fit_transform(x)
    import umap

    with warnings.catch_warnings(), native_threads(threads):
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
    fig = new_figure(3.4 * cols, 3.1 * nrows)
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
