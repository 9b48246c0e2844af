"""Neighbourhoods in an embedding space, computed in blocks on the device.

What lives here and why:

* ``knn`` -- the exact k nearest neighbours of every row. Distances are computed with
  ``torch.cdist`` one (query block x reference block) at a time, so no N x N matrix is
  ever held beyond a memory budget; a running top-k is merged block by block. The
  fast fp32 pass only proposes candidates: the best ``k + margin`` are re-scored in
  float64 and sorted by (distance, index), so the result equals a float64 brute-force
  computation (``brute_force_knn``, the test oracle) with ties broken by the lower index.
* ``exclude`` groups: rows of one patient are not each other's neighbours (several
  studies of one patient would otherwise agree on everything trivially).
* ``agreement`` / ``agreement_null`` -- the share of a row's neighbours that share its
  label (or attribute) and its permutation null (labels shuffled, graph fixed).
* ``silhouette_with_null`` -- per-row silhouette values (equal to
  ``sklearn.metrics.silhouette_samples``) for several labelings at once, plus their
  permutation nulls, from the same blocked distances: each distance block is multiplied
  by the one-hot matrices of every labeling and every permutation.
* ``matched_ranks`` -- cross-modal retrieval: where the matching row of ``b`` ranks
  among all rows of ``b`` for each row of ``a`` (ties counted separately, so recall@k
  can be its exact expectation under random tie-breaking).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Metric = Literal["euclidean", "cosine"]

__all__ = [
    "Metric",
    "Neighbours",
    "agreement",
    "agreement_null",
    "block_shape",
    "brute_force_knn",
    "chance_agreement",
    "group_codes",
    "knn",
    "matched_ranks",
    "pairwise_distances",
    "recall_at",
    "SilhouetteResult",
    "silhouette_with_null",
]

# bytes budgeted per element of a distance block: the fp32 distances, the exclusion
# mask, and the top-k merge's working copies
_BYTES_PER_ELEMENT = 16
_MIN_ELEMENTS = 4096
# bytes per (permutation, row, neighbour) entry of the agreement null besides the
# gathered codes (1 B for int8, 4 B for int32): the comparison and, on CUDA, the masked
# comparison (bool each)
_NULL_BOOL_BYTES_PER_ENTRY = 2


@dataclass(frozen=True)
class Neighbours:
    """The k nearest reference rows of each query row, nearest first.

    ``indices`` (N, k) int64 is -1 and ``distances`` (N, k) float64 is inf where a row
    has fewer than k admissible neighbours. ``block`` is the largest (query rows,
    reference rows) distance block that was held at once.
    """

    indices: np.ndarray
    distances: np.ndarray
    block: tuple[int, int]


def _device(device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


def _exact_device(device: torch.device) -> torch.device:
    # MPS has no float64
    return torch.device("cpu") if device.type == "mps" else device


def _as_tensor(
    x: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    t = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
    if t.dim() != 2:
        raise ValueError(f"embeddings must be 2-D (rows, features), got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=dtype)


def _normalise(t: torch.Tensor) -> torch.Tensor:
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _centred(
    x: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Rows minus their column mean, taken in float64, then as ``dtype`` on ``device``.

    Euclidean distances do not change; the fp32 matrix-product path of ``torch.cdist``
    (|a|^2 + |b|^2 - 2ab) loses everything to cancellation when all rows share a large
    offset (1e3 with a spread of 0.1).
    """
    t = _as_tensor(x, _exact_device(device), torch.float64)
    return (t - t.mean(0)).to(device=device, dtype=dtype)


def pairwise_distances(a: torch.Tensor, b: torch.Tensor, metric: Metric) -> torch.Tensor:
    """Distances between the rows of ``a`` and ``b``: Euclidean, or cosine (1 - cos).

    For cosine the rows must already be L2-normalised (zero rows stay zero: cos = 0).
    """
    if metric == "euclidean":
        return torch.cdist(a, b)
    return (1.0 - a @ b.T).clamp_min(0.0)


