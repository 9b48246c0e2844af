"""Labelings of the rows the analysis compares neighbours by: the target (one factor per
target column when multilabel) and each attribute, continuous ones binned.

Also which factors are usable (two levels at least), which attributes are nuisances
(acquisition / dataset identity) and the strata the subsamples keep in proportion.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from mmaudit.checks.embedding.check import EmbeddingCheck
    from mmaudit.checks.embedding.inputs import EmbeddingInputs

# attribute names taken as acquisition / dataset identity when nuisance_attributes is unset
NUISANCE_HINTS: tuple[str, ...] = (
    "site",
    "scanner",
    "hospital",
    "centre",
    "center",
    "institution",
    "vendor",
    "manufacturer",
    "device",
    "source",
    "dataset",
    "protocol",
)


@dataclass
class Factor:
    """A labeling of the rows: the target (or one target column) or an attribute.

    ``codes`` are integer levels with -1 for unknown; ``values`` keeps a continuous
    attribute's raw numbers (for colouring and ordinal analysis).
    """

    name: str
    codes: np.ndarray
    levels: list[str]
    role: Literal["label", "attribute"]
    values: np.ndarray | None = None


@dataclass(frozen=True)
class Factors:
    """The usable factors, the label ones among them, the nuisance attributes, the strata
    (label | first nuisance attribute, per row) and the notes explaining what was left out."""

    factors: list[Factor]
    labels: list[Factor]
    nuisance: list[Factor]
    strata: np.ndarray
    notes: list[str]


def metric_name(name: str) -> str:
    """``name`` made safe for a dotted metric key."""
    return re.sub(r"[^A-Za-z0-9_\-.]+", "_", str(name)).strip("_") or "unnamed"


def is_missing(v: Any) -> bool:
    """True for None, NA, NaN and blank text."""
    if v is None or v is pd.NA:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return str(v).strip() == ""


def known_codes(codes: np.ndarray) -> np.ndarray:
    """The codes of the rows whose level is known."""
    return codes[codes >= 0]


def _categorical_factor(name: str, values: np.ndarray, role: str) -> Factor:
    missing = np.array([is_missing(v) for v in values], dtype=bool)
    text = np.array(
        ["" if m else str(v) for v, m in zip(values, missing, strict=True)], dtype=object
    )
    levels = sorted(set(text[~missing].tolist()))
    lookup = {lv: i for i, lv in enumerate(levels)}
    codes = np.array([-1 if m else lookup[t] for t, m in zip(text, missing, strict=True)])
    return Factor(name, codes.astype(np.int64), levels, role)  # type: ignore[arg-type]


def _continuous_factor(name: str, values: np.ndarray, bins: list[float] | None) -> Factor:
    v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    known = np.isfinite(v)
    if bins:
        edges = sorted(float(b) for b in bins)
    else:
        edges = (
            sorted(set(np.quantile(v[known], [0.25, 0.5, 0.75]).tolist())) if known.any() else []
        )
    codes = np.full(len(v), -1, dtype=np.int64)
    codes[known] = np.searchsorted(edges, v[known], side="right")
    labels = []
    for i in range(len(edges) + 1):
        if i == 0:
            labels.append(f"<{edges[0]:g}" if edges else "all")
        elif i == len(edges):
            labels.append(f">={edges[-1]:g}")
        else:
            labels.append(f"{edges[i - 1]:g}-{edges[i]:g}")
    used = np.unique(codes[known])
    remap = np.full(len(labels), -1)
    remap[used] = np.arange(len(used))
    codes[known] = remap[codes[known]]
    return Factor(name, codes, [labels[i] for i in used], "attribute", values=v)


def build_factors(inp: EmbeddingInputs) -> list[Factor]:
    """The label factor(s) first, then one factor per attribute (continuous ones binned)."""
    y = np.asarray(inp.target)
    if y.ndim == 2:
        out = [
            Factor(f"label.{metric_name(c)}", y[:, j].astype(np.int64), ["0", "1"], "label")
            for j, c in enumerate(inp.class_names)
        ]
    else:
        levels = list(inp.class_names) or [str(v) for v in np.unique(y)]
        out = [Factor("label", y.astype(np.int64), levels, "label")]
    attrs = inp.attributes
    if attrs is not None:
        for col in attrs.columns:
            values = attrs[col].to_numpy()
            name = metric_name(col)
            if name == "label" or name.startswith("label."):
                name = f"attribute_{name}"  # keep clear of the target's metric names
            if col in inp.continuous:
                f = _continuous_factor(name, values, inp.continuous[col])
            else:
                f = _categorical_factor(name, values, "attribute")
            out.append(f)
    return out


def select_factors(inp: EmbeddingInputs, p: EmbeddingCheck.Params) -> Factors:
    """The usable factors of ``inp``, its nuisance attributes and the strata."""
    notes: list[str] = []
    factors = _usable_factors(build_factors(inp), notes)
    labels = [f for f in factors if f.role == "label"]
    nuisance = _nuisance(factors, p, notes)
    return Factors(factors, labels, nuisance, _strata(labels, nuisance), notes)


def _usable_factors(factors: list[Factor], notes: list[str]) -> list[Factor]:
    keep = []
    for f in factors:
        known = known_codes(f.codes)
        levels = np.unique(known)
        if levels.size < 2:
            what = f"one level ({f.levels[int(levels[0])]!r})" if levels.size else "no values"
            notes.append(
                f"{f.role} '{f.name}' has {what} among the audited rows: neighbour agreement,"
                " silhouette and purity need at least two, so it is left out"
            )
            continue
        keep.append(f)
    return keep


def _nuisance(factors: list[Factor], p: EmbeddingCheck.Params, notes: list[str]) -> list[Factor]:
    attrs = {f.name: f for f in factors if f.role == "attribute"}
    if p.nuisance_attributes is not None:
        names = [metric_name(a) for a in p.nuisance_attributes]
        lacking = [a for a in names if a not in attrs]
        if lacking:
            notes.append(
                f"nuisance_attributes {lacking} are not usable attributes here (known:"
                f" {sorted(attrs)})"
            )
        return [attrs[a] for a in names if a in attrs]
    picked = [f for name, f in attrs.items() if any(h in name.lower() for h in NUISANCE_HINTS)]
    if not picked and attrs:
        notes.append(
            "no attribute is named like an acquisition site / scanner; set"
            " params.nuisance_attributes to test for a dataset-identity axis"
        )
    return picked


def _strata(labels: list[Factor], nuisance: list[Factor]) -> np.ndarray:
    parts = [labels[0].codes.astype(str)] if labels else []
    if nuisance:
        parts.append(nuisance[0].codes.astype(str))
    if not parts:
        return np.zeros(0, dtype=object)
    out = parts[0].astype(object)
    for extra in parts[1:]:
        out = out + "|" + extra
    return out
