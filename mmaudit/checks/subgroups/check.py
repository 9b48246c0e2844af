"""Check ``subgroups``: who the model fails -- performance per patient / site group and the
gaps between groups, with uncertainty."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, FiniteFloat

from mmaudit.checks.contract import (
    AuditContext,
    Check,
    CheckOutput,
    Finding,
    Requirements,
    ThresholdRule,
    register,
)
from mmaudit.checks.findings import count_judged
from mmaudit.checks.plotting import pyplot
from mmaudit.methods.stats import (
    Estimate,
    adjust_pvalues,
    auroc,
    bootstrap_groups,
    expected_calibration_error,
    multiclass_ece,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

OperatingPoint = Literal["youden", "target_fpr", "fixed"]
GAP_METRICS: tuple[str, ...] = ("auroc", "tpr", "fpr", "ece")


# ----------------------------------------------------------------------------- grouping


@dataclass
class Grouping:
    """One attribute split into groups: a code per row (-1: unknown) and the group names."""

    attribute: str
    codes: np.ndarray
    labels: list[str]  # for people: "F", "40-60"
    keys: list[str]  # for metric names: "F", "40to60"
    missing: int = 0


def metric_key(label: str) -> str:
    """A group name fit for a flat dotted metric name (letters, digits, ``_``, ``-``)."""
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", str(label)).strip("_")
    return key or "blank"


def _number(v: float) -> str:
    return f"{v:g}"


def assign_groups(
    name: str,
    raw: np.ndarray,
    kind: str,
    bins: list[float] | None = None,
    quantile_bins: int = 4,
) -> Grouping:
    """Groups of an attribute: its levels, or bins of a continuous one.

    Continuous attributes use the given bin edges (``[40, 60, 75]`` gives <40, 40-60, 60-75,
    >=75: left-closed), else ``quantile_bins`` quantile bins of the known values. Missing
    values (NaN / empty) get code -1 and are counted in ``missing``.
    """
    series = pd.Series(raw)
    known = ~series.isna().to_numpy()
    codes = np.full(len(series), -1, dtype=np.int64)
    if kind == "continuous":
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
        known &= np.isfinite(values)
        if bins is None:
            qs = np.linspace(0, 1, quantile_bins + 1)[1:-1]
            edges = np.unique(np.quantile(values[known], qs)) if known.any() else np.array([])
        else:
            edges = np.unique(np.asarray(bins, dtype=np.float64))
        codes[known] = np.searchsorted(edges, values[known], side="right")
        labels, keys = [], []
        bounds = [-math.inf, *edges.tolist(), math.inf]
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            if lo == -math.inf:
                labels.append(f"<{_number(hi)}")
                keys.append(f"lt{_number(hi)}")
            elif hi == math.inf:
                labels.append(f">={_number(lo)}")
                keys.append(f"ge{_number(lo)}")
            else:
                labels.append(f"{_number(lo)}-{_number(hi)}")
                keys.append(f"{_number(lo)}to{_number(hi)}")
        used = np.unique(codes[known])
        remap = np.full(len(labels), -1)
        remap[used] = np.arange(used.size)
        codes[known] = remap[codes[known]]
        labels = [labels[i] for i in used]
        keys = [metric_key(keys[i]) for i in used]
    else:
        text = series[known].astype(str).to_numpy()
        levels, inv = np.unique(text, return_inverse=True)
        codes[known] = np.asarray(inv).reshape(-1)
        labels = [str(v) for v in levels]
        keys = [metric_key(v) for v in labels]
    return Grouping(name, codes, labels, keys, int((~known).sum()))


# ----------------------------------------------------------------------------- metrics


def _score(prob: np.ndarray) -> np.ndarray:
    return prob[:, -1]


def operating_threshold(
    y: np.ndarray, score: np.ndarray, how: OperatingPoint, target_fpr: float, fixed: float
) -> float:
    """One global decision threshold on P(positive).

    youden: maximises TPR - FPR; target_fpr: the most sensitive threshold whose FPR is at
    most the target (the highest of equally sensitive ones); fixed: ``fixed``.
    """
    if how == "fixed":
        return float(fixed)
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, score, drop_intermediate=False)
    thr = np.minimum(thr, 1.0)  # sklearn's first threshold is inf (no positives)
    if how == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])
    ok = np.flatnonzero(fpr <= target_fpr)
    if not ok.size:
        return 1.0
    best = ok[tpr[ok] == tpr[ok].max()]
    return float(thr[best].max())


def rates(y: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float]:
    """(TPR, FPR) of the decision ``score >= threshold``; NaN without positives / negatives."""
    pos = y == 1
    pred = score >= threshold
    n1, n0 = int(pos.sum()), int((~pos).sum())
    tpr = float((pred & pos).sum() / n1) if n1 else math.nan
    fpr = float((pred & ~pos).sum() / n0) if n0 else math.nan
    return tpr, fpr


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
        s = _score(prob)
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


def equal_prevalence_rows(y: np.ndarray, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows kept so that every group has the overall prevalence (Glocker et al., 2023).

    In each group the over-represented class is subsampled (without replacement) to the
    ratio of the whole set; the other class is kept whole. Rows with code -1 are dropped.
    """
    known = codes >= 0
    prevalence = float(np.mean(y[known] == 1))
    keep: list[np.ndarray] = []
    for g in np.unique(codes[known]):
        members = np.flatnonzero(codes == g)
        pos, neg = members[y[members] == 1], members[y[members] != 1]
        if prevalence <= 0 or prevalence >= 1 or not pos.size or not neg.size:
            keep.append(members)
            continue
        want_pos = round(prevalence / (1 - prevalence) * neg.size)
        if want_pos <= pos.size:
            keep += [rng.choice(pos, want_pos, replace=False), neg]
        else:
            want_neg = round((1 - prevalence) / prevalence * pos.size)
            keep += [pos, rng.choice(neg, min(want_neg, neg.size), replace=False)]
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, dtype=np.int64)


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
    holm_p: dict[str, float | None] = field(default_factory=dict)  # set by the check


