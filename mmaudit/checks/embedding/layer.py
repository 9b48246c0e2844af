"""One captured layer made ready for measuring: pooled to (N, D), rows without the modality
or with a non-finite embedding left out (and named), constant layers refused, and the k
nearest neighbours from other patients found once for every later stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mmaudit.checks.embedding.output import OutputPart
from mmaudit.methods import neighbours as nb

if TYPE_CHECKING:
    from mmaudit.checks.embedding.check import EmbeddingCheck
    from mmaudit.checks.embedding.inputs import EmbeddingInputs


@dataclass(frozen=True)
class LayerResult:
    """What one layer's analysis keeps for the later cross-layer steps.

    ``rows`` are the dataset rows analysed, ``x`` their pooled embeddings; ``agreement``
    (per-row kNN agreement by factor), ``pca`` (2-D coordinates) and ``clusters`` (cluster
    per row, -1 none) are filled in, with ``dataclasses.replace``, by the stages that
    compute them."""

    name: str
    rows: np.ndarray
    x: np.ndarray
    k: int
    neighbours: nb.Neighbours
    agreement: dict[str, np.ndarray] = field(default_factory=dict)
    pca: np.ndarray | None = None
    clusters: np.ndarray | None = None


@dataclass(frozen=True)
class PreparedLayer:
    """The layer ready to measure (None: left out, the notes say why) and its output."""

    layer: LayerResult | None
    part: OutputPart


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


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def prepare_layer(
    name: str,
    raw: np.ndarray,
    inp: EmbeddingInputs,
    groups: np.ndarray,
    p: EmbeddingCheck.Params,
) -> PreparedLayer:
    """Pool, drop absent-modality and non-finite rows, refuse constant embeddings, kNN."""
    out = OutputPart()
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
        out.tables["excluded_rows"] = pd.DataFrame(
            {"layer": name, "id": [str(i) for i in inp.ids[dropped]], "reason": reason[dropped]}
        )
    rows = np.flatnonzero(keep)
    x = x[rows]
    if len(rows) < 3:
        out.notes.append(f"layer {name}: only {len(rows)} usable rows; nothing to measure")
        return PreparedLayer(None, out)
    scale = float(np.abs(x).max()) if x.size else 0.0
    if x.size == 0 or float(x.std(axis=0).max()) <= 1e-9 * max(1.0, scale):
        out.notes.append(
            f"layer {name}: the embedding is constant across rows (no variance): neighbours"
            " and clusters are undefined, so the layer is left out"
        )
        return PreparedLayer(None, out)
    g = groups[rows]
    largest = int(np.bincount(np.unique(g, return_inverse=True)[1].reshape(-1)).max())
    k = min(p.k, len(rows) - largest)
    if k < 1:
        out.notes.append(f"layer {name}: no row has a neighbour from another patient")
        return PreparedLayer(None, out)
    if k < p.k:
        out.notes.append(
            f"layer {name}: {len(rows)} usable rows allow only k = {k} neighbours (asked {p.k})"
        )
    neigh = nb.knn(
        x, k, groups=g, metric=p.metric, device=inp.device, memory_budget_mb=p.memory_budget_mb
    )
    return PreparedLayer(LayerResult(name, rows, x, k, neigh), out)
