"""Stage 1 of ``subgroups``: an attribute split into groups -- its levels, or bins of a
continuous one -- and the rows each comparison uses (all rows with a value, or each group
resampled to the overall prevalence). Attributes that cannot be compared are said why."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from mmaudit.engine.config import AttributeConfig


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


@dataclass(frozen=True)
class AttributeSplit:
    """One attribute made ready for comparison, or the reason it is not compared.

    ``grouping`` is None exactly when ``skipped`` says why (for the coverage notes);
    ``rows`` are the dataset rows analysed (None: every row with a value); ``notes`` are
    the check's notes about this attribute, in the order it writes them.
    """

    name: str
    notes: list[str] = field(default_factory=list)
    grouping: Grouping | None = None
    rows: np.ndarray | None = None
    skipped: str | None = None


def split_attribute(
    name: str,
    frame: pd.DataFrame,
    configured: dict[str, AttributeConfig],
    *,
    bins: dict[str, list[float]],
    quantile_bins: int,
    max_groups: int,
    equal_prevalence: bool,
    target_kind: str,
    y: np.ndarray,
    rng_for: Callable[[str], np.random.Generator],
) -> AttributeSplit:
    """Group the rows by attribute ``name`` (``bins`` from the check's params override the
    configured ones) and choose the rows to analyse; an attribute that is absent, has one
    group only or more than ``max_groups`` comes back ``skipped``. ``rng_for(salt)`` is
    drawn from only for the equal-prevalence resampling of a binary target."""
    notes: list[str] = []
    if name not in frame.columns:
        notes.append(f"attribute '{name}' is not in data.attributes; left out")
        return AttributeSplit(name, notes, skipped="not in data.attributes")
    kind_a = configured[name].kind if name in configured else "categorical"
    edges = bins.get(name, configured[name].bins if name in configured else None)
    grouping = assign_groups(name, frame[name].to_numpy(), kind_a, edges, quantile_bins)
    if grouping.missing:
        notes.append(f"{name}: {grouping.missing} rows with no value left out")
    if len(grouping.labels) < 2:
        only = grouping.labels[0] if grouping.labels else "none"
        notes.append(f"{name}: one group only ({only}); nothing to compare")
        return AttributeSplit(name, notes, skipped=f"one group only ({only})")
    if len(grouping.labels) > max_groups:
        notes.append(
            f"{name}: {len(grouping.labels)} groups (more than max_groups={max_groups}); skipped"
        )
        return AttributeSplit(
            name, notes, skipped=f"{len(grouping.labels)} groups (max_groups = {max_groups})"
        )
    rows = None
    if equal_prevalence:
        if target_kind == "binary":
            rows = equal_prevalence_rows(y, grouping.codes, rng_for(f"subgroups:{name}"))
            notes.append(
                f"{name}: groups resampled to the overall prevalence: {len(rows)} of"
                f" {int((grouping.codes >= 0).sum())} rows kept"
            )
        else:
            notes.append("equal_prevalence applies to binary targets only; ignored")
    return AttributeSplit(name, notes, grouping=grouping, rows=rows)
