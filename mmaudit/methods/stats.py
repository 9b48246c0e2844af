"""Statistics shared by every audit check.

What lives here and why:

* ``Estimate`` -- one number with its uncertainty, the unit every check reports.
* Bootstrap confidence intervals (``bootstrap_ci``, ``paired_bootstrap_diff``,
  ``auroc_bootstrap``).  Medical data sets usually hold several rows (images,
  visits, slices) per patient; rows of one patient are not independent, so when a
  patient column exists we resample *whole patients* with replacement (a cluster
  bootstrap).  Resampling rows instead would treat correlated rows as independent
  and give intervals that are too narrow.
* ``permutation_pvalue`` -- the p-value of an observed statistic against a null
  distribution built by the caller (e.g. by shuffling a modality).
* ``adjust_pvalues`` -- multiplicity control, because an audit runs many tests.
* ``auroc`` and calibration errors (``expected_calibration_error``,
  ``multiclass_ece``).

Every random procedure takes a seed or a ``numpy.random.Generator`` so that a report
is reproducible: the same seed gives the same numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "Estimate",
    "adjust_pvalues",
    "auroc",
    "auroc_bootstrap",
    "CountBootstrap",
    "bootstrap_ci",
    "bootstrap_groups",
    "bootstrap_p_value",
    "expected_calibration_error",
    "multiclass_ece",
    "paired_bootstrap_diff",
    "percentile_interval",
    "permutation_pvalue",
    "weighted_auroc",
]

# Upper bound on the number of elements of one (resamples x rows) block drawn or
# processed at once; keeps memory near 16 MiB per int64 block whatever n and n_boot are.
_BLOCK_ELEMS = 1 << 21


# --------------------------------------------------------------------------- Estimate


def _json_number(x: Any) -> float | int | None:
    """Return ``x`` as a plain Python number, or None if it is missing, NaN or infinite."""
    if x is None:
        return None
    if isinstance(x, (bool, np.bool_)):
        return int(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    value = float(x)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Estimate:
    """A point estimate with an optional confidence interval and null p-value.

    Attributes:
        value: the statistic computed on the full data (NaN when undefined).
        ci_low, ci_high: percentile bootstrap interval, or None when it could not be
            formed (too little data, too few valid resamples).
        n: number of rows the estimate was computed from.
        null_p: p-value against a null hypothesis (e.g. difference == 0), if any.
    """

    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    null_p: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Estimate:
        """The inverse of :meth:`to_dict` (a ``None`` value, i.e. NaN, becomes NaN again)."""
        value = d.get("value")
        return cls(
            float("nan") if value is None else float(value),
            d.get("ci_low"),
            d.get("ci_high"),
            d.get("n"),
            d.get("null_p"),
        )

    def to_dict(self) -> dict[str, float | int | None]:
        """Return a JSON-safe dict: numpy scalars become Python numbers, NaN/inf become None."""
        return {
            "value": _json_number(self.value),
            "ci_low": _json_number(self.ci_low),
            "ci_high": _json_number(self.ci_high),
            "n": _json_number(self.n),
            "null_p": _json_number(self.null_p),
        }


# ------------------------------------------------------------------ resampling plans


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _group_codes(groups: Any, n: int) -> np.ndarray:
    """Map arbitrary hashable group labels to integer codes 0..G-1.

    Uses ``np.unique(return_inverse=True)``; labels numpy cannot sort (mixed types)
    fall back to first-seen order.  A missing label (None or NaN) is not a patient id,
    so each such row becomes its own group rather than all of them being pooled into
    one fake patient.
    """
    arr = np.asarray(groups)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"groups must be 1-D with {n} entries, got shape {arr.shape}")
    if arr.dtype.kind in "fc":
        missing = np.isnan(arr)
    elif arr.dtype.kind == "O":
        missing = np.fromiter((_is_missing(v) for v in arr), dtype=bool, count=n)
    else:
        missing = np.zeros(n, dtype=bool)
    present = arr[~missing]
    try:
        _, inv = np.unique(present, return_inverse=True)
        inv = np.asarray(inv).reshape(-1)
    except TypeError:
        seen: dict[Any, int] = {}
        inv = np.fromiter((seen.setdefault(v, len(seen)) for v in present), dtype=np.int64)
    codes = np.empty(n, dtype=np.int64)
    codes[~missing] = inv
    n_present = int(inv.max()) + 1 if inv.size else 0
    codes[missing] = n_present + np.arange(int(missing.sum()))
    return codes


@dataclass(frozen=True)
class _Plan:
    """How to turn draws of resampling units into row indices / row counts."""

    n: int  # rows
    n_units: int  # resampling units: rows, or groups
    codes: np.ndarray | None  # group code of each row (None: units are rows)
    order: np.ndarray | None  # rows sorted by group code
    starts: np.ndarray | None  # first position of each group in ``order``
    sizes: np.ndarray | None  # rows per group

    def draws(self, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Yield blocks of unit draws, shape (b, n_units), b rows at a time.

        Every consumer (``bootstrap_groups`` and the vectorised AUROC) draws through
        this one method, so the same seed gives exactly the same resamples in both.
        """
        if self.n_units == 0:
            return
        block = max(1, _BLOCK_ELEMS // max(self.n, 1))
        done = 0
        while done < n_boot:
            b = min(block, n_boot - done)
            yield rng.integers(0, self.n_units, size=(b, self.n_units))
            done += b

    def indices(self, draw: np.ndarray) -> np.ndarray:
        """Row indices of one resample given its unit draws (1-D)."""
        if self.codes is None:
            return draw
        assert self.order is not None and self.starts is not None and self.sizes is not None
        sizes = self.sizes[draw]
        total = int(sizes.sum())
        # position k of the output belongs to draw j; its offset inside group draw[j]
        # is k - (start of draw j in the output).
        out_starts = np.cumsum(sizes) - sizes
        pos = np.arange(total) + np.repeat(self.starts[draw] - out_starts, sizes)
        return self.order[pos]

    def counts(self, draws: np.ndarray) -> np.ndarray:
        """How many times each row is in each resample: shape (b, n), int64."""
        b = draws.shape[0]
        flat = (draws + (np.arange(b, dtype=np.int64) * self.n_units)[:, None]).ravel()
        unit_counts = np.bincount(flat, minlength=b * self.n_units).reshape(b, self.n_units)
        if self.codes is None:
            return unit_counts
        return unit_counts[:, self.codes]


def _make_plan(n: int, groups: np.ndarray | None) -> _Plan:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if groups is None:
        return _Plan(n, n, None, None, None, None)
    codes = _group_codes(groups, n)
    n_units = int(codes.max()) + 1 if n else 0
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_units)
    starts = np.cumsum(sizes) - sizes
    return _Plan(n, n_units, codes, order, starts, sizes)


