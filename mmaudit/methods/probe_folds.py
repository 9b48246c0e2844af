"""The outer folds of a probe: stratified by the attribute (and, beyond the target, by
attribute x target class) and grouped by patient, so no patient is in both train and test."""

from __future__ import annotations

import numpy as np

from mmaudit.methods.probe_result import ProbeError

__all__ = [
    "make_folds",
]


def level_codes(values: np.ndarray) -> np.ndarray:
    _, inv = np.unique(np.asarray(values), return_inverse=True)
    return np.asarray(inv).reshape(-1)


def make_folds(
    strata: np.ndarray, groups: np.ndarray | None, n_folds: int, seed: int
) -> np.ndarray:
    """Fold id (0..k-1) per row, stratified by ``strata`` and, with ``groups``, grouped.

    Every group (patient) lies in one fold. Each group takes its most common stratum
    (an attribute can vary within a patient);
    within a stratum the groups are shuffled (seeded), ordered largest first and dealt
    to the fold holding the fewest rows of that stratum (fewest rows overall on ties) --
    the greedy rule of ``StratifiedGroupKFold``, without its per-call cost. The fold
    count drops to what the rarest stratum allows; ProbeError below two folds.
    """
    strata = level_codes(strata)
    n = strata.shape[0]
    units = level_codes(groups) if groups is not None else np.arange(n)
    n_units = int(units.max()) + 1 if n else 0
    n_strata = int(strata.max()) + 1 if n else 0
    pairs = np.zeros((n_units, n_strata), dtype=np.int64)
    np.add.at(pairs, (units, strata), 1)
    unit_stratum = pairs.argmax(axis=1)
    per_stratum = (pairs > 0).sum(axis=0)  # units holding rows of each stratum
    rarest = int(per_stratum.min()) if n_strata else 0
    k = int(min(n_folds, rarest, n_units))
    if k < 2:
        unit = "patients" if groups is not None else "rows"
        raise ProbeError(
            f"fewer samples than folds: the rarest level has {rarest} {unit}; a"
            f" cross-validated probe needs at least 2 (asked for {n_folds} folds)"
        )
    rng = np.random.default_rng(seed)
    size = np.bincount(units, minlength=n_units)
    fold_of_unit = np.empty(n_units, dtype=np.int64)
    fold_rows = np.zeros(k, dtype=np.int64)
    for s in range(n_strata):
        members = rng.permutation(np.flatnonzero(unit_stratum == s))
        members = members[np.argsort(-size[members], kind="stable")]
        count = np.zeros(k, dtype=np.int64)
        for u in members:
            f = int(np.lexsort((np.arange(k), fold_rows, count))[0])
            fold_of_unit[u] = f
            count[f] += size[u]
            fold_rows[f] += size[u]
    return fold_of_unit[units]


def outer_folds(
    strata: np.ndarray,
    classes: np.ndarray | None,
    groups: np.ndarray | None,
    n_folds: int,
    seed: int,
) -> np.ndarray:
    """Outer folds stratified by attribute x target class when that allows as many folds as
    stratifying by the attribute alone, else by the attribute."""
    folds = make_folds(strata, groups, n_folds, seed)
    if classes is None:
        return folds
    try:
        joint = make_folds(strata * (int(classes.max()) + 1) + classes, groups, n_folds, seed)
    except ProbeError:
        return folds
    return joint if joint.max() >= folds.max() else folds