def _percentile(values: np.ndarray, n_boot: int, alpha: float) -> tuple[float | None, float | None]:
    valid = values[np.isfinite(values)]
    if valid.size == 0 or valid.size < n_boot / 2:
        return None, None
    lo, hi = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


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
    lo, hi = _percentile(diffs, n_boot, alpha)
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
    score = _score(pp) if binary and (codes.size == 0 or codes.min() >= 0) else None
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


# ----------------------------------------------------------------------------- the check


def _increasing_edges(edges: list[float]) -> list[float]:
    """``params.bins`` edges as ``data.attributes.*.bins`` takes them: at least one, strictly
    increasing (a typo such as [40, 60, 6] would otherwise sort rows into other groups)."""
    if not edges:
        raise ValueError("give the bin edges, e.g. [40, 60, 75], or leave the attribute out")
    if any(lo >= hi for lo, hi in zip(edges, edges[1:], strict=False)):
        shown = ", ".join(f"{e:g}" for e in edges)
        raise ValueError(f"must be increasing edges, got [{shown}]")
    return edges


@register
class SubgroupsCheck(Check):
    """Performance per attribute group and the gaps between groups, with bootstrap CIs.

    What: for each attribute in ``data.attributes`` (continuous ones binned by
    ``data.attributes.<name>.bins``, ``params.bins`` or quartiles) and each of its groups:
    sample count, prevalence, AUROC, TPR and FPR at one global operating threshold (a target
    FPR, Youden's J, or a fixed probability, chosen on all rows), and calibration (ECE),
    each with a bootstrap CI (resampling patients). Per attribute: the gap between the best
    and worst group for each metric and the equalised-odds difference (the larger of the TPR
    and FPR gaps), with bootstrap CIs and permutation p-values (group labels shuffled by
    patient: the best-minus-worst gap of k groups is positive even when they do not differ)
    Holm-corrected across the judged gaps. Optional
    resampling of each group to the overall prevalence (Glocker et al., 2023), so that gaps
    are not prevalence differences in disguise.
    Why: a model can be good on average and fail a site, a sex or an age band; a gap is
    only a finding when its CI excludes zero and it beats what shuffled groups give, and a
    group of a handful of patients is reported, not judged.
    Metrics: ``group.<attr>.<group>.{n,prevalence,auroc,tpr,fpr,ece}``;
    ``gap.{auroc,tpr,fpr,ece}.<attr>`` and ``eod.<attr>`` (null_p: the Holm-corrected
    permutation p); ``operating_threshold``; ``small_groups.<attr>``.
    Default thresholds (each needs both the CI of the gap above zero, ``ci_low_above: 0``,
    and the Holm-corrected permutation p below 0.05, ``max_p``; an intersection-union
    test): AUROC gap warn > 0.05, fail > 0.10;
    equalised-odds difference warn > 0.10, fail > 0.20; ECE gap warn > 0.05. A group too
    small to judge is a note, not a verdict.
    """

    name = "subgroups"
    description = "per-group AUROC / TPR / FPR / ECE with CIs; gaps and equalised odds"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        attributes: list[str] | None = Field(
            default=None, description="attributes to split by (default: every data.attributes)"
        )
        operating_point: OperatingPoint = Field(
            default="youden", description="global threshold: youden, target_fpr or fixed"
        )
        target_fpr: float = Field(
            default=0.1, gt=0, lt=1, description="FPR of the target_fpr operating point"
        )
        threshold: float = Field(
            default=0.5, gt=0, lt=1, description="probability of the fixed operating point"
        )
        bins: dict[str, Annotated[list[FiniteFloat], AfterValidator(_increasing_edges)]] = Field(
            default={},  # pydantic copies mutable defaults per instance
            description="bin edges per continuous attribute (overrides data.attributes.*.bins)",
        )
        quantile_bins: int = Field(
            default=4, ge=2, description="quantile bins for continuous attributes without edges"
        )
        max_groups: int = Field(
            default=20, ge=2, description="attributes with more groups are skipped (noted)"
        )
        min_group_size: int = Field(
            default=20, ge=2, description="smaller groups are reported, not judged"
        )
        min_class_size: int = Field(
            default=5, ge=1, description="... as are groups with fewer positives or negatives"
        )
        equal_prevalence: bool = Field(
            default=False, description="resample each group to the overall prevalence"
        )
        n_boot: int = Field(default=1000, ge=50, description="bootstrap resamples for CIs")
        n_permutations: int = Field(
            default=1000, ge=50, description="group-label permutations for the gap p-values"
        )
        alpha: float = Field(default=0.05, gt=0, lt=1, description="1 - CI level")
        ece_bins: int = Field(default=10, ge=2, description="bins of the calibration error")

    default_thresholds: ClassVar[dict[str, ThresholdRule]] = {
        "auroc_gap": ThresholdRule(
            metric="gap.auroc.*",
            warn_above=0.05,
            fail_above=0.10,
            max_p=0.05,
            ci_low_above=0.0,
            message="AUROC differs between groups (CI above zero, beyond shuffled groups)",
        ),
        "equalised_odds": ThresholdRule(
            metric="eod.*",
            warn_above=0.10,
            fail_above=0.20,
            max_p=0.05,
            ci_low_above=0.0,
            message="error rates at the operating threshold differ between groups"
            " (equalised-odds difference)",
        ),
        "ece_gap": ThresholdRule(
            metric="gap.ece.*",
            warn_above=0.05,
            max_p=0.05,
            ci_low_above=0.0,
            message="calibration differs between groups",
        ),
    }
    requires: ClassVar[Requirements] = Requirements()

    def run(self, ctx: AuditContext) -> CheckOutput:
        p: SubgroupsCheck.Params = self.params  # type: ignore[assignment]
        out = CheckOutput()
        kind = ctx.config.data.target.kind
        y = ctx.target
        prob = _probs(ctx.cache.sweep().logits, kind)
        threshold = math.nan
        if kind == "binary":
            threshold = operating_threshold(
                y, _score(prob), p.operating_point, p.target_fpr, p.threshold
            )
            out.metrics["operating_threshold"] = threshold
            out.notes.append(
                f"TPR / FPR at one global threshold {threshold:.3f} ({p.operating_point},"
                " chosen on all audited rows)"
            )
        else:
            out.notes.append(f"{kind} target: AUROC and ECE per group; no TPR / FPR / EOD")
        frame = ctx.dataset.attributes
        config = ctx.config.data.attributes
        names = list(frame.columns) if p.attributes is None else list(p.attributes)
        if not names:
            out.notes.append("no data.attributes configured: no groups to compare")
        results: list[GroupResult] = []
        unjudged: dict[str, str] = {}  # attribute -> why no gap, with its counts
        for name in names:
            if name not in frame.columns:
                out.notes.append(f"attribute '{name}' is not in data.attributes; left out")
                unjudged[name] = "not in data.attributes"
                continue
            kind_a = config[name].kind if name in config else "categorical"
            bins = p.bins.get(name, config[name].bins if name in config else None)
            grouping = assign_groups(name, frame[name].to_numpy(), kind_a, bins, p.quantile_bins)
            if grouping.missing:
                out.notes.append(f"{name}: {grouping.missing} rows with no value left out")
            if len(grouping.labels) < 2:
                only = grouping.labels[0] if grouping.labels else "none"
                out.notes.append(f"{name}: one group only ({only}); nothing to compare")
                unjudged[name] = f"one group only ({only})"
                continue
            if len(grouping.labels) > p.max_groups:
                out.notes.append(
                    f"{name}: {len(grouping.labels)} groups (more than max_groups="
                    f"{p.max_groups}); skipped"
                )
                unjudged[name] = f"{len(grouping.labels)} groups (max_groups = {p.max_groups})"
                continue
            rows = None
            if p.equal_prevalence:
                if kind == "binary":
                    rows = equal_prevalence_rows(y, grouping.codes, ctx.rng(f"subgroups:{name}"))
                    out.notes.append(
                        f"{name}: groups resampled to the overall prevalence: {len(rows)} of"
                        f" {int((grouping.codes >= 0).sum())} rows kept"
                    )
                else:
                    out.notes.append("equal_prevalence applies to binary targets only; ignored")
            res = analyse_groups(
                grouping,
                y,
                prob,
                ctx.groups,
                kind,
                threshold,
                rows=rows,
                n_boot=p.n_boot,
                n_permutations=p.n_permutations,
                alpha=p.alpha,
                ece_bins=p.ece_bins,
                min_group_size=p.min_group_size,
                min_class_size=p.min_class_size,
                seed=ctx.seed,
            )
            results.append(res)
            self._group_metrics(res, kind, out)
        self._gap_metrics(results, out)
        self._coverage(results, unjudged, len(y), kind, out)
        floor = 1 / (p.n_permutations + 1)
        if any(e.null_p is not None and e.null_p < floor for r in results for e in r.gaps.values()):
            out.notes.append(
                f"gap p-values below 1/(B+1) = {floor:.2g} (no shuffled gap reached the"
                " observed one) are extrapolated from a normal fit to the permutation null so"
                " that Holm can reach 0.05; read them as"
                f" 'p < {floor:.1g}', not as their digits"
            )
        if results:
            out.tables["groups"] = _group_table(results, p.n_boot, p.alpha)
            if any(r.gaps for r in results):  # an empty table is no table
                out.tables["gaps"] = _gap_table(results)
            out.figures["group_metrics"] = _bars(results, p.n_boot, p.alpha, kind, p.n_permutations)
            if kind == "binary":
                out.figures["roc"] = _roc_figure(results, y, _score(prob), threshold)
        if ctx.groups is not None:
            out.notes.append(
                f"CIs resample {len(np.unique(ctx.groups))} patients, not {len(y)} rows"
            )
        return out

    def _coverage(
        self,
        results: list[GroupResult],
        unjudged: dict[str, str],
        n: int,
        kind: str,
        out: CheckOutput,
    ) -> None:
        """What the verdict rests on: ``judged`` (the gaps the rules can judge: a permutation
        p and a CI), ``rows_used`` (rows of the groups compared), partial-coverage notes
        with counts, and the skip reason, with every attribute's group sizes, when no gap
        could be judged."""
        p: SubgroupsCheck.Params = self.params  # type: ignore[assignment]
        out.judged = count_judged(out.metrics, self.default_thresholds)
        used = np.zeros(n, dtype=bool)
        judged_attrs: list[str] = []
        for res in results:
            sizes = " / ".join(
                f"{label} {size}" for label, size in zip(res.grouping.labels, res.n, strict=True)
            )
            if not res.gaps:
                unjudged[res.grouping.attribute] = f"{sizes} rows"
                continue
            judged_attrs.append(res.grouping.attribute)
            ok = np.flatnonzero(res.judged)
            rows = res.rows[np.isin(res.grouping.codes[res.rows], ok)]
            used[rows] = True
            if len(ok) < len(res.judged) or len(rows) < n:
                small = [
                    f"{res.grouping.labels[g]} ({res.reasons[g]})"
                    for g in range(len(res.judged))
                    if not res.judged[g]
                ]
                out.coverage.append(
                    f"{res.grouping.attribute}: {len(ok)} of {len(res.judged)} groups compared,"
                    f" on {len(rows)} of {n} rows"
                    + (f"; too small to judge: {', '.join(small)}" if small else "")
                )
        out.rows_used = int(used.sum())
        need = f"two groups of at least min_group_size = {p.min_group_size} rows" + (
            f" with at least min_class_size = {p.min_class_size} positives and negatives each"
            if kind == "binary"
            else ""
        )
        listed = "; ".join(f"{name}: {why}" for name, why in unjudged.items())
        if not judged_attrs:
            out.skip_reason = f"no gap could be judged: no attribute has {need}" + (
                f" ({listed})" if listed else " (no data.attributes)"
            )
        elif out.judged == 0:
            out.skip_reason = (
                f"gaps were computed for {', '.join(judged_attrs)} but none has both a"
                " bootstrap CI and a permutation p to judge (too few usable resamples)"
            )
        if judged_attrs and unjudged:
            out.coverage.append(
                f"gaps judged for {len(judged_attrs)} of {len(judged_attrs) + len(unjudged)}"
                f" attributes; not for {listed} (each needs {need})"
            )

    def _group_metrics(self, res: GroupResult, kind: str, out: CheckOutput) -> None:
        p: SubgroupsCheck.Params = self.params  # type: ignore[assignment]
        name = res.grouping.attribute
        small = 0
        for g, key in enumerate(res.grouping.keys):
            base = f"group.{name}.{key}"
            out.metrics[f"{base}.n"] = res.n[g]
            if kind == "binary":
                out.metrics[f"{base}.prevalence"] = res.n_pos[g] / res.n[g] if res.n[g] else None
            for m in GAP_METRICS:
                if not np.isfinite(res.values[m][g]) and not np.isfinite(res.boot[m][:, g]).any():
                    continue
                lo, hi = _percentile(res.boot[m][:, g], p.n_boot, p.alpha)
                out.metrics[f"{base}.{m}"] = Estimate(float(res.values[m][g]), lo, hi, res.n[g])
            if not res.judged[g]:
                small += 1
                out.findings.append(
                    Finding(
                        check=self.name,
                        rule="small_group",
                        severity="note",
                        message=(
                            f"{name} = {res.grouping.labels[g]}: too small to judge"
                            f" ({res.reasons[g]}); shown, left out of the gaps"
                        ),
                        metric=f"{base}.n",
                        value=float(res.n[g]),
                    )
                )
        out.metrics[f"small_groups.{name}"] = small
        if sum(res.judged) < 2:
            out.notes.append(
                f"{name}: fewer than two groups large enough to judge; no gaps computed"
            )

    def _gap_metrics(self, results: list[GroupResult], out: CheckOutput) -> None:
        """Publish every gap with its Holm-corrected permutation p as ``null_p``.

        The default rules ask for that p below 0.05 *and* the gap's CI above zero
        (``max_p`` and ``ci_low_above``): the gap beats what shuffled groups give, and it is
        not a resampling accident. Holm runs across the gaps the default rules judge -- the
        AUROC gap, the equalised-odds difference and the ECE gap of every attribute. The
        TPR and FPR gaps are the two parts of the equalised-odds difference: they carry its
        corrected permutation p rather than adding two more tests to the family.
        """
        flagged = ("auroc", "eod", "ece")
        keys = [(r, m) for r in results for m in flagged if m in r.gaps]
        adjusted = adjust_pvalues(
            [math.nan if r.gaps[m].null_p is None else r.gaps[m].null_p for r, m in keys], "holm"
        )
        for (res, m), p_adj in zip(keys, adjusted, strict=True):
            res.holm_p[m] = None if math.isnan(p_adj) else float(p_adj)
        for res in results:
            name = res.grouping.attribute
            for m in res.gaps:
                if m in ("tpr", "fpr"):
                    res.holm_p[m] = res.holm_p.get("eod")
                e = res.gaps[m]
                res.gaps[m] = Estimate(e.value, e.ci_low, e.ci_high, e.n, res.holm_p.get(m))
                out.metrics[f"eod.{name}" if m == "eod" else f"gap.{m}.{name}"] = res.gaps[m]


