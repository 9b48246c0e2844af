"""Exact Shapley values, the Shapley interaction index and EMAP: the axioms as property
tests, brute-force definitions as oracles, and games with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmaudit.methods.shapley import (
    coalition_members,
    emap_projection,
    interaction_index,
    n_players_of,
    pair_names,
    shapley_values,
)


@st.composite
def games(draw: st.DrawFn, min_players: int = 1, max_players: int = 6) -> np.ndarray:
    """A random game table over 1..6 players (values in a bounded range)."""
    m = draw(st.integers(min_players, max_players))
    values = draw(
        st.lists(
            st.floats(-10, 10, allow_nan=False, allow_infinity=False),
            min_size=1 << m,
            max_size=1 << m,
        )
    )
    return np.array(values)


def _swap_bits(mask: int, i: int, j: int) -> int:
    bi, bj = (mask >> i) & 1, (mask >> j) & 1
    if bi != bj:
        mask ^= (1 << i) | (1 << j)
    return mask


def _shapley_by_orders(values: np.ndarray) -> np.ndarray:
    """The textbook definition: mean marginal contribution over all M! arrival orders."""
    m = n_players_of(values)
    phi = np.zeros(m)
    for order in itertools.permutations(range(m)):
        mask = 0
        for player in order:
            phi[player] += values[mask | (1 << player)] - values[mask]
            mask |= 1 << player
    return phi / math.factorial(m)


def _interaction_by_definition(values: np.ndarray, i: int, j: int) -> float:
    """Grabisch (1997) by explicit subsets."""
    m = n_players_of(values)
    others = [k for k in range(m) if k not in (i, j)]
    total = 0.0
    for size in range(len(others) + 1):
        w = math.factorial(size) * math.factorial(m - size - 2) / math.factorial(m - 1)
        for subset in itertools.combinations(others, size):
            s = sum(1 << k for k in subset)
            bi, bj = 1 << i, 1 << j
            total += w * (values[s | bi | bj] - values[s | bi] - values[s | bj] + values[s])
    return total


@settings(max_examples=60, deadline=None)
@given(games())
def test_efficiency_values_sum_to_grand_minus_empty(values: np.ndarray) -> None:
    phi = shapley_values(values)
    assert phi.sum() == pytest.approx(values[-1] - values[0], abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(games(min_players=2), st.data())
def test_symmetric_players_get_equal_values(values: np.ndarray, data: st.DataObject) -> None:
    m = n_players_of(values)
    i, j = data.draw(st.sampled_from(list(itertools.combinations(range(m), 2))))
    sym = np.array([(values[s] + values[_swap_bits(s, i, j)]) / 2 for s in range(1 << m)])
    phi = shapley_values(sym)
    assert phi[i] == pytest.approx(phi[j], abs=1e-9)
    inter = interaction_index(sym)
    assert np.allclose(inter, np.swapaxes(inter, 0, 1), equal_nan=True)


@settings(max_examples=40, deadline=None)
@given(games(min_players=2), st.data())
def test_null_player_gets_zero_and_interacts_with_nobody(
    values: np.ndarray, data: st.DataObject
) -> None:
    m = n_players_of(values)
    null = data.draw(st.integers(0, m - 1))
    game = np.array([values[s & ~(1 << null)] for s in range(1 << m)])
    phi = shapley_values(game)
    assert phi[null] == pytest.approx(0.0, abs=1e-12)
    inter = interaction_index(game)
    others = [k for k in range(m) if k != null]
    assert np.allclose(inter[null, others], 0.0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(games(max_players=4))
def test_matches_the_definition_over_all_orders(values: np.ndarray) -> None:
    assert np.allclose(shapley_values(values), _shapley_by_orders(values), atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(games(min_players=2, max_players=5), st.data())
def test_interaction_matches_grabisch_by_subsets(values: np.ndarray, data: st.DataObject) -> None:
    m = n_players_of(values)
    i, j = data.draw(st.sampled_from(list(itertools.combinations(range(m), 2))))
    assert interaction_index(values)[i, j] == pytest.approx(
        _interaction_by_definition(values, i, j), abs=1e-9
    )


@settings(max_examples=30, deadline=None)
@given(games(min_players=3, max_players=3), games(min_players=3, max_players=3), st.floats(-3, 3))
def test_linearity(v: np.ndarray, w: np.ndarray, a: float) -> None:
    assert np.allclose(
        shapley_values(a * v + w), a * shapley_values(v) + shapley_values(w), atol=1e-8
    )


def test_additive_game_gives_each_player_its_own_worth_and_no_interaction() -> None:
    worth = np.array([0.3, 0.0, 0.1])
    game = np.array([sum(worth[j] for j in range(3) if (s >> j) & 1) for s in range(8)]) + 0.5
    assert np.allclose(shapley_values(game), worth)
    inter = interaction_index(game)
    assert np.allclose(inter[~np.eye(3, dtype=bool)], 0.0)
    assert np.isnan(np.diag(inter)).all()


def test_xor_game_is_synergy_and_duplicate_is_redundancy() -> None:
    # AUROC-like: 0.5 without information, 1.0 only with both (XOR) / with either (duplicate)
    xor = np.array([0.5, 0.5, 0.5, 1.0])
    dup = np.array([0.5, 1.0, 1.0, 1.0])
    assert interaction_index(xor)[0, 1] == pytest.approx(0.5)
    assert interaction_index(dup)[0, 1] == pytest.approx(-0.5)
    assert np.allclose(shapley_values(xor), [0.25, 0.25])


def test_trailing_axes_are_attributed_independently() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(8, 5, 2))
    phi = shapley_values(values)
    inter = interaction_index(values)
    assert phi.shape == (3, 5, 2) and inter.shape == (3, 3, 5, 2)
    for a, b in itertools.product(range(5), range(2)):
        assert np.allclose(phi[:, a, b], shapley_values(values[:, a, b]))
        assert np.allclose(inter[:, :, a, b], interaction_index(values[:, a, b]), equal_nan=True)


def test_nan_in_a_coalition_leaves_the_values_that_use_it_undefined() -> None:
    game = np.array([0.5, 0.7, np.nan, 0.9])
    phi = shapley_values(game)
    assert np.isnan(phi).all()  # both players' marginals pass through coalition {1}


def test_bad_tables_are_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="2\\*\\*M rows"):
        shapley_values(np.zeros(6))
    with pytest.raises(ValueError, match="not supported"):
        n_players_of(np.zeros(1 << 13))


def test_names() -> None:
    assert coalition_members(0b101, ["image", "text", "tabular"]) == ["image", "tabular"]
    assert [p[2] for p in pair_names(["image", "text", "tabular"])] == [
        "image_x_text",
        "image_x_tabular",
        "text_x_tabular",
    ]


# ------------------------------------------------------------------------------ EMAP


def _cross(f, xs: list[np.ndarray], ref: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """cross[m, i, r] = f(modality m of sample i, other modalities of sample ref[r])."""
    m_count, n = len(xs), len(xs[0])
    out = np.empty((m_count, n, len(ref), 1))
    for m in range(m_count):
        for r_pos, r in enumerate(ref):
            parts = [xs[k] if k == m else np.full(n, xs[k][r]) for k in range(m_count)]
            out[m, :, r_pos, 0] = f(*parts)
    return out


@pytest.mark.parametrize("n_ref", [3, 40])
def test_emap_reproduces_an_additive_model_exactly(n_ref: int) -> None:
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=40) for _ in range(3)]

    def f(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        return 2 * np.tanh(a) - b**2 + 0.3 * c

    ref = rng.choice(40, n_ref, replace=False)
    own = f(*xs)[:, None]
    assert np.allclose(emap_projection(own, _cross(f, xs, ref)), own)


def test_emap_of_a_product_loses_the_interaction() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=200), rng.normal(size=200)

    def f(x: np.ndarray, z: np.ndarray) -> np.ndarray:
        return x * z

    own = f(a, b)[:, None]
    hat = emap_projection(own, _cross(f, [a, b], np.arange(200)))
    assert hat.mean() == pytest.approx(own.mean())
    # the additive part of a product of independent centred variables is nearly nothing
    assert np.corrcoef(hat[:, 0], own[:, 0])[0, 1] < 0.3
    with pytest.raises(ValueError, match="cross must be"):
        emap_projection(own, np.zeros((2, 199, 3, 1)))
