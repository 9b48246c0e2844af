"""Keeping the heavy steps affordable: a stratified row subsample for the O(n^2) work
(silhouettes, t-SNE / UMAP, trustworthiness, clustering) and a cap on native threads."""

from __future__ import annotations

from typing import Any

import numpy as np


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


def native_threads(threads: int | None) -> Any:
    """Cap the OpenMP / BLAS threads of scikit-learn and numpy work (not torch's).

    On a machine whose cores are already busy, OpenMP threads that spin-wait cost far more
    than they save: t-SNE of 1000 rows took 34 s with two threads on two contended cores
    and 9 s with one; k-means 14 s and 0.8 s.
    """
    import contextlib

    from threadpoolctl import threadpool_limits

    return threadpool_limits(threads) if threads else contextlib.nullcontext()
