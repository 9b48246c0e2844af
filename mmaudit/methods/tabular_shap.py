"""Shapley values of the tabular features (labs, vitals), other modalities held fixed.

The game: for one sample, the players are its lab features; a coalition keeps its
features at the sample's values and takes the others from a background row drawn from
the data (interventional SHAP, the ``shap`` package's ``Independent`` masker); the
image and report stay at the sample's own observed values. The payoff is the model's
score for the sample (a logit).

Two estimators, one default:

* ``permutation`` (default): ``shap.PermutationExplainer``. Model-agnostic (no
  gradient needed, exact at kinks and steps), and antithetic permutations make it exact
  for additive models and for pairwise interactions; its values add up exactly to
  ``f(x) - E_background f``. It evaluates ``max_evals x background`` perturbed rows per
  sample, which is cheap here because the image and text encoders never run: their
  cached outputs are substituted, so only the tabular encoder, fusion and head see the
  perturbed rows. Cost grows with the number of samples explained, hence a cap.
* ``gradient``: GradientShap (expected gradients with random background rows and path
  points, as captum's ``GradientShap``). One forward + backward per batch for all
  samples, so faster with many features on a GPU, but a Monte-Carlo estimate (noisy for
  few samples) that needs a model differentiable in the features.

Every random draw (the permutations, the background rows, path points and noise) is
seeded per sample from the run seed and the sample's dataset index, so a sample's values
do not depend on which samples are explained with it, on the batch size or on the number
of processes (``distributed.sample_seeds``).

Both hold the other modalities at their cached encoder outputs when the adapter names
those encoder layers; otherwise the whole model runs on repeated inputs (slower, same
numbers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from mmaudit.engine.cache import InferenceCache
from mmaudit.engine.data import Batch
from mmaudit.engine.distributed import sample_seeds
from mmaudit.methods.integrated_gradients import ScoreFn, substituted
from mmaudit.methods.memory_budget import MemoryBudget

__all__ = ["TabularShap", "gradient_shap", "permutation_shap"]


@dataclass
class TabularShap:
    """SHAP values of the explained samples, in the order of ``rows``."""

    rows: np.ndarray  # dataset indices
    values: np.ndarray  # (n, F) contribution of each feature to the score
    base: np.ndarray  # (n,) expected score over the background (this sample's other inputs)
    score: np.ndarray  # (n,) the sample's own score as the explainer saw it
    method: str


def _with_tabular(batch: Batch, rows: torch.Tensor, values: torch.Tensor, column: int) -> Batch:
    """Rows ``rows`` of ``batch`` with their tabular input replaced and marked present."""
    big = batch.select(rows)
    present = big.present.clone()
    present[:, column] = True
    return big.replace(tabular=values.to(big.present.device, torch.float32), present=present)


def _repeat_one(one: Batch, k: int) -> Batch:
    """``k`` rows that are all the single sample ``one`` (views: no image is copied)."""
    return Batch(
        **{
            f.name: (v.expand(k, *v.shape[1:]) if isinstance(v, torch.Tensor) else v)
            for f in fields(one)
            for v in [getattr(one, f.name)]
        }
    )


def _fixed_supplies(
    fixed: dict[str, np.ndarray], state: dict[str, Any], device: torch.device
) -> dict[str, Callable[[], torch.Tensor]]:
    """Substitutes that return the cached encoder outputs of ``state['index']`` rows."""

    def supply(name: str) -> Callable[[], torch.Tensor]:
        def fn() -> torch.Tensor:
            idx = state["index"].cpu().numpy()
            return torch.from_numpy(fixed[name][idx]).to(device)

        return fn

    return {name: supply(name) for name in fixed}


def permutation_shap(
    cache: InferenceCache,
    rows: np.ndarray,
    background: np.ndarray,
    score_fn: ScoreFn,
    *,
    fixed: dict[str, np.ndarray] | None = None,
    max_evals: int | None = None,
    seed: int = 0,
    budget: MemoryBudget | None = None,
) -> TabularShap:
    """``shap.PermutationExplainer`` over the tabular features of ``rows``.

    The explainer asks for ``max_evals x background`` rows at once (5,500 at the defaults),
    each holding a copy of the row's cached encoder outputs: 2.5 GB for token-level outputs
    of a cross-attention model (49 image regions + 64 report tokens of width 256). With a
    ``budget`` a call runs in chunks of the rows whose copies fit it (recorded as ``SHAP
    evaluations``); the values are the same.

    ``background`` is (n_bg, F) in the model's (standardised) feature space;
    ``fixed`` maps encoder layer names to cached (N, ...) outputs held constant;
    ``max_evals`` defaults to 10 antithetic permutations (``20 F + 1`` evaluations).
    The explainer draws its permutations from numpy's global random state; it is seeded
    per sample (``seed`` and the dataset index) before each sample, and restored afterwards
    so nothing else in the run is perturbed.
    """
    import shap

    adapter = cache.adapter
    column = cache.dataset.modalities.index("tabular")
    n_features = background.shape[1]
    evals = int(max_evals) if max_evals else 10 * (2 * n_features + 1)
    state: dict[str, Any] = {}
    supplies = _fixed_supplies(fixed or {}, state, adapter.device)

    held = sum(int(np.prod(v.shape[1:])) * v.dtype.itemsize for v in (fixed or {}).values())
    step = None if budget is None else budget.rows_held("SHAP evaluations", held + 4 * n_features)

    def model_fn(x: np.ndarray) -> np.ndarray:
        if step is not None and x.shape[0] > step:
            return np.concatenate([model_fn(x[lo : lo + step]) for lo in range(0, len(x), step)])
        big = _repeat_one(state["one"], x.shape[0])
        present = big.present.clone()
        present[:, column] = True
        values = torch.from_numpy(np.asarray(x, dtype=np.float32)).to(present.device)
        big = big.replace(tabular=values, present=present)
        state["index"] = big.index
        with torch.no_grad():
            return score_fn(adapter.logits(big), big).float().cpu().numpy()

    saved = np.random.get_state()
    threads = torch.get_num_threads()
    if adapter.device.type == "cpu":
        # hundreds of tiny model calls: intra-op threads cost more than they give (and on a
        # busy machine far more), so one thread while explaining, restored afterwards
        torch.set_num_threads(1)
    try:
        masker = shap.maskers.Independent(background, max_samples=len(background))
        explainer = shap.explainers.PermutationExplainer(model_fn, masker, seed=seed)

        def explain(batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            assert batch.tabular is not None
            values, base, score = [], [], []
            seeds = sample_seeds(seed, "tabular_shap.permutation", batch.index.tolist())
            with substituted(adapter, supplies):
                for j in range(len(batch)):
                    state["one"] = batch.select(torch.tensor([j], device=batch.index.device))
                    x = batch.tabular[j : j + 1].float().cpu().numpy()
                    np.random.seed(seeds[j])
                    ex = explainer(x, max_evals=evals, batch_size=evals, silent=True)
                    values.append(np.asarray(ex.values, dtype=float).reshape(n_features))
                    base.append(float(np.asarray(ex.base_values).reshape(-1)[0]))
                    score.append(float(model_fn(x)[0]))
            return np.array(values).reshape(-1, n_features), np.array(base), np.array(score)

        parts = cache.map_batches(
            explain, desc=f"SHAP (permutation) on {len(rows)} samples", indices=rows
        )
    finally:
        np.random.set_state(saved)
        torch.set_num_threads(threads)
    return _collect(rows, parts, n_features, "permutation")


def gradient_shap(
    cache: InferenceCache,
    rows: np.ndarray,
    background: np.ndarray,
    score_fn: ScoreFn,
    *,
    fixed: dict[str, np.ndarray] | None = None,
    n_samples: int = 50,
    stdev: float = 0.0,
    seed: int = 0,
) -> TabularShap:
    """GradientShap over the tabular features of ``rows`` (one pass per batch).

    Per sample ``x``, ``n_samples`` draws of a background row ``b``, a path point
    ``a ~ U(0, 1)`` and input noise ``e ~ N(0, stdev^2)``; the value is the mean of
    ``grad f(b + a (x + e - b)) * (x + e - b)``: captum's ``GradientShap`` (expected
    gradients, a Monte-Carlo estimate of the SHAP values), computed here directly because
    captum draws from the global generators in the order rows are met, which makes a
    sample's value depend on the samples batched with it. Here each sample's draws come from
    its own generator (``seed`` and its dataset index); no global random state is touched.
    """
    adapter = cache.adapter
    column = cache.dataset.modalities.index("tabular")
    state: dict[str, Any] = {}
    supplies = _fixed_supplies(fixed or {}, state, adapter.device)
    bg = np.asarray(background, dtype=np.float32)
    n_bg, n_features = bg.shape
    draws = max(1, int(n_samples))

    def explain(batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert batch.tabular is not None
        b = len(batch)
        dev = batch.tabular.device

        def forward(tab: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
            big = _with_tabular(batch, local, tab, column)
            state["index"] = big.index
            return score_fn(adapter.logits(big), big).float()

        picks = np.empty((b, draws), dtype=np.int64)
        alphas = np.empty((b, draws), dtype=np.float32)
        noise = np.zeros((b, draws, n_features), dtype=np.float32)
        for j, s in enumerate(sample_seeds(seed, "tabular_shap.gradient", batch.index.tolist())):
            rng = np.random.default_rng(s)
            picks[j] = rng.integers(0, n_bg, draws)
            alphas[j] = rng.uniform(0.0, 1.0, draws)
            if stdev > 0:
                noise[j] = rng.normal(0.0, stdev, (draws, n_features))
        x = batch.tabular.float()
        # row j * draws + d is draw d of sample j
        eps = torch.from_numpy(noise.reshape(-1, n_features)).to(dev)
        noisy = x.repeat_interleave(draws, 0) + eps
        base = torch.from_numpy(bg[picks.reshape(-1)]).to(dev)
        alpha = torch.from_numpy(alphas.reshape(-1, 1)).to(dev)
        point = (base + alpha * (noisy - base)).detach().requires_grad_(True)
        local = torch.arange(b, device=batch.index.device).repeat_interleave(draws)
        with substituted(adapter, supplies), torch.enable_grad():
            (grad,) = torch.autograd.grad(forward(point, local).sum(), [point])
        attr = (grad.float() * (noisy - base)).view(b, draws, n_features).mean(1)
        with torch.no_grad(), substituted(adapter, supplies):
            score = forward(x, torch.arange(b, device=batch.index.device))
        values = attr.detach().cpu().numpy()
        score_np = score.cpu().numpy()
        return values, score_np - values.sum(1), score_np

    parts = cache.map_batches(
        explain, grad=True, desc=f"SHAP (gradient) on {len(rows)} samples", indices=rows
    )
    return _collect(rows, parts, n_features, "gradient")


def _collect(
    rows: np.ndarray,
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    n_features: int,
    method: str,
) -> TabularShap:
    if not parts:
        empty = np.zeros(0)
        return TabularShap(np.asarray(rows), np.zeros((0, n_features)), empty, empty, method)
    return TabularShap(
        rows=np.asarray(rows),
        values=np.concatenate([p[0] for p in parts]),
        base=np.concatenate([p[1] for p in parts]),
        score=np.concatenate([p[2] for p in parts]),
        method=method,
    )