def _probs(logits: np.ndarray, kind: str) -> np.ndarray:
    """Probabilities: softmax over several columns (multiclass, two-logit binary), else
    sigmoid (one-logit binary, multilabel)."""
    from mmaudit.engine.cache import logits_to_probs

    if logits.shape[1] > 1 and kind in ("multiclass", "binary"):
        return logits_to_probs(logits, "multiclass")  # a two-logit binary head is a softmax
    return logits_to_probs(logits, "multilabel")


# ----------------------------------------------------------------------------- tables


def _group_table(results: list[GroupResult], n_boot: int, alpha: float) -> pd.DataFrame:
    records: list[dict[str, Any]] = []
    for res in results:
        for g, label in enumerate(res.grouping.labels):
            rec: dict[str, Any] = {
                "attribute": res.grouping.attribute,
                "group": label,
                "n": res.n[g],
                "positives": res.n_pos[g] if res.n_pos[g] >= 0 else None,
            }
            for m in GAP_METRICS:
                lo, hi = _percentile(res.boot[m][:, g], n_boot, alpha)
                rec[m], rec[f"{m}_ci_low"], rec[f"{m}_ci_high"] = res.values[m][g], lo, hi
            rec["judged"] = res.judged[g]
            rec["why_not_judged"] = res.reasons[g]
            records.append(rec)
    return pd.DataFrame(records)


