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
* ``gradient``: captum ``GradientShap`` (expected gradients with random background
  rows and path points). One forward + backward per batch for all samples, so faster
  with many features on a GPU, but a Monte-Carlo estimate (noisy for few samples) that
  needs a model differentiable in the features.

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

from mmaudit.cache import InferenceCache
from mmaudit.data import Batch
from mmaudit.integrated_gradients import ScoreFn, substituted

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
) -> TabularShap:
    """``shap.PermutationExplainer`` over the tabular features of ``rows``.

    ``background`` is (n_bg, F) in the model's (standardised) feature space;
    ``fixed`` maps encoder layer names to cached (N, ...) outputs held constant;
    ``max_evals`` defaults to 10 antithetic permutations (``20 F + 1`` evaluations).
    numpy's global random state, which the explainer seeds and draws from, is restored
    afterwards so nothing else in the run is perturbed.
    """
    import shap

    adapter = cache.adapter
    column = cache.dataset.modalities.index("tabular")
    n_features = background.shape[1]
    evals = int(max_evals) if max_evals else 10 * (2 * n_features + 1)
    state: dict[str, Any] = {}
    supplies = _fixed_supplies(fixed or {}, state, adapter.device)

    def model_fn(x: np.ndarray) -> np.ndarray:
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
            with substituted(adapter, supplies):
                for j in range(len(batch)):
                    state["one"] = batch.select(torch.tensor([j], device=batch.index.device))
                    x = batch.tabular[j : j + 1].float().cpu().numpy()
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
    """captum ``GradientShap`` over the tabular features of ``rows`` (one pass per batch).

    captum draws baselines and path points from numpy's and torch's global generators;
    both are seeded per batch and restored afterwards, so the result is deterministic for
    ``seed`` and the run's other random draws are unaffected.
    """
    from captum.attr import GradientShap

    adapter = cache.adapter
    column = cache.dataset.modalities.index("tabular")
    state: dict[str, Any] = {}
    supplies = _fixed_supplies(fixed or {}, state, adapter.device)
    bg = torch.from_numpy(np.asarray(background, dtype=np.float32)).to(adapter.device)

    def explain(batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert batch.tabular is not None

        def forward(tab: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
            big = _with_tabular(batch, local, tab, column)
            state["index"] = big.index
            return score_fn(adapter.logits(big), big).float()

        local = torch.arange(len(batch), device=batch.index.device)
        x = batch.tabular.float()
        saved = np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]), substituted(adapter, supplies):
                batch_seed = seed + int(batch.index[0])
                torch.manual_seed(batch_seed)
                np.random.seed(batch_seed)
                attr = GradientShap(forward).attribute(
                    x,
                    baselines=bg,
                    n_samples=n_samples,
                    stdevs=stdev,
                    additional_forward_args=(local,),
                )
                with torch.no_grad():
                    score = forward(x, local)
        finally:
            np.random.set_state(saved)
        values = attr.detach().float().cpu().numpy()
        score_np = score.cpu().numpy()
        return values, score_np - values.sum(1), score_np

    parts = cache.map_batches(
        explain, grad=True, desc=f"SHAP (gradient) on {len(rows)} samples", indices=rows
    )
    return _collect(rows, parts, background.shape[1], "gradient")


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
