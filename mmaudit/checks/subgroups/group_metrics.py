"""The metrics ``subgroups`` compares between groups -- AUROC, TPR, FPR and ECE -- of one
group, or of every group at once in a vectorised pass (what the bootstrap and the
permutation null call thousands of times)."""

from __future__ import annotations

import math

import numpy as np

from mmaudit.checks.subgroups.operating_point import positive_score, rates
from mmaudit.methods.stats import auroc, expected_calibration_error, multiclass_ece

GAP_METRICS: tuple[str, ...] = ("auroc", "tpr", "fpr", "ece")


def binary_group_table(
    codes: np.ndarray,
    y: np.ndarray,
    score: np.ndarray,
    threshold: float,
    ece_bins: int,
    n_groups: int,
    score_rank: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """AUROC, TPR, FPR and ECE of every group at once (binary target), (G,) each.

    The same numbers as :func:`task_metrics` group by group (AUROC from within-group
    mid-ranks, ties counted half), in a few bincounts and one sort instead of a Python loop
    over groups: the permutation null evaluates it a thousand times per attribute.
    ``score_rank`` (the dense rank of ``score``) may be passed to save its sort.
    """
    g = n_groups
    pos = (y == 1).astype(float)
    n_g = np.bincount(codes, minlength=g).astype(float)
    n1 = np.bincount(codes, weights=pos, minlength=g)
    n0 = n_g - n1
    pred = (score >= threshold).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.bincount(codes, weights=pred * pos, minlength=g) / n1
        fpr = np.bincount(codes, weights=pred * (1 - pos), minlength=g) / n0
    if score_rank is None:
        score_rank = np.unique(score, return_inverse=True)[1]
    from scipy.stats import rankdata

    # mid-ranks of the score within each group: rank the (group, score) pairs, then subtract
    # the rows of the groups before
    overall = rankdata(codes.astype(np.int64) * (len(score) + 1) + score_rank)
    before = np.concatenate([[0.0], np.cumsum(n_g)[:-1]])
    within = overall - before[codes]
    rank_sum = np.bincount(codes, weights=within * pos, minlength=g)
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc_g = (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0)
    bins = np.minimum((score * ece_bins).astype(np.int64), ece_bins - 1)
    cell = codes * ece_bins + bins
    gap = np.bincount(cell, weights=pos - score, minlength=g * ece_bins).reshape(g, ece_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        ece = np.abs(gap).sum(axis=1) / n_g
    return {"auroc": auroc_g, "tpr": tpr, "fpr": fpr, "ece": ece}


def task_metrics(
    y: np.ndarray, prob: np.ndarray, kind: str, threshold: float, ece_bins: int
) -> dict[str, float]:
    """AUROC, TPR, FPR (binary) and ECE of one group; NaN where undefined."""
    out: dict[str, float] = {}
    if y.shape[0] == 0:
        return dict.fromkeys(GAP_METRICS, math.nan)
    if kind == "binary":
        s = positive_score(prob)
        out["auroc"] = auroc(y, s)
        out["tpr"], out["fpr"] = rates(y, s, threshold)
        out["ece"] = expected_calibration_error(y, s, ece_bins)
        return out
    if kind == "multiclass":
        per = [auroc(y == k, prob[:, k]) for k in range(prob.shape[1])]
        out["ece"] = multiclass_ece(y, prob, ece_bins)
    else:
        per = [auroc(y[:, k], prob[:, k]) for k in range(prob.shape[1])]
        out["ece"] = float(
            np.mean(
                [
                    expected_calibration_error(y[:, k], prob[:, k], ece_bins)
                    for k in range(y.shape[1])
                ]
            )
        )
    finite = [v for v in per if math.isfinite(v)]
    out["auroc"] = float(np.mean(finite)) if finite else math.nan
    return out
