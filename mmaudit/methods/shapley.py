"""Exact Shapley values over modality coalitions, the pairwise Shapley interaction index and
EMAP, the empirical multimodally-additive projection.

Why a module of its own: with at most a handful of modalities every coalition can be
evaluated, so attribution needs no sampling (unlike feature-level SHAP); what remains is
exact cooperative-game arithmetic on a table of values, which is easy to get subtly wrong
and deserves its own property tests (efficiency, symmetry, null player, linearity).

Conventions. A game over ``M`` players (modalities) is an array ``values`` whose first axis
has ``2**M`` entries indexed by bit mask: bit ``j`` of the index set means player ``j`` is
in the coalition (its modality is kept), so ``values[0]`` is the empty coalition and
``values[2**M - 1]`` the grand coalition. Any trailing axes (samples, bootstrap resamples)
are carried along, so one call attributes every sample or every resample at once.

* :func:`shapley_values` -- ``phi_j = sum_{S not containing j} |S|!(M-|S|-1)!/M! *
  (v(S + j) - v(S))``; efficiency ``sum_j phi_j = v(N) - v(empty)`` holds exactly.
* :func:`interaction_index` -- the Shapley interaction index of Grabisch (1997):
  ``I_jk = sum_{S in N minus {j,k}} |S|!(M-|S|-2)!/(M-1)! * (v(S+jk) - v(S+j) - v(S+k) + v(S))``;
  negative = redundancy (either modality alone gives most of what both give), positive =
  synergy (the pair is worth more than its parts, e.g. XOR).
* :func:`emap_projection` -- Hessel & Lee (2020): the model's best additive approximation
  ``f_hat(x_i) = sum_m E_j[f(x_i^m, x_j^{-m})] + const``. If ``f_hat`` scores as well as
  ``f``, the model does not use cross-modal interactions at all.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = [
    "coalition_members",
    "emap_projection",
    "interaction_index",
    "n_players_of",
    "pair_names",
    "shapley_values",
]

MAX_PLAYERS = 12  # 4096 coalitions; modalities are far fewer, this only bounds mistakes


def n_players_of(values: np.ndarray) -> int:
    """The number of players ``M`` of a game table with ``2**M`` rows; ValueError otherwise."""
    rows = int(np.shape(values)[0]) if np.ndim(values) else 0
    m = rows.bit_length() - 1
    if rows < 1 or (1 << m) != rows:
        raise ValueError(f"a game table needs 2**M rows (one per coalition), got {rows}")
    if m > MAX_PLAYERS:
        raise ValueError(f"{m} players: exact Shapley over 2**{m} coalitions is not supported")
    return m


def coalition_members(mask: int, names: list[str] | tuple[str, ...]) -> list[str]:
    """The player names whose bit is set in ``mask`` (in player order)."""
    return [n for j, n in enumerate(names) if (mask >> j) & 1]


def pair_names(names: list[str] | tuple[str, ...]) -> list[tuple[int, int, str]]:
    """Every pair ``(j, k, "a_x_b")`` with ``j < k``, in a stable order."""
    return [
        (j, k, f"{names[j]}_x_{names[k]}") for j, k in itertools.combinations(range(len(names)), 2)
    ]


def _popcount(masks: np.ndarray) -> np.ndarray:
    return np.array([bin(int(s)).count("1") for s in masks], dtype=np.int64)


def shapley_values(values: np.ndarray) -> np.ndarray:
    """Exact Shapley values of every player: shape ``(M, *values.shape[1:])``.

    ``values`` is a game table (see the module docstring). NaN in a coalition the player's
    marginal contributions use propagates to that player's value (a metric undefined on
    some coalition leaves the attribution undefined rather than silently wrong).
    """
    v = np.asarray(values, dtype=float)
    m = n_players_of(v)
    out = np.empty((m, *v.shape[1:]), dtype=float)
    all_masks = np.arange(1 << m)
    for j in range(m):
        bit = 1 << j
        without = all_masks[(all_masks & bit) == 0]
        size = _popcount(without)
        weight = np.array(
            [math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m) for s in size]
        )
        diff = v[without | bit] - v[without]
        out[j] = np.tensordot(weight, diff, axes=(0, 0))
    return out


def interaction_index(values: np.ndarray) -> np.ndarray:
    """The pairwise Shapley interaction index: shape ``(M, M, *values.shape[1:])``.

    Symmetric; the diagonal is NaN (a player does not interact with itself). For two
    players ``I_01 = v(01) - v(0) - v(1) + v(empty)``; for an additive game every entry is 0.
    """
    v = np.asarray(values, dtype=float)
    m = n_players_of(v)
    out = np.full((m, m, *v.shape[1:]), np.nan)
    all_masks = np.arange(1 << m)
    for j, k in itertools.combinations(range(m), 2):
        bj, bk = 1 << j, 1 << k
        rest = all_masks[(all_masks & (bj | bk)) == 0]
        size = _popcount(rest)
        weight = np.array(
            [math.factorial(s) * math.factorial(m - s - 2) / math.factorial(m - 1) for s in size]
        )
        delta = v[rest | bj | bk] - v[rest | bj] - v[rest | bk] + v[rest]
        out[j, k] = out[k, j] = np.tensordot(weight, delta, axes=(0, 0))
    return out


def emap_projection(own: np.ndarray, cross: np.ndarray) -> np.ndarray:
    """The empirical multimodally-additive projection of a model's outputs.

    Args:
        own: ``(N, ...)`` the model's outputs (logits) on the N samples as they are.
        cross: ``(M, N, R, ...)``: ``cross[m, i, r]`` is the output for modality ``m`` of
            sample ``i`` combined with every other modality of reference sample ``r``
            (the same ``R`` reference samples for every ``i``).

    Returns ``(N, ...)``: ``f_hat(x_i) = sum_m mean_r cross[m, i, r] + c``, with ``c`` set so
    that ``f_hat`` and ``own`` have the same mean over the N samples.

    Why a fixed reference set: ``sum_m mean_r cross[m, i, r]`` then depends on sample ``i``
    only through each of its modalities separately, so ``f_hat`` is exactly additive
    whatever ``R`` is, and an additive model (``f = sum_m h_m(x^m)``) is reproduced
    exactly: ``f_hat = f``. With ``R`` = all N samples this is Hessel & Lee's EMAP up to
    the constant (theirs is the mean over all cross pairs; a constant moves only
    threshold-dependent metrics, not AUROC).
    """
    own = np.asarray(own, dtype=float)
    cross = np.asarray(cross, dtype=float)
    if cross.ndim < 3 or cross.shape[1] != own.shape[0] or cross.shape[3:] != own.shape[1:]:
        raise ValueError(
            f"cross must be (M, N, R, ...) matching own {own.shape}; got {cross.shape}"
        )
    additive = cross.mean(axis=2).sum(axis=0)
    return additive - additive.mean(axis=0) + own.mean(axis=0)
