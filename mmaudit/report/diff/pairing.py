"""Paired bootstraps of a metric's move: recompute the metric from both reports' saved
per-sample values on the shared ids (resampling whole patients), only when that
reproduces both stored values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from mmaudit.report.diff.metrics import declared_table, stored_value
from mmaudit.report.diff.samples import Samples
from mmaudit.report.document import CheckReport

# Per check, metric regex -> per-sample column template (re.Match.expand): the metric is
# the mean of that column over the rows where it is finite.
PER_SAMPLE_MEANS: dict[str, dict[str, str]] = {
    "saliency": {r"(off_roi|border|pointing|rank_acc)\.(\w+)": r"\2.\1"},
    "ablation": {r"logit_share\.(\w+)": r"share.\1"},
    "attribution": {r"shares\.(\w+)": r"share.\1"},
}


def _patient_groups(ids: Any, base: Samples, new: Samples) -> np.ndarray | None:
    """Patient of each paired id (from either report), or None when neither saved one."""
    lookup = base.patients or new.patients
    if not lookup:
        return None
    return np.array([lookup.get(str(i), f"id:{i}") for i in ids])


def _performance_stat(
    metric: str, b: CheckReport, kind: str, frame: Any
) -> tuple[Callable[..., float], Callable[[str], tuple[np.ndarray, ...]]] | None:
    """The statistic the performance check used for ``metric`` and a function that picks
    its inputs from a merged predictions frame (suffix ``_a`` / ``_b``); None if unknown."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    from mmaudit.methods.classification import accuracy, auprc, macro_auroc
    from mmaudit.methods.stats import auroc, expected_calibration_error, multiclass_ece

    threshold = float(b.params.get("threshold", 0.5))
    bins = int(b.params.get("ece_bins", 15))
    probs = sorted(
        (c[: -len("_a")] for c in frame.columns if c.startswith("prob.") and c.endswith("_a")),
        key=lambda c: int(c.split(".")[1]) if c.split(".")[1].isdigit() else 0,
    )
    if not probs:
        return None
    if kind == "binary" and "target_a" in frame:
        score = probs[-1]  # P(positive): the one sigmoid output or the second softmax column

        def pick(side: str) -> tuple[np.ndarray, ...]:
            return frame["target_a"].to_numpy().astype(int), frame[f"{score}_{side}"].to_numpy()

        def hard(fn: Callable[..., float]) -> Callable[..., float]:
            return lambda y, s: float(fn(y, (s >= threshold).astype(int)))

        stats: dict[str, Callable[..., float]] = {
            "auroc": auroc,
            "auprc": auprc,
            "accuracy": hard(accuracy),
            "balanced_accuracy": hard(balanced_accuracy_score),
            "f1": hard(lambda y, p: f1_score(y, p, zero_division=0)),
            "ece": lambda y, s: expected_calibration_error(y, s, bins),
        }
        return (stats[metric], pick) if metric in stats else None
    if kind == "multiclass" and "target_a" in frame and len(probs) > 1:

        def pick(side: str) -> tuple[np.ndarray, ...]:
            p = frame[[f"{c}_{side}" for c in probs]].to_numpy()
            return frame["target_a"].to_numpy().astype(int), p

        stats = {
            "accuracy": lambda y, p: accuracy(y, p.argmax(1)),
            "balanced_accuracy": lambda y, p: float(balanced_accuracy_score(y, p.argmax(1))),
            "auroc_macro": macro_auroc,
            "ece": lambda y, p: multiclass_ece(y, p, bins),
        }
        return (stats[metric], pick) if metric in stats else None
    if kind == "multilabel":
        labels = [str(c) for c in b.metrics if str(c).startswith("prevalence.")]
        names = [c[len("prevalence.") :] for c in labels]
        targets = [f"target.{n}_a" for n in names]
        if len(names) != len(probs) or any(t not in frame for t in targets):
            return None
        if metric.startswith("auroc.") and metric[len("auroc.") :] in names:
            k = names.index(metric[len("auroc.") :])

            def pick(side: str) -> tuple[np.ndarray, ...]:
                return frame[targets[k]].to_numpy().astype(int), frame[
                    f"{probs[k]}_{side}"
                ].to_numpy()

            return auroc, pick
        if metric == "auroc_macro":

            def pick(side: str) -> tuple[np.ndarray, ...]:
                y = frame[targets].to_numpy().astype(int)
                return y, frame[[f"{c}_{side}" for c in probs]].to_numpy()

            def macro(y: np.ndarray, p: np.ndarray) -> float:
                return float(np.nanmean([auroc(y[:, k], p[:, k]) for k in range(y.shape[1])]))

            return macro, pick
    return None


def paired_move(
    name: str, metric: str, a: CheckReport, b: CheckReport, base: Samples, new: Samples, seed: int
) -> tuple[float, bool, float | None, str] | None:
    """Paired bootstrap (by patient) of ``new - base`` for ``metric`` on the shared ids:
    (delta, significant, p, source), or None when the saved per-sample values cannot
    reproduce both stored values."""
    from mmaudit.methods.stats import paired_bootstrap_diff

    plan = _pairing_plan(name, metric, a, b, base, new)
    if plan is None:
        return None
    stat, arrays_a, arrays_b, ids, source = plan
    for arrays, report in ((arrays_a, a), (arrays_b, b)):
        stored = stored_value(report.metrics[metric])[0]
        try:
            again = float(stat(*arrays))
        except ValueError:
            return None
        if stored is None or not math.isclose(again, stored, rel_tol=1e-6, abs_tol=1e-9):
            return None  # a subset, other params or another definition: do not pretend
    groups = _patient_groups(ids, base, new)
    est = paired_bootstrap_diff(stat, arrays_a, arrays_b, groups=groups, n_boot=1000, seed=seed)
    if est.ci_low is None or est.ci_high is None:
        return None
    significant = est.ci_low > 0 or est.ci_high < 0
    return est.value, significant, est.null_p, source


def _pairing_plan(
    name: str, metric: str, a: CheckReport, b: CheckReport, base: Samples, new: Samples
) -> tuple[Callable[..., float], tuple[np.ndarray, ...], tuple[np.ndarray, ...], Any, str] | None:
    """How to pair ``metric``: statistic, its inputs on each side, shared ids, source."""
    if name == "performance" and base.predictions is not None and new.predictions is not None:
        merged = base.predictions.merge(new.predictions, on="id", suffixes=("_a", "_b"))
        if len(merged) >= 10:
            kind = str(base.report.data.get("target_kind", "binary"))
            found = _performance_stat(metric, b, kind, merged)
            if found is not None:
                stat, pick = found
                return stat, pick("a"), pick("b"), merged["id"], "paired_bootstrap"
    templates = {**PER_SAMPLE_MEANS.get(name, {}), **declared_table(name, "per_sample_means")}
    for pattern, template in templates.items():
        match = re.fullmatch(pattern, metric)
        if match is None:
            continue
        column = match.expand(template)
        ta, tb = base.table(name), new.table(name)
        if ta is None or tb is None or column not in ta or column not in tb:
            return None
        merged = ta[["id", column]].merge(tb[["id", column]], on="id", suffixes=("_a", "_b"))
        if len(merged) < 10:
            return None
        return (
            _nanmean,
            (merged[f"{column}_a"].to_numpy(dtype=float),),
            (merged[f"{column}_b"].to_numpy(dtype=float),),
            merged["id"],
            "paired_bootstrap(per_sample)",
        )
    return None


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")
