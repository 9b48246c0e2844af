"""The permutation null of a probe: the attribute shuffled within blocks (outer folds, or
fold x target class cells), between patients or rows, and the ridge statistic of every
shuffle from one matrix product per fold."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmaudit.methods.probe_fitting import RidgeFold
from mmaudit.methods.probe_folds import level_codes
from mmaudit.methods.probe_result import ProbeKind
from mmaudit.methods.probe_scores import (
    auroc_columns,
    auroc_columns_within,
    r2_columns,
    r2_columns_within,
)


def constant_within(values: np.ndarray, groups: np.ndarray) -> bool:
    g = level_codes(groups)
    order = np.argsort(g, kind="stable")
    gs, vs = g[order], np.asarray(values)[order]
    same_group = gs[1:] == gs[:-1]
    return bool(np.all(vs[1:][same_group] == vs[:-1][same_group]))


def shuffler(
    values: np.ndarray, blocks: np.ndarray, groups: np.ndarray | None, by_patient: bool
) -> Callable[[np.random.Generator, int], np.ndarray]:
    """A function (rng, b) -> b shuffled copies (b, n) of ``values``.

    Labels move only *within* a block -- an outer fold, or an (outer fold x target class)
    cell for a probe beyond the target -- between its patients when the attribute is
    constant within each patient (a patient belongs to the block of its first row), else
    between its rows. Each fold therefore keeps its class balance / mean, exactly as the
    stratified folds gave it to the true labels; shuffling across folds would hand the
    permutations unbalanced folds, which lowers their pooled cross-validated score and
    makes the test anti-conservative. Blocks by target class also keep the attribute's
    association with the target in every permutation.
    """
    values = np.asarray(values)
    if by_patient and groups is not None:
        unit = level_codes(groups)
        first = np.unique(unit, return_index=True)[1]
        unit_values, unit_blocks = values[first], blocks[first]
    else:
        unit = np.arange(values.shape[0])
        unit_values, unit_blocks = values, blocks
    home = np.argsort(unit_blocks, kind="stable")  # units sorted by block

    def draw(rng: np.random.Generator, b: int) -> np.ndarray:
        keys = unit_blocks[home][None, :] + rng.random((b, home.size))
        moved = home[np.argsort(keys, axis=1)]  # a random order of each fold's units
        out = np.empty((b, home.size), dtype=unit_values.dtype)
        out[:, home] = unit_values[moved]
        return out[:, unit]

    return draw


def null_scores(
    kind: ProbeKind,
    maps: list[RidgeFold],
    labels_perm: np.ndarray,
    n_levels: int,
    within: np.ndarray | None = None,
) -> np.ndarray:
    """Ridge statistic for each row of ``labels_perm`` (P, n): one product per fold; within
    the classes of ``within`` when given."""
    n_perm, n = labels_perm.shape
    if kind == "continuous":
        ys = labels_perm.T  # (n, P)
        pred = np.empty_like(ys)
        for fold in maps:
            pred[fold.test] = fold.predict(ys[~fold.test])
        return r2_columns(ys, pred) if within is None else r2_columns_within(ys, pred, within)
    cols = 1 if n_levels == 2 else n_levels
    if n_levels == 2:
        ys = (labels_perm.T == 1).astype(np.float64)  # (n, P)
    else:
        ys = (labels_perm.T[:, :, None] == np.arange(n_levels)).reshape(n, n_perm * cols)
        ys = ys.astype(np.float64)
    pred = np.empty_like(ys)
    for fold in maps:
        pred[fold.test] = fold.predict(ys[~fold.test])
    scores = auroc_columns(ys, pred) if within is None else auroc_columns_within(ys, pred, within)
    if n_levels == 2:
        return scores
    return np.nanmean(scores.reshape(n_perm, cols), axis=1)
