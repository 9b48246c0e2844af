"""Stage 2 of ``subgroups``: one attribute's groups compared -- every group's metrics with a
patient bootstrap, and the best-minus-worst gaps between the judged groups, each with its
bootstrap CI and a permutation p from shuffled group labels."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mmaudit.checks.subgroups.group_metrics import GAP_METRICS, binary_group_table, task_metrics
from mmaudit.checks.subgroups.grouping import Grouping
from mmaudit.checks.subgroups.operating_point import positive_score
from mmaudit.methods.stats import Estimate, bootstrap_groups, percentile_interval


@dataclass
class GroupResult:
    """Everything computed for one attribute."""

    grouping: Grouping
    rows: np.ndarray  # dataset rows analysed
    n: list[int]
    n_pos: list[int]
    judged: list[bool]
    reasons: list[str]
    values: dict[str, np.ndarray]  # metric -> (G,)
    boot: dict[str, np.ndarray]  # metric -> (B, G)
    gaps: dict[str, Estimate] = field(default_factory=dict)  # null_p: permutation p
    pairs: dict[str, tuple[int, int]] = field(default_factory=dict)
    holm_p: dict[str, float | None] = field(default_factory=dict)  # set by publish.holm_corrected


def _add_gap(
    result: GroupResult,
    metric: str,
    gap: float,
    diffs: np.ndarray,
    null: np.ndarray,
    n_boot: int,
    alpha: float,
) -> None:
    """Record one gap: its value, the percentile CI of its resampled values ``diffs``, the
    permutation p against ``null``."""
    lo, hi = percentile_interval(diffs, alpha, n_boot / 2) or (None, None)
    result.gaps[metric] = Estimate(gap, lo, hi, len(result.rows), _range_p(gap, null))


def _range_p(observed: float, null: np.ndarray) -> float | None:
    """p-value of a best-minus-worst gap against its permutation null.

    ``(1 + #null >= observed) / (1 + #null)``; when no permuted gap reaches the observed
    one, the upper normal tail of the null's mean and SD instead, since the count alone
    floors p at 1 / (B + 1), which Holm over many gaps could fail to get under alpha.
    """
    valid = null[np.isfinite(null)]
    if valid.size < 2 or not math.isfinite(observed):
        return None
    exceed = int(np.sum(valid >= observed - 1e-12))
    if exceed:
        return (1 + exceed) / (1 + valid.size)
    sd = float(np.std(valid, ddof=1))
    if sd == 0:
        return 0.0
    z = (observed - float(np.mean(valid))) / sd
    return 0.5 * math.erfc(z / math.sqrt(2))


def code_shuffler(
    codes: np.ndarray, patients: np.ndarray | None
) -> Callable[[np.random.Generator], np.ndarray]:
    """A function giving the group codes shuffled across rows -- across whole patients when
    each patient has one group, so that a patient's studies stay together under the null."""
    if patients is not None:
        _, unit = np.unique(patients, return_inverse=True)
        first = np.full(int(unit.max()) + 1 if unit.size else 0, -2, dtype=np.int64)
        first[unit] = codes  # any row's code; checked just below
        if np.array_equal(first[unit], codes):
            return lambda rng: rng.permutation(first)[unit]
    return lambda rng: rng.permutation(codes)


def analyse_groups(
    grouping: Grouping,
    y: np.ndarray,
    prob: np.ndarray,
    patients: np.ndarray | None,
    kind: str,
    threshold: float,
    *,
    rows: np.ndarray | None = None,
    n_boot: int = 1000,
    n_permutations: int = 1000,
    alpha: float = 0.05,
    ece_bins: int = 10,
    min_group_size: int = 20,
    min_class_size: int = 5,
    seed: int = 0,
) -> GroupResult:
    """Per-group metrics with bootstrap CIs and the gaps between the judged groups.

    One bootstrap (whole patients drawn with replacement from the analysed rows) gives every
    group's metrics on each resample, so per-group CIs and gap CIs come from the same draws.
    A gap is the difference between the best and the worst judged group *as found on the
    full data*, followed through the resamples for its CI. Picking the best and worst of
    several groups makes that difference positive even when the groups do not differ, so
    its p-value comes from a permutation null of the same best-minus-worst statistic: the
    group labels shuffled (across whole patients where each has one group) and the gap
    recomputed ``n_permutations`` times. The equalised-odds difference is the larger of the
    TPR and FPR gaps -- on the full data and on every resample, which gives its CI -- tested
    against the larger of the two permuted gaps.
    Groups below ``min_group_size`` rows or (binary) ``min_class_size`` positives / negatives
    are reported but not judged.
    """
    rows = np.flatnonzero(grouping.codes >= 0) if rows is None else rows
    codes = grouping.codes[rows]
    yy, pp = y[rows], prob[rows]
    n_groups = len(grouping.labels)
    binary = kind == "binary"
    n, n_pos, judged, reasons = [], [], [], []
    for g in range(n_groups):
        members = codes == g
        size = int(members.sum())
        positives = int((yy[members] == 1).sum()) if binary else -1
        negatives = size - positives
        n.append(size)
        n_pos.append(positives)
        if size < min_group_size:
            judged.append(False)
            reasons.append(f"n={size} < {min_group_size}")
        elif binary and min(positives, negatives) < min_class_size:
            judged.append(False)
            reasons.append(f"{positives} positive / {negatives} negative (< {min_class_size})")
        else:
            judged.append(True)
            reasons.append("")

    def all_groups(idx: np.ndarray | None, c: np.ndarray = codes) -> dict[str, np.ndarray]:
        c = c if idx is None else c[idx]
        ys = yy if idx is None else yy[idx]
        ps = pp if idx is None else pp[idx]
        table = {m: np.full(n_groups, math.nan) for m in GAP_METRICS}
        for g in range(n_groups):
            sel = c == g
            for m, v in task_metrics(ys[sel], ps[sel], kind, threshold, ece_bins).items():
                table[m][g] = v
        return table

    # binary targets: every group in one vectorised pass (binary_group_table), which the
    # bootstrap and the permutation null call thousands of times
    score = positive_score(pp) if binary and (codes.size == 0 or codes.min() >= 0) else None
    score_rank = np.unique(score, return_inverse=True)[1] if score is not None else None

    def table_of(idx: np.ndarray | None, c: np.ndarray = codes) -> dict[str, np.ndarray]:
        if score is None or score_rank is None:
            return all_groups(idx, c)
        if idx is None:
            return binary_group_table(c, yy, score, threshold, ece_bins, n_groups, score_rank)
        return binary_group_table(
            c[idx], yy[idx], score[idx], threshold, ece_bins, n_groups, score_rank[idx]
        )

    values = all_groups(None)
    patients_a = patients[rows] if patients is not None else None
    boot = {m: np.full((n_boot, n_groups), math.nan) for m in GAP_METRICS}
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for b, idx in enumerate(bootstrap_groups(len(rows), patients_a, n_boot, rng)):
            for m, v in table_of(idx).items():
                boot[m][b] = v
    result = GroupResult(grouping, rows, n, n_pos, judged, reasons, values, boot)
    ok = np.flatnonzero(judged)
    if ok.size < 2:
        return result
    null = {m: np.full(n_permutations, math.nan) for m in GAP_METRICS}
    shuffle = code_shuffler(codes, patients[rows] if patients is not None else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for b in range(n_permutations):
            table = table_of(None, shuffle(rng))
            for m, v in table.items():
                judged_v = v[ok]
                if np.isfinite(judged_v).all():
                    null[m][b] = float(judged_v.max() - judged_v.min())
    diffs: dict[str, np.ndarray] = {}
    for m in GAP_METRICS:
        v = values[m][ok]
        if not np.isfinite(v).all():
            continue
        hi, lo = int(ok[np.argmax(v)]), int(ok[np.argmin(v)])
        diffs[m] = boot[m][:, hi] - boot[m][:, lo]
        gap = float(values[m][hi] - values[m][lo])
        _add_gap(result, m, gap, diffs[m], null[m], n_boot, alpha)
        result.pairs[m] = (hi, lo)
    if "tpr" in result.gaps and "fpr" in result.gaps:
        # the equalised-odds difference is the larger of the two gaps, on the full data and
        # on every resample (its CI), and against the larger of the two permuted gaps (its p)
        larger = "tpr" if result.gaps["tpr"].value >= result.gaps["fpr"].value else "fpr"
        eod = float(max(result.gaps["tpr"].value, result.gaps["fpr"].value))
        eod_boot = np.maximum(diffs["tpr"], diffs["fpr"])  # NaN: resample left out
        _add_gap(result, "eod", eod, eod_boot, np.fmax(null["tpr"], null["fpr"]), n_boot, alpha)
        result.pairs["eod"] = result.pairs[larger]
    return result
