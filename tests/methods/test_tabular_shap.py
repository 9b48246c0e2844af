"""SHAP of lab features against known answers: an additive model's exact Shapley values.

For ``f(x) = sum_j (a_j x_j + b_j x_j^2)`` with interventional masking over a background
``B``, the Shapley value of feature j is ``a_j (x_j - mean_B x_j) + b_j (x_j^2 - mean_B
x_j^2)``; the antithetic permutation explainer is exact for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from test_attribution import Additive, config_for, make_context, write_text_dataset
from torch import nn

from mmaudit.methods.attribution_target import Target
from mmaudit.methods.tabular_shap import gradient_shap, permutation_shap

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


def test_permutation_shap_model_calls_fit_the_budget(ctx: Any, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A budget of a few rows' cached encoder outputs splits each of the explainer's calls
    (20 F + 1 evaluations x 20 background rows = 100 rows) into chunks of those rows; the
    values are those of whole calls."""
    from mmaudit.methods.memory_budget import MemoryBudget

    rows, tab = np.arange(4), ctx.dataset.tabular.numpy()
    bg = tab[20:40]
    fixed = {m: ctx.cache.embeddings(m) for m in ("image", "text")}
    per_row = sum(v[0].nbytes for v in fixed.values()) + 4 * bg.shape[1]
    budget = MemoryBudget(7.5 * per_row / 2**20)  # 7 rows of copies at once
    seen: list[int] = []
    logits = ctx.adapter.logits
    monkeypatch.setattr(ctx.adapter, "logits", lambda b: seen.append(len(b)) or logits(b))
    score = Target.of(ctx).score_fn()
    split = permutation_shap(ctx.cache, rows, bg, score, fixed=fixed, seed=3, budget=budget)
    assert seen and max(seen) == 7
    assert budget.plans["SHAP evaluations"].rows_per_chunk == 7
    whole = permutation_shap(ctx.cache, rows, bg, score, fixed=fixed, seed=3)
    assert np.allclose(split.values, whole.values, atol=1e-6)
    assert np.allclose(split.base, whole.base, atol=1e-6)


def test_gradient_shap_is_unbiased_and_deterministic(ctx: Any) -> None:
    rows = np.arange(16)
    tab = ctx.dataset.tabular.numpy()
    bg = tab[20:40]
    score = Target.of(ctx).score_fn()
    one = gradient_shap(ctx.cache, rows, bg, score, n_samples=1000, seed=1)
    two = gradient_shap(ctx.cache, rows, bg, score, n_samples=1000, seed=1)
    assert np.array_equal(one.values, two.values)
    truth = exact(tab[rows], bg)
    assert np.abs(one.values - truth).max() < 0.25
    assert np.corrcoef(one.values.ravel(), truth.ravel())[0, 1] > 0.98


class Interacting(nn.Module):
    """logit = image brightness + x0 x1 x2 + x3: a three-way interaction, so the permutation
    explainer's estimate depends on the permutations it draws (unlike an additive model)."""

    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        tabular: torch.Tensor | None = None,
    ) -> torch.Tensor:
        assert tabular is not None
        out = image.mean(dim=(1, 2, 3)) + tabular[:, 0] * tabular[:, 1] * tabular[:, 2]
        return (out + tabular[:, 3])[:, None]


@pytest.fixture(scope="module")
def interacting(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Four labs, no layer hooks: the whole model runs on every perturbed row."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    manifest: Path = write_text_dataset(tmp_path_factory.mktemp("shap4"), n=24)
    df = pd.read_csv(manifest)
    rng = np.random.default_rng(5)
    for c in ("lab_a", "lab_b", "lab_c", "lab_d"):
        df[c] = rng.normal(0, 1.5, len(df))
    df.to_csv(manifest, index=False)
    cfg = config_for(
        manifest, tabular={"columns": ["lab_a", "lab_b", "lab_c", "lab_d"], "normalization": "none"}
    )
    context = make_context(cfg, Interacting(), layers={})
    yield context
    torch.set_num_threads(before)


def _explain(ctx: Any, method: str, rows: np.ndarray, seed: int = 3) -> np.ndarray:
    tab = ctx.dataset.tabular.numpy()
    score = Target.of(ctx).score_fn()
    if method == "permutation":
        return permutation_shap(ctx.cache, rows, tab[12:24], score, max_evals=18, seed=seed).values
    return gradient_shap(ctx.cache, rows, tab[12:24], score, n_samples=8, seed=seed).values


@pytest.mark.parametrize("method", ["permutation", "gradient"])
def test_shap_of_a_sample_does_not_depend_on_the_others_explained(
    interacting: Any, method: str
) -> None:
    """A sample's SHAP values are the same whichever samples share its batch or shard and
    whatever was drawn before it: what makes a torchrun audit equal to a one-process one."""
    ctx = interacting
    rows = np.arange(12)
    ctx.cache.batch_size = 5
    everything = _explain(ctx, method, rows)
    ctx.cache.batch_size = 2
    alone = _explain(ctx, method, rows[[7, 10, 11]])
    ctx.cache.batch_size = 32
    np.testing.assert_allclose(alone, everything[[7, 10, 11]], rtol=0, atol=1e-6)
    # the draws matter here (so the equality above is not vacuous): another seed differs
    assert np.abs(_explain(ctx, method, rows[[7, 10, 11]], seed=4) - alone).max() > 1e-3