def bootstrap_groups(
    n: int, groups: np.ndarray | None, n_boot: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Yield ``n_boot`` bootstrap resamples of ``range(n)`` as integer index arrays.

    Without ``groups`` each resample draws n rows with replacement.  With ``groups``
    (one label per row, e.g. patient ids; any hashable values) each resample draws
    G groups with replacement, G being the number of distinct groups, and takes all
    rows of every drawn group -- so resamples vary in length, and correlated rows of
    one patient always travel together.  Missing labels (None/NaN) count as
    one-row groups.  ``n == 0`` yields empty arrays.

    The generator consumes ``rng`` lazily, block by block.
    """
    _check_n_boot(n_boot)
    plan = _make_plan(n, groups)
    return _iter_indices(plan, n_boot, rng)


def _iter_indices(plan: _Plan, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    if plan.n_units == 0:
        for _ in range(n_boot):
            yield np.empty(0, dtype=np.int64)
        return
    for block in plan.draws(n_boot, rng):
        for draw in block:
            yield plan.indices(draw)


# ------------------------------------------------------------------------- helpers


def _check_n_boot(n_boot: int) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot}")


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _as_arrays(arrays: Sequence[Any], n: int | None = None) -> tuple[list[np.ndarray], int]:
    """Convert to arrays and check they share their first dimension."""
    out = [np.asarray(a) for a in arrays]
    if not out:
        raise ValueError("at least one array is required")
    for a in out:
        if a.ndim == 0:
            raise ValueError("arrays must be at least 1-D")
    lengths = {a.shape[0] for a in out}
    if n is not None:
        lengths.add(n)
    if len(lengths) != 1:
        raise ValueError(f"arrays must share their first dimension, got lengths {sorted(lengths)}")
    return out, lengths.pop()


def _eval(statistic: Callable[..., float], arrays: Sequence[np.ndarray]) -> float:
    """Evaluate the statistic, returning NaN when it is undefined (ValueError or NaN)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            value = float(statistic(*arrays))
    except ValueError:
        return math.nan
    return value


def _full_value(statistic: Callable[..., float], arrays: Sequence[np.ndarray], n: int) -> float:
    """Statistic on the full data.

    A ValueError on data with >= 2 rows is a real error (bad input) and propagates;
    on 0 or 1 rows it only means "undefined", so NaN is returned.
    """
    if n < 2:
        return _eval(statistic, arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(statistic(*arrays))


def percentile_interval(
    replicates: np.ndarray, alpha: float, min_valid: float
) -> tuple[float, float] | None:
    """Percentile interval of the finite bootstrap replicates, or None when none or fewer
    than ``min_valid`` are finite (the surviving resamples would be a biased subset).
    Every bootstrap in mmaudit reads its interval here."""
    valid = replicates[np.isfinite(replicates)]
    if valid.size == 0 or valid.size < min_valid:
        return None
    lo, hi = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_p_value(replicates: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "= 0" from the finite replicates: twice the smaller
    tail share at or beyond 0, with the +1 correction (never exactly 0), capped at 1."""
    valid = replicates[np.isfinite(replicates)]
    b = valid.size
    p_le = (1 + np.count_nonzero(valid <= 0)) / (1 + b)
    p_ge = (1 + np.count_nonzero(valid >= 0)) / (1 + b)
    return float(min(1.0, 2 * min(p_le, p_ge)))


def _percentile_ci(values: np.ndarray, n_boot: int, alpha: float) -> tuple[float, float] | None:
    """Percentile interval of the valid resample values, or None if under half are valid."""
    return percentile_interval(values, alpha, n_boot / 2)


# ----------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: np.ndarray,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Estimate:
    """Percentile bootstrap CI of ``statistic(*arrays)``, by patient when ``groups`` is given.

    ``value`` is the statistic on the full data.  All arrays are indexed along their
    first axis with the same resample (so 2-D probability matrices work).  Resamples on
    which the statistic is undefined -- it raises ValueError or returns NaN/inf, e.g. a
    single class for AUROC -- are skipped; if fewer than half of the ``n_boot``
    resamples are valid the interval is None, because the surviving resamples are then
    a biased subset.  With fewer than 2 rows or fewer than 2 groups there is nothing to
    resample and the interval is None.
    """
    _check_n_boot(n_boot)
    _check_alpha(alpha)
    arrs, n = _as_arrays(arrays)
    plan = _make_plan(n, groups)
    value = _full_value(statistic, arrs, n)
    if n < 2 or plan.n_units < 2 or not math.isfinite(value):
        return Estimate(value, None, None, n)
    rng = np.random.default_rng(seed)
    boot = np.fromiter(
        (_eval(statistic, [a[idx] for a in arrs]) for idx in _iter_indices(plan, n_boot, rng)),
        dtype=float,
        count=n_boot,
    )
    ci = _percentile_ci(boot, n_boot, alpha)
    if ci is None:
        return Estimate(value, None, None, n)
    return Estimate(value, ci[0], ci[1], n)


def _as_tuple(arrays: Any) -> tuple[Any, ...]:
    if isinstance(arrays, tuple):
        return arrays
    if isinstance(arrays, list) and arrays and all(np.ndim(a) >= 1 for a in arrays):
        return tuple(arrays)
    return (arrays,)


def paired_bootstrap_diff(
    statistic: Callable[..., float],
    arrays_a: tuple[np.ndarray, ...],
    arrays_b: tuple[np.ndarray, ...],
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Estimate:
    """Bootstrap the difference ``statistic(*arrays_b) - statistic(*arrays_a)``.

    Both sides are evaluated on the SAME resample indices (rows, or whole patients when
    ``groups`` is given), which is what makes the comparison paired: the variation the
    two sides share (which patients happened to be drawn) cancels in the difference.
    Typical use: a = predictions with all modalities, b = with one modality ablated.

    ``null_p`` is the two-sided bootstrap p-value for "difference == 0": twice the
    smaller tail fraction of resampled differences at or beyond 0, with a +1 correction
    so it is never exactly 0, capped at 1.  It is consistent with the interval: p <
    alpha roughly when the percentile CI excludes 0.  Resamples where either side is
    undefined are skipped; under half valid gives a None CI and None p.
    """
    _check_n_boot(n_boot)
    _check_alpha(alpha)
    tup_a, tup_b = _as_tuple(arrays_a), _as_tuple(arrays_b)
    arrs_a, n = _as_arrays(tup_a)
    arrs_b, _ = _as_arrays(tup_b, n)
    plan = _make_plan(n, groups)
    value = _full_value(statistic, arrs_b, n) - _full_value(statistic, arrs_a, n)
    if n < 2 or plan.n_units < 2 or not math.isfinite(value):
        return Estimate(value, None, None, n)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot, dtype=float)
    for k, idx in enumerate(_iter_indices(plan, n_boot, rng)):
        sb = _eval(statistic, [a[idx] for a in arrs_b])
        sa = _eval(statistic, [a[idx] for a in arrs_a]) if math.isfinite(sb) else math.nan
        diffs[k] = sb - sa
    ci = _percentile_ci(diffs, n_boot, alpha)
    if ci is None:
        return Estimate(value, None, None, n)
    return Estimate(value, ci[0], ci[1], n, bootstrap_p_value(diffs))


# ------------------------------------------------ resampling by multiplicity counts


class CountBootstrap:
    """Patient-grouped bootstrap of means, paired mean differences and AUROC differences,
    vectorised over resamples.

    Why not ``bootstrap_ci`` / ``paired_bootstrap_diff``: they evaluate a Python statistic
    once per resample, and the saliency check reports a few hundred means and a few dozen
    AUROC differences, which took most of its time on the sample that way. Here the
    resamples are drawn as multiplicity counts per patient (whole patients with replacement
    over the audited rows, or rows when there is no patient column), the same resamples for
    every statistic, and each resample's statistic comes from per-patient sums (means) or
    weighted rank sums (AUROC) at once. The count matrix is kept when small and regenerated
    block by block from the same seeds otherwise, so memory stays bounded for large
    cohorts. A statistic of a subset (one attribute level, the IG subset) is resampled with
    the whole cohort, so the subset's size varies as it would in a new cohort. Intervals are
    percentile intervals; p-values are two-sided bootstrap p-values with the +1 correction
    (``bootstrap_p_value``).
    """

    _BLOCK_ELEMS = 1 << 22

    def __init__(self, groups: np.ndarray | None, n: int, n_boot: int, alpha: float, seed: int):
        if groups is None:
            self.codes = np.arange(n)
        else:
            _, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
            self.codes = np.asarray(inv).reshape(-1)
        self.n_groups = int(self.codes.max()) + 1 if n else 0
        self.n_boot, self.alpha, self.seed = n_boot, alpha, seed
        self.block = max(1, self._BLOCK_ELEMS // max(self.n_groups, 1))
        self._kept = list(self._draw()) if n_boot * self.n_groups <= self._BLOCK_ELEMS else None

    def _draw(self) -> Iterator[np.ndarray]:
        g = max(self.n_groups, 1)
        for j, start in enumerate(range(0, self.n_boot, self.block)):
            b = min(self.block, self.n_boot - start)
            draws = np.random.default_rng([self.seed, j]).integers(0, g, (b, self.n_groups))
            flat = (draws + (np.arange(b) * self.n_groups)[:, None]).ravel()
            yield np.bincount(flat, minlength=b * self.n_groups).reshape(b, -1).astype(float)

    def blocks(self) -> Iterator[np.ndarray]:
        """Resample counts per patient, ``(b, n_groups)`` blocks covering ``n_boot``."""
        return iter(self._kept) if self._kept is not None else self._draw()

    def _ci(self, values: np.ndarray) -> tuple[float | None, float | None]:
        ci = percentile_interval(values, self.alpha, self.n_boot / 2)
        return (None, None) if ci is None or self.n_groups < 2 else ci

    def _p(self, values: np.ndarray) -> float | None:
        ok = values[np.isfinite(values)]
        if ok.size < self.n_boot / 2 or self.n_groups < 2:
            return None
        return bootstrap_p_value(ok)

    def _resampled_means(self, v: np.ndarray, rows: np.ndarray) -> np.ndarray:
        codes = self.codes[rows]
        sums = np.bincount(codes, weights=v, minlength=self.n_groups)
        sizes = np.bincount(codes, minlength=self.n_groups).astype(np.float64)
        num = np.concatenate([c @ sums for c in self.blocks()])
        den = np.concatenate([c @ sizes for c in self.blocks()])
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    def mean(self, values: np.ndarray, rows: np.ndarray) -> Estimate:
        """Mean of the finite ``values`` (one per dataset row in ``rows``) with its CI."""
        ok = np.isfinite(values)
        if not ok.any():
            return Estimate(float("nan"), n=0)
        v = values[ok].astype(np.float64)
        lo, hi = self._ci(self._resampled_means(v, rows[ok]))
        return Estimate(float(v.mean()), lo, hi, int(ok.sum()))

    def diff(self, a: np.ndarray, b: np.ndarray, rows: np.ndarray) -> Estimate:
        """mean(b - a) over rows where both are finite: paired CI and two-sided p (= 0)."""
        ok = np.isfinite(a) & np.isfinite(b)
        if not ok.any():
            return Estimate(float("nan"), n=0)
        d = (b[ok] - a[ok]).astype(np.float64)
        boot = self._resampled_means(d, rows[ok])
        lo, hi = self._ci(boot)
        return Estimate(float(d.mean()), lo, hi, int(ok.sum()), self._p(boot))

    def auroc_diff(self, y: np.ndarray, a: np.ndarray, b: np.ndarray, rows: np.ndarray) -> Estimate:
        """AUROC(y, b) - AUROC(y, a) (macro one-vs-rest for 2-D scores), paired."""
        codes = self.codes[rows]
        full = np.ones((1, len(rows)))
        value = float(weighted_auroc(full, y, b)[0] - weighted_auroc(full, y, a)[0])
        boot = np.concatenate(
            [
                weighted_auroc(c[:, codes], y, b) - weighted_auroc(c[:, codes], y, a)
                for c in self.blocks()
            ]
        )
        lo, hi = self._ci(boot)
        return Estimate(value, lo, hi, len(rows), self._p(boot))


def weighted_auroc(w: np.ndarray, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUROC of each resample (row of multiplicities ``w``, (B, n)): the Mann-Whitney U of
    the weighted data, from cumulative per-tie-block counts; macro over classes for 2-D
    scores; NaN where a resample lacks a class."""
    if s.ndim == 2:
        per = [weighted_auroc(w, (y == k).astype(int), s[:, k]) for k in range(s.shape[1])]
        with np.errstate(invalid="ignore"):
            return np.nanmean(np.stack(per), axis=0)
    order = np.argsort(s, kind="stable")
    ss = s[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    pos = (y[order] == 1).astype(np.float64)
    ws = w[:, order]
    pos_at = np.add.reduceat(ws * pos, starts, axis=1)
    neg_at = np.add.reduceat(ws * (1 - pos), starts, axis=1)
    below = np.cumsum(neg_at, axis=1) - neg_at
    u = (pos_at * (below + 0.5 * neg_at)).sum(1)
    den = pos_at.sum(1) * neg_at.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, u / np.where(den > 0, den, 1.0), np.nan)


# --------------------------------------------------------------------- permutation


def permutation_pvalue(
    observed: float,
    null: np.ndarray,
    alternative: Literal["greater", "less", "two-sided"] = "greater",
) -> float:
    """Monte-Carlo permutation p-value of ``observed`` against a sampled ``null``.

    greater: ``(1 + #(null >= observed)) / (1 + n)``; less: the same with ``<=``;
    two-sided: ``min(1, 2 * min(p_greater, p_less))``, which needs no assumption that
    the null is symmetric about a known centre (AUROC nulls sit at 0.5, differences
    at 0).  The +1 counts the observed arrangement as one of the permutations, so the
    p-value is never 0 and the test is exact (valid) for any number of permutations.
    Null values within a relative 1e-12 of ``observed`` count as ties (as in
    ``scipy.stats.permutation_test``) so floating-point noise in a recomputed statistic
    cannot turn a tie into a strict win.  NaN null entries are dropped; a NaN
    observation or an empty null gives NaN.
    """
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be greater, less or two-sided, got {alternative!r}")
    obs = float(observed)
    values = np.asarray(null, dtype=float).ravel()
    values = values[~np.isnan(values)]
    if math.isnan(obs) or values.size == 0:
        return math.nan
    n = values.size
    tol = 1e-12 * max(abs(obs), 1e-300) if math.isfinite(obs) else 0.0
    p_greater = (1 + np.count_nonzero(values >= obs - tol)) / (1 + n)
    p_less = (1 + np.count_nonzero(values <= obs + tol)) / (1 + n)
    if alternative == "greater":
        return float(p_greater)
    if alternative == "less":
        return float(p_less)
    return float(min(1.0, 2 * min(p_greater, p_less)))


# -------------------------------------------------------------------- multiplicity

_ADJUST_METHODS = ("holm", "bh", "by", "none")


def _adjust_sorted(p: np.ndarray, method: str) -> np.ndarray:
    """Adjusted p-values for ascending-sorted ``p``, step for step as in statsmodels."""
    m = p.size
    if method == "holm":
        out = np.maximum.accumulate(p * np.arange(m, 0, -1))
    else:
        ecdf = np.arange(1, m + 1) / float(m)
        if method == "by":
            ecdf = ecdf / np.sum(1.0 / np.arange(1, m + 1))
        out = np.minimum.accumulate((p / ecdf)[::-1])[::-1]
    return np.minimum(out, 1.0)


def adjust_pvalues(
    pvalues: Sequence[float], method: Literal["holm", "bh", "by", "none"] = "holm"
) -> np.ndarray:
    """Adjust p-values for multiple testing; NaN entries pass through untouched.

    holm: family-wise error control (Holm-Bonferroni), valid under any dependence.
    bh: false discovery rate (Benjamini-Hochberg), for independent or positively
    dependent tests.  by: FDR under arbitrary dependence (Benjamini-Yekutieli).
    none: returns the p-values unchanged.  NaN (a test that could not be run) is
    excluded from the family and stays NaN.

    Results equal ``statsmodels.stats.multitest.multipletests`` (methods "holm",
    "fdr_bh", "fdr_by"; the tests check this), computed with the same formulas in
    numpy because statsmodels' Holm branch calls ``gc.collect()`` on every call, which
    costs about 0.3 s in a process that holds torch and a model.
    """
    if method not in _ADJUST_METHODS:
        raise ValueError(f"method must be one of holm, bh, by, none, got {method!r}")
    p = np.asarray(pvalues, dtype=float).reshape(-1)
    ok = ~np.isnan(p)
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    out = p.copy()
    if method == "none" or not ok.any():
        return out
    finite = p[ok]
    order = np.argsort(finite, kind="stable")
    adjusted = np.empty_like(finite)
    adjusted[order] = _adjust_sorted(finite[order], method)
    out[ok] = adjusted
    return out


# ------------------------------------------------------------------------- AUROC


def _binary_labels(y_true: Any) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {y.shape}")
    if y.dtype == bool:
        return y
    if y.size and not np.all((y == 0) | (y == 1)):
        raise ValueError("y_true must be binary with values in {0, 1}")
    return y == 1


def _scores(score: Any, n: int) -> np.ndarray:
    s = np.asarray(score, dtype=float)
    if s.ndim != 1 or s.shape[0] != n:
        raise ValueError(f"score must be 1-D with {n} entries, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("score contains NaN or infinite values")
    return s


def auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve for binary labels (0/1 or bool); NaN if only one class.

    Computed as the Mann-Whitney U statistic with average ranks for ties
    (``scipy.stats.rankdata``): ``(sum of positive ranks - n1(n1+1)/2) / (n1 n0)``,
    which equals ``sklearn.metrics.roc_auc_score`` exactly in exact arithmetic.  Why not
    sklearn: this function runs thousands of times inside bootstrap and permutation
    loops, where ``roc_auc_score``'s input validation, label inference and ROC-curve
    construction cost several times more than one O(n log n) ranking; it also raises on
    a single class, whereas NaN is what the bootstrap wants to skip.
    """
    from scipy.stats import rankdata

    y = _binary_labels(y_true)
    s = _scores(score, y.shape[0])
    n1 = int(np.count_nonzero(y))
    n0 = y.shape[0] - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = rankdata(s)
    u = float(ranks[y].sum()) - n1 * (n1 + 1) / 2.0
    return u / (n1 * n0)


def _auroc_from_counts(pos: np.ndarray, tie_starts: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUROC of many resamples at once, given each row's multiplicity in each resample.

    ``w`` is (b, n) integer counts with columns sorted by score; ``pos`` marks positive
    columns; ``tie_starts`` are the first columns of each block of equal scores.  A
    resample is the original data with row i repeated w[r, i] times, so its
    Mann-Whitney U is, per tie block u, (positives at u) x (negatives below u + half the
    negatives at u) -- the weighted form of the midrank sum.  All in int64, so exact.
    """
    wpos = w * pos
    wneg = w - wpos
    pos_at = np.add.reduceat(wpos, tie_starts, axis=1)
    neg_at = np.add.reduceat(wneg, tie_starts, axis=1)
    neg_below = np.cumsum(neg_at, axis=1) - neg_at
    twice_u = np.einsum("bu,bu->b", pos_at, 2 * neg_below + neg_at)
    den = pos_at.sum(axis=1) * neg_at.sum(axis=1)
    out = np.full(w.shape[0], math.nan)
    ok = den > 0
    out[ok] = twice_u[ok] / (2.0 * den[ok])
    return out


def auroc_bootstrap(
    y_true: np.ndarray,
    score: np.ndarray,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Estimate:
    """Vectorised equivalent of ``bootstrap_ci(auroc, y_true, score, groups=...)``.

    Draws exactly the same resamples as ``bootstrap_ci`` for the same seed (both go
    through one drawing routine), and returns the same Estimate up to floating-point
    error.  Instead of a Python loop over resamples it sorts the scores once, turns
    each block of resample draws into a (b, n) matrix of row multiplicities (rows, or
    all rows of each drawn patient), and gets every resample's Mann-Whitney U from
    cumulative per-tie-block counts -- a batched rank computation that never re-sorts.
    Works in blocks of about 2M matrix entries, so memory stays bounded for large n.
    Resamples with one class are skipped; under half valid gives a None CI.
    """
    _check_n_boot(n_boot)
    _check_alpha(alpha)
    y = _binary_labels(y_true)
    n = y.shape[0]
    s = _scores(score, n)
    plan = _make_plan(n, groups)
    value = auroc(y, s)
    if n < 2 or plan.n_units < 2 or not math.isfinite(value):
        return Estimate(value, None, None, n)
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    tie_starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    pos_sorted = y[order].astype(np.int64)
    rng = np.random.default_rng(seed)
    boot = np.concatenate(
        [
            _auroc_from_counts(pos_sorted, tie_starts, plan.counts(block)[:, order])
            for block in plan.draws(n_boot, rng)
        ]
    )
    ci = _percentile_ci(boot, n_boot, alpha)
    if ci is None:
        return Estimate(value, None, None, n)
    return Estimate(value, ci[0], ci[1], n)


# ------------------------------------------------------------------- calibration


def _binned_ece(correct: np.ndarray, conf: np.ndarray, n_bins: int) -> float:
    """Weighted mean over equal-width confidence bins of |accuracy - mean confidence|."""
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    n = conf.shape[0]
    if n == 0:
        return math.nan
    # bins [0, 1/B), [1/B, 2/B), ..., [(B-1)/B, 1]; confidence 1.0 goes in the last bin
    idx = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    acc_sum = np.bincount(idx, weights=correct.astype(float), minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    return float(np.abs(acc_sum - conf_sum).sum() / n)


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 15) -> float:
    """Binary expected calibration error with ``n_bins`` equal-width bins on [0, 1].

    ECE = sum over bins of (bin size / n) * |observed positive rate - mean predicted
    probability|: how far, on average over patients, the model's stated risk is from the
    observed frequency.  ``prob`` is P(y = 1).  NaN for empty input.  Note the estimate
    is biased upwards on small samples (about sqrt(n_bins / n)); compare models on the
    same data rather than against zero.
    """
    y = _binary_labels(y_true)
    p = np.asarray(prob, dtype=float)
    if p.ndim != 1 or p.shape[0] != y.shape[0]:
        raise ValueError(f"prob must be 1-D with {y.shape[0]} entries, got shape {p.shape}")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("prob must lie in [0, 1] (and not be NaN)")
    return _binned_ece(y, p, n_bins)


def multiclass_ece(y_true_int: np.ndarray, prob_matrix: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE for a multiclass classifier.

    For each row the confidence is the largest class probability and "correct" means
    the arg-max class equals the label; the binary binned ECE of (correct, confidence)
    is returned.  ``prob_matrix`` is (n, K) with rows summing to about 1; labels are
    integers in [0, K).  NaN for empty input.
    """
    y = np.asarray(y_true_int)
    p = np.asarray(prob_matrix, dtype=float)
    if y.ndim != 1 or p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(
            f"need y_true_int of shape (n,) and prob_matrix of shape (n, K); "
            f"got {y.shape} and {p.shape}"
        )
    if y.size == 0:
        return math.nan
    k = p.shape[1]
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError("y_true_int must hold integer class indices")
        y = y.astype(np.int64)
    if np.any((y < 0) | (y >= k)):
        raise ValueError(f"class indices must lie in [0, {k})")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("prob_matrix must lie in [0, 1] (and not be NaN)")
    pred = np.argmax(p, axis=1)
    conf = p[np.arange(p.shape[0]), pred]
    return _binned_ece(pred == y, conf, n_bins)
