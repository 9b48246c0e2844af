"""The effects of erasing an attribute from the fused embedding on the head's predictions,
each with a paired bootstrap CI against erasing random subspaces of the same rank: mean
probability change, decision flips and change in the task AUROC."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from mmaudit.checks.probing.predictions import (
    decision_flips,
    positive_score,
    prob_change,
    task_auroc,
)
from mmaudit.methods.stats import (
    Estimate,
    bootstrap_groups,
    percentile_interval,
    weighted_auroc,
)


def erasure_effects(
    y: np.ndarray,
    base: np.ndarray,
    erased: np.ndarray,
    randoms: list[np.ndarray],
    kind: str,
    *,
    groups: np.ndarray | None,
    n_boot: int,
    alpha: float,
    seed: int,
) -> dict[str, Estimate]:
    """Every erasure effect with a paired bootstrap CI: the same patient resamples serve the
    attribute's erasure and the random ones, so their difference is paired.

    dp / dp_random: mean per-sample probability change; excess: their difference (with a
    one-sided p-value: does erasing the attribute move predictions more than a random
    subspace?); flip / flip_random: decision flip rates; dauroc / dauroc_random: change in the
    task AUROC. A ``*_random`` value is the mean over the J random draws; each bootstrap
    resample also redraws J of the J draws with replacement, so the reference's CI (and
    the excess's p-value) carry the spread between random subspaces, not only the patient
    sampling -- a few draws that disagree make the reference uncertain. Binary targets:
    each resample's AUROCs come from one weighted rank pass (``_bootstrap``); other targets
    loop over the same patient resamples (``_auroc_boot``).
    """
    n = len(y)
    j = len(randoms)
    dp = prob_change(base, erased, kind)
    flip = decision_flips(base, erased, kind).astype(np.float64)
    dp_draws = [prob_change(base, r, kind) for r in randoms]
    flip_draws = [decision_flips(base, r, kind).astype(np.float64) for r in randoms]
    means = [dp, flip, *dp_draws, *flip_draws]
    probs = [base, erased, *randoms]
    if kind == "binary":
        scores = [positive_score(p) for p in probs]
        m_boot, a_boot = _bootstrap(y == 1, means, scores, groups, n_boot, seed)
    else:
        m_boot, _ = _bootstrap(y, means, [], groups, n_boot, seed)
        a_boot = _auroc_boot(y, probs, kind, groups, n_boot, seed)
    # which J of the J random draws each resample uses (its reference is their mean)
    pick = np.random.default_rng([seed, 1]).integers(0, j, (n_boot, j))

    def reference(per_draw: np.ndarray) -> np.ndarray:
        return np.take_along_axis(per_draw, pick, axis=1).mean(axis=1)

    dp_rand = float(np.mean(dp_draws))
    dp_rand_boot = reference(m_boot[:, 2 : 2 + j])
    flip_rand = float(np.mean(flip_draws))
    base_auc = task_auroc(y, base, kind)
    value = task_auroc(y, erased, kind) - base_auc
    value_random = float(np.mean([task_auroc(y, r, kind) for r in randoms])) - base_auc
    return {
        "dp": _from_boot(float(dp.mean()), m_boot[:, 0], n, n_boot, alpha),
        "dp_random": _from_boot(dp_rand, dp_rand_boot, n, n_boot, alpha),
        "excess": _from_boot(
            float(dp.mean()) - dp_rand, m_boot[:, 0] - dp_rand_boot, n, n_boot, alpha, "greater"
        ),
        "flip": _from_boot(float(flip.mean()), m_boot[:, 1], n, n_boot, alpha),
        "flip_random": _from_boot(flip_rand, reference(m_boot[:, 2 + j :]), n, n_boot, alpha),
        "dauroc": _from_boot(value, a_boot[:, 1] - a_boot[:, 0], n, n_boot, alpha, "two-sided"),
        "dauroc_random": _from_boot(
            value_random, reference(a_boot[:, 2:]) - a_boot[:, 0], n, n_boot, alpha
        ),
    }


def _auroc_boot(
    y: np.ndarray,
    probs: list[np.ndarray],
    kind: str,
    groups: np.ndarray | None,
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """The task AUROC of every probability matrix on each patient resample (B, S), for
    multiclass and multilabel targets: the resamples of ``stats.bootstrap_ci`` for the seed,
    one Python step per resample (a macro AUROC has no single weighted rank pass)."""
    out = np.full((n_boot, len(probs)), np.nan)
    draws = bootstrap_groups(len(y), groups, n_boot, np.random.default_rng(seed))
    for b, idx in enumerate(draws):
        out[b] = [task_auroc(y[idx], p[idx], kind) for p in probs]
    return out


def _bootstrap(
    y: np.ndarray,
    means: list[np.ndarray],
    scores: list[np.ndarray],
    groups: np.ndarray | None,
    n_boot: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each resample's mean of every ``means`` vector (B, M) and AUROC of every score against
    the 0/1 labels ``y`` (B, S), patients drawn whole (the draws of ``stats.bootstrap_ci``).

    A resample is the data with row i repeated w_i times: a mean is ``w @ v / sum(w)``, an
    AUROC the weighted Mann-Whitney U of ``stats.weighted_auroc``. Blocks of resamples keep
    memory near 2M weights whatever n is.
    """
    n = len(y)
    rng = np.random.default_rng(seed)
    m_out = np.full((n_boot, len(means)), np.nan)
    a_out = np.full((n_boot, len(scores)), np.nan)
    stacked = np.stack(means, axis=1) if means else np.zeros((n, 0))
    block = max(1, (1 << 21) // max(n, 1))
    draws = bootstrap_groups(n, groups, n_boot, rng)
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        w = np.stack([np.bincount(next(draws), minlength=n) for _ in range(b)]).astype(np.float64)
        m_out[start : start + b] = (w @ stacked) / w.sum(axis=1, keepdims=True)
        for k, s in enumerate(scores):
            a_out[start : start + b, k] = weighted_auroc(w, y, s)
    return m_out, a_out


def _from_boot(
    value: float,
    boot: np.ndarray,
    n: int,
    n_boot: int,
    alpha: float,
    p_value: Literal["two-sided", "greater"] | None = None,
) -> Estimate:
    """Percentile CI (None under half valid resamples, as in ``stats``) and, if asked, the
    p-value of "no change" from the bootstrap standard error (normal approximation: unlike
    counting resamples beyond zero it is not floored at 2 / (B + 1), which would make Holm
    over many tests unable to flag anything). ``greater`` is one-sided: the alternative is
    a positive value (erasing the attribute moves predictions *more* than a random
    subspace), so a negative value gets p > 0.5, never a small one."""
    ci = percentile_interval(boot, alpha, max(2, n_boot / 2))
    if not math.isfinite(value) or ci is None:
        return Estimate(value, None, None, n)
    lo, hi = ci
    valid = boot[np.isfinite(boot)]
    p = None
    if p_value is not None:
        se = float(np.std(valid, ddof=1))
        if se == 0:  # no resampling variation: the sign of the value decides
            beyond = value > 0 if p_value == "greater" else value != 0
            p = 0.0 if beyond else 1.0
        elif p_value == "greater":
            p = 0.5 * math.erfc(value / se / math.sqrt(2))
        else:
            p = math.erfc(abs(value) / se / math.sqrt(2))
    return Estimate(value, float(lo), float(hi), n, p)