def _gap_table(results: list[GroupResult]) -> pd.DataFrame:
    records = []
    for res in results:
        for m, e in res.gaps.items():
            pair = res.pairs.get(m, (-1, -1))
            labels = res.grouping.labels
            records.append(
                {
                    "attribute": res.grouping.attribute,
                    "metric": m,
                    "gap": e.value,
                    "ci_low": e.ci_low,
                    "ci_high": e.ci_high,
                    "p_perm_holm": e.null_p,
                    "highest": labels[pair[0]] if pair[0] >= 0 else "",
                    "lowest": labels[pair[1]] if pair[1] >= 0 else "",
                }
            )
    return pd.DataFrame(records)


# ----------------------------------------------------------------------------- figures


def p_text(p: float, n_permutations: int) -> str:
    """A gap's p as shown in a figure: ``< 1/(B+1)`` when it lies below what ``B``
    permutations resolve (``_range_p`` extrapolated it from a normal tail, and Holm only
    raises p, so a smaller value is always such an extrapolation; report.json keeps the
    number), else two significant digits."""
    floor = 1 / (n_permutations + 1)
    return f"< {floor:.1g}" if p < floor else f"{p:.2g}"


def _bars(
    results: list[GroupResult], n_boot: int, alpha: float, kind: str, n_permutations: int
) -> Figure:
    """One row per attribute, one panel per metric: groups as bars with 95% CIs."""
    plt = pyplot()
    metrics = list(GAP_METRICS) if kind == "binary" else ["auroc", "ece"]
    fig, axes = plt.subplots(
        len(results),
        len(metrics),
        figsize=(3.0 * len(metrics), 2.5 * len(results) + 0.6),
        squeeze=False,
    )
    for row, res in zip(axes, results, strict=True):
        x = np.arange(len(res.grouping.labels))
        for ax, m in zip(row, metrics, strict=True):
            values = res.values[m]
            cis = [_percentile(res.boot[m][:, g], n_boot, alpha) for g in x]
            lo = np.array([c[0] if c[0] is not None else np.nan for c in cis])
            hi = np.array([c[1] if c[1] is not None else np.nan for c in cis])
            colours = ["C0" if j else "0.75" for j in res.judged]
            ax.bar(x, np.nan_to_num(values), color=colours)
            err = np.vstack([values - lo, hi - values])
            ax.errorbar(
                x,
                values,
                yerr=np.nan_to_num(np.clip(err, 0, None)),
                fmt="none",
                ecolor="k",
                capsize=3,
            )
            ax.set_xticks(
                x,
                [f"{lab}\n(n={n})" for lab, n in zip(res.grouping.labels, res.n, strict=True)],
                fontsize=7,
            )
            title = f"{res.grouping.attribute}: {m}"
            if m in res.gaps and res.gaps[m].null_p is not None:
                shown = p_text(res.gaps[m].null_p, n_permutations)
                title += f"\ngap {res.gaps[m].value:.3f} (p {shown})"
            ax.set_title(title, fontsize=8)
    fig.suptitle(
        "per-group metrics with 95% bootstrap CIs (grey: too small to judge);"
        f" gap p: Holm-corrected permutation p ({n_permutations} shuffles)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def _roc_figure(
    results: list[GroupResult], y: np.ndarray, score: np.ndarray, threshold: float
) -> Figure:
    """Per-group ROC curves for each attribute, the global operating point marked."""
    from sklearn.metrics import roc_curve

    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(3.4 * len(results), 3.4), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        codes = res.grouping.codes[res.rows]
        yy, ss = y[res.rows], score[res.rows]
        for g, label in enumerate(res.grouping.labels):
            sel = codes == g
            if len(np.unique(yy[sel])) < 2:
                continue
            fpr, tpr, _ = roc_curve(yy[sel], ss[sel])
            line = ax.plot(fpr, tpr, lw=1.4, label=f"{label} (AUROC {res.values['auroc'][g]:.2f})")
            t, f = rates(yy[sel], ss[sel], threshold)
            ax.plot(f, t, "o", color=line[0].get_color())
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls=":")
        ax.set_title(res.grouping.attribute)
        ax.set_xlabel("FPR")
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("TPR")
    fig.suptitle(f"ROC per group (dots: the global threshold {threshold:.3f})", fontsize=10)
    fig.tight_layout()
    return fig