def block_shape(
    n_query: int, n_reference: int, extra_columns: int, memory_budget_mb: float
) -> tuple[int, int]:
    """(query rows, reference rows) of one distance block under the budget.

    The whole reference set is used per block while at least 64 query rows fit beside
    it; otherwise the references are split too. ``extra_columns`` are columns held next
    to each block (the running top-k, or one-hot products).
    """
    elements = max(int(memory_budget_mb * 2**20) // _BYTES_PER_ELEMENT, _MIN_ELEMENTS)
    if (n_reference + extra_columns) * 64 <= elements:
        rb = n_reference
    else:
        rb = max(1, elements // 64 - extra_columns)
    rb = max(1, min(rb, n_reference))
    qb = max(1, min(n_query, elements // (rb + extra_columns)))
    return qb, rb


def knn(
    x: np.ndarray | torch.Tensor,
    k: int,
    *,
    reference: np.ndarray | torch.Tensor | None = None,
    groups: np.ndarray | None = None,
    reference_groups: np.ndarray | None = None,
    metric: Metric = "euclidean",
    device: torch.device | str | None = None,
    memory_budget_mb: float = 256.0,
    margin: int | None = None,
) -> Neighbours:
    """Exact k nearest neighbours of each row of ``x`` among ``reference`` (default: ``x``).

    When ``reference`` is None, a row is never its own neighbour, nor a neighbour of a
    row with the same ``groups`` code (e.g. the same patient). With a separate
    reference set, rows are excluded only when both ``groups`` and ``reference_groups``
    are given and equal. Ties are broken by the lower reference index.

    Memory: distance blocks of at most ``memory_budget_mb`` (see ``block_shape``); the
    fp32 pass keeps ``k + margin`` candidates per row (``margin`` defaults to
    ``max(8, k)``), which are re-scored in float64. For Euclidean distance the fp32
    pass runs on rows centred in float64 (a shared offset of 1e3 would otherwise swamp
    a spread of 0.1 in fp32 and scramble the candidates).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    dev = _device(device)
    exact_dev = _exact_device(dev)
    self_query = reference is None
    xq64 = _as_tensor(x, exact_dev, torch.float64)
    xr64 = xq64 if self_query else _as_tensor(reference, exact_dev, torch.float64)  # type: ignore[arg-type]
    if xq64.shape[1] != xr64.shape[1]:
        raise ValueError(f"queries have {xq64.shape[1]} features, references {xr64.shape[1]}")
    nq, nr = xq64.shape[0], xr64.shape[0]
    if self_query:
        gq = np.arange(nq) if groups is None else group_codes(groups, nq)
        gr = gq
    elif groups is not None and reference_groups is not None:
        both = group_codes(np.concatenate([np.asarray(groups), np.asarray(reference_groups)]), None)
        gq, gr = both[:nq], both[nq:]
    else:
        gq = gr = None
    kc = min(nr, k + (max(8, k) if margin is None else max(0, margin)))
    # the fp32 copies that propose candidates: unit rows for cosine; for Euclidean, rows
    # centred in float64, since a large shared offset cancels catastrophically in fp32
    if metric == "euclidean":
        shift = xr64.mean(0)
        xq = (xq64 - shift).to(device=dev, dtype=torch.float32)
        xr = xq if self_query else (xr64 - shift).to(device=dev, dtype=torch.float32)
    else:
        xq = _normalise(xq64.to(device=dev, dtype=torch.float32))
        xr = xq if self_query else _normalise(xr64.to(device=dev, dtype=torch.float32))
    gq_t = torch.as_tensor(gq, device=dev) if gq is not None else None
    gr_t = torch.as_tensor(gr, device=dev) if gr is not None else None
    qb, rb = block_shape(nq, nr, kc, memory_budget_mb)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    out_d = np.full((nq, k), np.inf, dtype=np.float64)
    # the float64 candidate vectors of the refinement, with one working copy, fit the budget
    refine_rows = max(1, int(memory_budget_mb * 2**20) // (kc * xq.shape[1] * 8 * 2))
    # cosine rows are unit length, so ranking by squared Euclidean distance is the same
    ref_sq = (xr * xr).sum(1)
    with torch.no_grad():
        for q0 in range(0, nq, qb):
            q1 = min(nq, q0 + qb)
            best_d: torch.Tensor | None = None
            best_i: torch.Tensor | None = None
            for r0 in range(0, nr, rb):
                r1 = min(nr, r0 + rb)
                d = _coarse_scores(xq[q0:q1], xr[r0:r1], ref_sq[r0:r1])
                if gq_t is not None and gr_t is not None:
                    d.masked_fill_(gq_t[q0:q1, None] == gr_t[None, r0:r1], math.inf)
                top = torch.topk(d, min(kc, r1 - r0), dim=1, largest=False)
                blk_d, blk_i = top.values, top.indices + r0
                if best_d is None or best_i is None:
                    best_d, best_i = blk_d, blk_i
                    continue
                cat_d = torch.cat([best_d, blk_d], dim=1)
                cat_i = torch.cat([best_i, blk_i], dim=1)
                top = torch.topk(cat_d, min(kc, cat_d.shape[1]), dim=1, largest=False)
                best_d, best_i = top.values, torch.gather(cat_i, 1, top.indices)
            assert best_d is not None and best_i is not None
            invalid = torch.isinf(best_d)
            for s0 in range(0, q1 - q0, refine_rows):
                s1 = min(q1 - q0, s0 + refine_rows)
                i_k, d_k = _refine(
                    xq64[q0 + s0 : q0 + s1], xr64, best_i[s0:s1], invalid[s0:s1], metric, k
                )
                out_i[q0 + s0 : q0 + s1], out_d[q0 + s0 : q0 + s1] = i_k, d_k
    return Neighbours(out_i, out_d, (qb, rb))


def _coarse_scores(q: torch.Tensor, r: torch.Tensor, r_sq: torch.Tensor) -> torch.Tensor:
    """Squared distance minus the query's squared norm: the per-row ranking of the squared
    Euclidean distance, from one matrix product (rounding is undone by ``_refine``)."""
    return torch.addmm(r_sq[None, :], q, r.T, beta=1.0, alpha=-2.0)


def _refine(
    q: torch.Tensor,
    ref: torch.Tensor,
    cand: torch.Tensor,
    invalid: torch.Tensor,
    metric: Metric,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 distances to the candidates, sorted by (distance, index); first k."""
    cand = cand.to(q.device)
    invalid = invalid.to(q.device)
    vec = ref[cand.clamp_min(0)]  # (b, kc, d)
    if metric == "euclidean":
        vec.sub_(q[:, None, :])
        d = vec.mul_(vec).sum(-1).sqrt()
    else:
        qn = q.norm(dim=1, keepdim=True)
        vn = vec.norm(dim=2)
        dots = (vec * q[:, None, :]).sum(-1)
        denom = qn * vn
        cos = torch.where(denom > 0, dots / denom.clamp_min(1e-300), torch.zeros_like(dots))
        d = (1.0 - cos).clamp_min(0.0)
    d = d.masked_fill(invalid, math.inf)
    sort_key = cand.masked_fill(invalid, ref.shape[0])
    by_index = torch.argsort(sort_key, dim=1, stable=True)
    d, sort_key = torch.gather(d, 1, by_index), torch.gather(sort_key, 1, by_index)
    by_dist = torch.argsort(d, dim=1, stable=True)[:, :k]
    d, sort_key = torch.gather(d, 1, by_dist), torch.gather(sort_key, 1, by_dist)
    sort_key = sort_key.masked_fill(torch.isinf(d), -1)
    out_i = np.full((q.shape[0], k), -1, dtype=np.int64)
    out_d = np.full((q.shape[0], k), np.inf)
    out_i[:, : sort_key.shape[1]] = sort_key.cpu().numpy()
    out_d[:, : d.shape[1]] = d.cpu().numpy()
    return out_i, out_d


def group_codes(groups: np.ndarray, n: int | None) -> np.ndarray:
    """Integer codes 0..G-1 for arbitrary group labels (patient ids), compared as text."""
    arr = np.asarray(groups)
    if n is not None and arr.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {arr.shape}")
    _, inv = np.unique(arr.astype(str), return_inverse=True)
    return inv.reshape(-1).astype(np.int64)


def brute_force_knn(
    x: np.ndarray,
    k: int,
    *,
    reference: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    reference_groups: np.ndarray | None = None,
    metric: Metric = "euclidean",
) -> Neighbours:
    """The full float64 distance matrix, sorted by (distance, index): the oracle for ``knn``."""
    xq = np.asarray(x, dtype=np.float64)
    xr = xq if reference is None else np.asarray(reference, dtype=np.float64)
    if metric == "euclidean":
        d = np.sqrt(((xq[:, None, :] - xr[None, :, :]) ** 2).sum(-1))
    else:
        nq = np.linalg.norm(xq, axis=1)[:, None]
        nr = np.linalg.norm(xr, axis=1)[None, :]
        denom = nq * nr
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.where(denom > 0, (xq @ xr.T) / denom, 0.0)
        d = np.maximum(1.0 - cos, 0.0)
    if reference is None:
        g = np.arange(len(xq)) if groups is None else group_codes(groups, len(xq))
        d[g[:, None] == g[None, :]] = np.inf
    elif groups is not None and reference_groups is not None:
        both = group_codes(np.concatenate([np.asarray(groups), np.asarray(reference_groups)]), None)
        d[both[: len(xq), None] == both[None, len(xq) :]] = np.inf
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    dist = np.take_along_axis(d, order, axis=1)
    idx = np.where(np.isinf(dist), -1, order)
    pad = k - idx.shape[1]
    if pad > 0:
        idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
        dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
    return Neighbours(idx.astype(np.int64), dist, (len(xq), len(xr)))


# --------------------------------------------------------------------- agreement


def agreement(indices: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per row, the share of its neighbours with the same code.

    ``codes`` are integer levels with -1 for unknown. A row with an unknown code, or
    with no neighbour of known code, gets NaN; neighbours of unknown code (and -1
    neighbour slots) are left out of the row's denominator.
    """
    codes = np.asarray(codes, dtype=np.int64)
    valid_slot = indices >= 0
    neigh = np.where(valid_slot, codes[np.clip(indices, 0, None)], -1)
    known = neigh >= 0
    same = (neigh == codes[:, None]) & known
    den = known.sum(1)
    out = np.full(len(codes), np.nan)
    ok = (codes >= 0) & (den > 0)
    out[ok] = same[ok].sum(1) / den[ok]
    return out


def chance_agreement(codes: np.ndarray) -> float:
    """Sum over levels of p^2: the agreement expected when neighbours ignore the codes."""
    c = np.asarray(codes)
    c = c[c >= 0]
    if c.size == 0:
        return math.nan
    p = np.bincount(c) / c.size
    return float(np.sum(p**2))


def agreement_null(
    indices: np.ndarray,
    codes: np.ndarray,
    n_permutations: int,
    rng: np.random.Generator,
    *,
    device: torch.device | str | None = None,
    memory_budget_mb: float = 64.0,
) -> np.ndarray:
    """Mean agreement (over rows with a value) for ``n_permutations`` shuffles of the codes.

    The neighbour graph stays fixed; the known codes are permuted among the rows that
    have one (unknown stays unknown), so the level counts, the chance level and which
    neighbour slots count are those of the data: the mean agreement is a fixed weighted
    sum over rows (weight 1 / (rows with a value x the row's counted neighbours)) of
    each row's same-code neighbour count. Permutations go in chunks whose
    (permutation x row x neighbour) working arrays fit ``memory_budget_mb``, with small
    integer codes; on a CUDA ``device`` with torch, elsewhere with numpy (faster than
    torch on a CPU).
    """
    codes = np.asarray(codes, dtype=np.int64)
    n, k = indices.shape
    safe = np.clip(indices, 0, None)
    known = codes >= 0
    counted = (indices >= 0) & known[safe] & known[:, None]
    den = counted.sum(1)
    rows = int((den > 0).sum())
    if rows == 0 or n_permutations == 0:
        return np.full(n_permutations, np.nan)
    weight = np.where(den > 0, 1.0 / (np.maximum(den, 1) * rows), 0.0)
    have = np.flatnonzero(known)
    small = codes.astype(np.int8 if codes.max() < 127 else np.int32)
    per_entry = small.itemsize + _NULL_BOOL_BYTES_PER_ENTRY
    max_elements = int(memory_budget_mb * 2**20) // per_entry
    chunk = max(1, max_elements // max(1, n * k))
    dev = _device(device)
    on_device = dev.type == "cuda"
    if on_device:
        safe_t = torch.as_tensor(safe, device=dev)
        counted_t = torch.as_tensor(counted, device=dev)
        weight_t = torch.as_tensor(weight, device=dev)
    out = np.empty(n_permutations)
    for p0 in range(0, n_permutations, chunk):
        p1 = min(n_permutations, p0 + chunk)
        perm = np.tile(small, (p1 - p0, 1))
        perm[:, have] = rng.permuted(perm[:, have], axis=1)
        if on_device:
            with torch.no_grad():
                c = torch.as_tensor(perm, device=dev)
                same = (c[:, :, None] == c[:, safe_t]) & counted_t
                counts = same.sum(2, dtype=torch.int32).double()
                out[p0:p1] = (counts @ weight_t).cpu().numpy()
        else:
            same = perm[:, :, None] == np.take(perm, safe, axis=1)
            same &= counted
            out[p0:p1] = same.sum(2, dtype=np.int32) @ weight
    return out


# --------------------------------------------------------------------- silhouette


@dataclass(frozen=True)
class SilhouetteResult:
    """Per-row silhouette values (NaN for rows with an unknown code) and the null means."""

    per_row: np.ndarray
    null: np.ndarray

    @property
    def value(self) -> float:
        ok = ~np.isnan(self.per_row)
        return float(self.per_row[ok].mean()) if ok.any() else math.nan


def silhouette_with_null(
    x: np.ndarray | torch.Tensor,
    labelings: list[np.ndarray],
    n_permutations: int,
    rng: np.random.Generator,
    *,
    metric: Metric = "euclidean",
    device: torch.device | str | None = None,
    memory_budget_mb: float = 256.0,
    dtype: torch.dtype = torch.float32,
) -> list[SilhouetteResult]:
    """Silhouette of each labeling of the rows of ``x``, with a permutation null each.

    Each labeling is integer codes with -1 for unknown; a labeling needs at least two
    levels among its known rows (callers check). Rows with an unknown code neither
    count in any cluster nor get a value. As in scikit-learn, a row alone in its
    level gets 0, and so does a row with a = b = 0. One pass over blocked distances
    serves every labeling and all its permutations (known codes shuffled among the
    rows that have one). Distance blocks (query rows x reference rows, beside the
    one-hot products) stay within ``memory_budget_mb``; Euclidean rows are centred in
    float64 first, as in ``knn``.
    """
    dev = _device(device)
    if dev.type == "mps" and dtype == torch.float64:
        dev = torch.device("cpu")
    euclidean = metric == "euclidean"
    xt = _centred(x, dev, dtype) if euclidean else _normalise(_as_tensor(x, dev, dtype))
    n = xt.shape[0]
    plans = []
    columns = 0
    for codes in labelings:
        codes = np.asarray(codes, dtype=np.int64)
        have = np.flatnonzero(codes >= 0)
        levels = int(codes.max()) + 1 if have.size else 0
        variants = np.empty((n_permutations + 1, n), dtype=np.int64)
        variants[:] = codes
        if n_permutations:
            shuffled = rng.permuted(np.tile(codes[have], (n_permutations, 1)), axis=1)
            variants[1:, have] = shuffled
        counts = np.bincount(codes[have], minlength=levels).astype(np.float64)
        plans.append((variants, levels, counts, columns))
        columns += levels * (n_permutations + 1)
    onehot_np = np.zeros((n, columns), dtype=np.float32)
    for variants, levels, _, start in plans:
        perm_i, row_i = np.nonzero(variants >= 0)
        onehot_np[row_i, start + perm_i * levels + variants[perm_i, row_i]] = 1.0
    onehot = torch.from_numpy(onehot_np).to(device=dev, dtype=dtype)
    qb, rb = block_shape(n, n, columns, memory_budget_mb)
    sums = np.empty((n, columns))
    with torch.no_grad():
        for q0 in range(0, n, qb):
            q1 = min(n, q0 + qb)
            acc = torch.zeros((q1 - q0, columns), device=dev, dtype=dtype)
            for r0 in range(0, n, rb):
                r1 = min(n, r0 + rb)
                d = pairwise_distances(xt[q0:q1], xt[r0:r1], metric)
                # cdist's matmul path (and 1 - cos) leave tiny non-zero self-distances
                own = torch.arange(max(q0, r0), max(q0, r0, min(q1, r1)), device=dev)
                d[own - q0, own - r0] = 0
                acc += d @ onehot[r0:r1]
            sums[q0:q1] = acc.double().cpu().numpy()
    results = []
    for variants, levels, counts, start in plans:
        block = sums[:, start : start + levels * variants.shape[0]].reshape(n, -1, levels)
        s = _silhouette_from_sums(block, variants, counts)  # (P+1, n)
        observed = s[0]
        null = np.nanmean(s[1:], axis=1) if variants.shape[0] > 1 else np.empty(0)
        results.append(SilhouetteResult(observed, null))
    return results


def _silhouette_from_sums(sums: np.ndarray, variants: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """sums (n, P, L): each row's distance sum to each level; variants (P, n) codes."""
    n, p, levels = sums.shape
    out = np.full((p, n), np.nan)
    sums = np.transpose(sums, (1, 0, 2))  # (P, n, L)
    known = variants >= 0
    own = np.clip(variants, 0, None)
    own_sum = np.take_along_axis(sums, own[:, :, None], axis=2)[:, :, 0]
    own_n = counts[own]
    with np.errstate(invalid="ignore", divide="ignore"):
        a = own_sum / (own_n - 1)
        means = sums / np.where(counts > 0, counts, np.nan)[None, None, :]
    np.put_along_axis(means, own[:, :, None], np.inf, axis=2)
    means = np.where(np.isnan(means), np.inf, means)
    b = means.min(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (b - a) / np.maximum(a, b)
    s = np.where(own_n <= 1, 0.0, s)
    s = np.where(np.isnan(s), 0.0, s)
    out[known] = s[known]
    return out


# --------------------------------------------------------------------- retrieval


def matched_ranks(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    *,
    metric: Metric = "cosine",
    device: torch.device | str | None = None,
    memory_budget_mb: float = 256.0,
) -> tuple[np.ndarray, np.ndarray]:
    """For each row i of ``a``: how many rows of ``b`` are strictly closer than ``b[i]``,
    and how many others are exactly as close. Row i of ``a`` and ``b`` are a matched pair.

    Distance blocks (query rows x reference rows) stay within ``memory_budget_mb``;
    Euclidean rows are centred in float64 (one shift for both sets) first, as in ``knn``.
    """
    dev = _device(device)
    exact_dev = _exact_device(dev)
    ta64 = _as_tensor(a, exact_dev, torch.float64)
    tb64 = _as_tensor(b, exact_dev, torch.float64)
    if ta64.shape != tb64.shape:
        raise ValueError(
            f"matched pairs need equal shapes, got {tuple(ta64.shape)} and {tuple(tb64.shape)}"
        )
    if metric == "euclidean":
        shift = tb64.mean(0)
        ta = (ta64 - shift).to(device=dev, dtype=torch.float32)
        tb = (tb64 - shift).to(device=dev, dtype=torch.float32)
    else:
        ta = _normalise(ta64.to(device=dev, dtype=torch.float32))
        tb = _normalise(tb64.to(device=dev, dtype=torch.float32))
    n = ta.shape[0]
    qb, rb = block_shape(n, n, 0, memory_budget_mb)
    # exact ties need every distance of a query row from the same kernel: cdist switches
    # formula at 25 rows and matmul tiles by shape, so a differently shaped call can round
    # the same pair differently. Hence every reference block has rb rows (the last padded
    # with zero rows, cut off again) and the match distance is read from those blocks.
    pad = -n % rb
    tb_pad = torch.cat([tb, tb.new_zeros(pad, tb.shape[1])]) if pad else tb

    def block(q0: int, q1: int, r0: int) -> torch.Tensor:
        d = pairwise_distances(ta[q0:q1], tb_pad[r0 : r0 + rb], metric)
        return d[:, : min(n, r0 + rb) - r0]

    closer = np.empty(n, dtype=np.int64)
    ties = np.empty(n, dtype=np.int64)
    with torch.no_grad():
        for q0 in range(0, n, qb):
            q1 = min(n, q0 + qb)
            diag = torch.empty(q1 - q0, 1, dtype=ta.dtype, device=dev)
            reuse: torch.Tensor | None = None
            for r0 in range(q0 - q0 % rb, q1, rb):
                d = block(q0, q1, r0)
                own = torch.arange(max(q0, r0), min(q1, r0 + rb, n), device=dev)
                diag[own - q0, 0] = d[own - q0, own - r0]
                if rb >= n:  # the only reference block: count from it below
                    reuse = d
            n_closer = torch.zeros(q1 - q0, dtype=torch.int64, device=dev)
            n_ties = torch.zeros(q1 - q0, dtype=torch.int64, device=dev)
            for r0 in range(0, n, rb):
                d = reuse if reuse is not None else block(q0, q1, r0)
                # the match itself counts as neither closer nor tied (NaN compares false)
                r1 = min(n, r0 + rb)
                own = torch.arange(max(q0, r0), max(q0, r0, min(q1, r1)), device=dev)
                d[own - q0, own - r0] = math.nan
                n_closer += (d < diag).sum(1)
                n_ties += (d == diag).sum(1)
            closer[q0:q1] = n_closer.cpu().numpy()
            ties[q0:q1] = n_ties.cpu().numpy()
    return closer, ties


def recall_at(closer: np.ndarray, ties: np.ndarray, k: int) -> np.ndarray:
    """Per row, P(the match is in the top k) under random tie-breaking."""
    return np.clip((k - closer) / (ties + 1.0), 0.0, 1.0)
