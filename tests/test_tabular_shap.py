"""SHAP of lab features against known answers: an additive model's exact Shapley values.

For ``f(x) = sum_j (a_j x_j + b_j x_j^2)`` with interventional masking over a background
``B``, the Shapley value of feature j is ``a_j (x_j - mean_B x_j) + b_j (x_j^2 - mean_B
x_j^2)``; the antithetic permutation explainer is exact for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_attribution import Additive, config_for, make_context, write_text_dataset

from mmaudit.checks.attribution import Target
from mmaudit.tabular_shap import gradient_shap, permutation_shap

A = [1.0, -0.5]
B = [0.3, 0.2]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    manifest: Path = write_text_dataset(tmp_path_factory.mktemp("shapdata"), n=40)
    context = make_context(config_for(manifest), Additive(400, {}, A, B))
    context.cache.sweep()
    yield context
    torch.set_num_threads(before)


def exact(x: np.ndarray, bg: np.ndarray) -> np.ndarray:
    a, b = np.array(A), np.array(B)
    return a * (x - bg.mean(0)) + b * (x**2 - (bg**2).mean(0))


def test_permutation_shap_is_exact_for_an_additive_model(ctx: Any) -> None:
    rows = np.arange(12)
    tab = ctx.dataset.tabular.numpy()
    bg = tab[20:40]
    state = np.random.get_state()
    fixed = {m: ctx.cache.embeddings(m) for m in ("image", "text")}
    res = permutation_shap(ctx.cache, rows, bg, Target.of(ctx).score_fn(), fixed=fixed, seed=3)
    assert np.allclose(res.values, exact(tab[rows], bg), atol=1e-5)
    # local accuracy: base + sum = the sample's own score, equal to the cached sweep's
    sweep = ctx.cache.sweep().logits[rows, 0]
    assert np.allclose(res.base + res.values.sum(1), sweep, atol=1e-5)
    assert np.allclose(res.score, sweep, atol=1e-5)
    # numpy's global random state is left as it was
    after = np.random.get_state()
    same = [np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(state, after, strict=True)]
    assert all(same)
    # the same numbers without substituting the other encoders (full model runs)
    again = permutation_shap(ctx.cache, rows[:3], bg, Target.of(ctx).score_fn(), seed=3)
    assert np.allclose(again.values, res.values[:3], atol=1e-5)
    assert ctx.adapter.hook_count() == 0


def test_gradient_shap_is_unbiased_and_deterministic(ctx: Any) -> None:
    rows = np.arange(16)
    tab = ctx.dataset.tabular.numpy()
    bg = tab[20:40]
    score = Target.of(ctx).score_fn()
    one = gradient_shap(ctx.cache, rows, bg, score, n_samples=400, seed=1)
    two = gradient_shap(ctx.cache, rows, bg, score, n_samples=400, seed=1)
    assert np.array_equal(one.values, two.values)
    truth = exact(tab[rows], bg)
    assert np.abs(one.values - truth).max() < 0.25
    assert np.corrcoef(one.values.ravel(), truth.ravel())[0, 1] > 0.98
