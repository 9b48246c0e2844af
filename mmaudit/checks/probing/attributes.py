"""Which attributes the probing check probes, and in what form: values on the rows where
they are known (missing values and rare levels left out, with a note), whether they can be
probed beyond the target (not when nearly collinear with it), and a note when an attribute
is associated with the target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mmaudit.checks.contract import CheckOutput
from mmaudit.checks.probing.records import Attribute

if TYPE_CHECKING:
    from mmaudit.checks.contract import AuditContext
    from mmaudit.checks.probing.check import ProbingCheck


@dataclass(frozen=True)
class AttributeSelection:
    """The attributes to probe, and per attribute left out why, in a few words with its
    counts (the skip reason and the coverage notes quote them)."""

    attributes: list[Attribute]
    unprobed: dict[str, str]


def select_attributes(
    ctx: AuditContext, p: ProbingCheck.Params
) -> tuple[AttributeSelection, CheckOutput]:
    """The attributes to probe, prepared (``prepare_attribute``), each marked whether it can
    be probed beyond the target; the notes say what was left out and why."""
    found = CheckOutput()
    unprobed: dict[str, str] = {}
    frame = ctx.dataset.attributes
    config = ctx.config.data.attributes
    names = list(frame.columns) if p.attributes is None else list(p.attributes)
    if not names:
        found.notes.append("no data.attributes configured: only the positive control ran")
    attrs: list[Attribute] = []
    for name in names:
        if name not in frame.columns:
            found.notes.append(f"attribute '{name}' is not in data.attributes; left out")
            unprobed[name] = "not in data.attributes"
            continue
        kind = config[name].kind if name in config else "categorical"
        attr, problem = prepare_attribute(
            name, frame[name].to_numpy(), kind, p.max_levels, p.min_level_size
        )
        if problem:
            found.notes.append(problem)
        if attr is None:
            unprobed[name] = unprobed_reason(
                name, frame[name].to_numpy(), kind, p.max_levels, p.min_level_size
            )
            continue
        attrs.append(attr)
        target_kind = ctx.config.data.target.kind
        if p.within_target and target_kind in ("binary", "multiclass"):
            collinear = collinear_with_target(attr, ctx.target, p.min_level_size)
            if collinear:
                attr.beyond_target = False
                found.notes.append(collinear)
        confound = target_association(
            attr, ctx.target, target_kind, p.within_target and attr.beyond_target
        )
        if confound:
            found.notes.append(confound)
    return AttributeSelection(attrs, unprobed), found


def prepare_attribute(
    name: str, raw: np.ndarray, kind: str, max_levels: int, min_level_size: int
) -> tuple[Attribute | None, str]:
    """The attribute's known rows and values, or None with the reason (a note for the report).

    Missing values (NaN / empty) are left out and counted; categorical levels with fewer than
    ``min_level_size`` rows are left out; one level, a constant value or too many levels
    leave nothing to probe.
    """
    series = pd.Series(raw)
    known = ~series.isna().to_numpy()
    notes: list[str] = []
    missing = int((~known).sum())
    if missing:
        notes.append(f"{missing} rows with no value left out")
    if kind == "continuous":
        values = pd.to_numeric(series[known], errors="coerce").to_numpy(dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            idx = np.flatnonzero(known)
            known[idx[~finite]] = False
            values = values[finite]
        if values.size < 4 or float(np.std(values)) == 0.0:
            return None, f"attribute {name}: constant or too few values; not probed"
        return Attribute(name, kind, known, values), _joined(name, notes)
    values = series[known].astype(str).to_numpy()
    levels, counts = np.unique(values, return_counts=True)
    if len(levels) > max_levels:
        return None, (
            f"attribute {name}: {len(levels)} levels (more than max_levels={max_levels});"
            " not probed"
        )
    rare = levels[counts < min_level_size]
    if rare.size:
        notes.append(
            f"levels with fewer than {min_level_size} rows left out: "
            + ", ".join(f"{lv} (n={c})" for lv, c in zip(levels, counts, strict=True) if lv in rare)
        )
        keep = ~np.isin(values, rare)
        idx = np.flatnonzero(known)
        known[idx[~keep]] = False
        values = values[keep]
    if np.unique(values).size < 2:
        only = ", ".join(np.unique(values)) or "none"
        return None, _joined(name, [*notes, f"one level only ({only}): not probed"])
    return Attribute(name, kind, known, values), _joined(name, notes)


def unprobed_reason(
    name: str, raw: np.ndarray, kind: str, max_levels: int, min_level_size: int
) -> str:
    """Why ``prepare_attribute`` left an attribute out, in a few words with its counts
    ("A 3 / B 2 rows, each level needs min_level_size = 10"), for the skip reason."""
    series = pd.Series(raw)
    known = series[~series.isna()]
    if known.empty:
        return "no row has a value"
    if kind == "continuous":
        values = pd.to_numeric(known, errors="coerce").to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        distinct = np.unique(values).size
        return f"{values.size} finite value(s), {distinct} distinct (needs 4, not constant)"
    counts = known.astype(str).value_counts(sort=False).sort_index()
    if len(counts) > max_levels:
        return f"{len(counts)} levels (more than max_levels = {max_levels})"
    shown = " / ".join(f"{level} {c}" for level, c in counts.items())
    if len(counts) == 1:
        return f"one level only, {shown} rows"
    return f"{shown} rows, each level needs min_level_size = {min_level_size}"


def collinear_with_target(attr: Attribute, y: np.ndarray, min_level_size: int) -> str | None:
    """Why the attribute cannot be probed beyond the target, or None when it can.

    Within target classes a categorical attribute needs rows off its majority level: fewer
    than ``min_level_size`` over all classes (the size below which a level is not probed
    at all) and the within-class AUROC rests on a handful of rows. A continuous one needs
    variance left within classes (at least 5 % of its total). Such an attribute is nearly
    the label itself -- a site that is 99 % one class -- so whatever encodes the label
    encodes it: it is judged on the plain probe, its erasure (use) is not tested, and the
    notes say so."""
    target = np.asarray(y)[attr.known]
    if attr.kind == "categorical":
        table = pd.crosstab(attr.values, target)
        off_majority = int((table.sum(axis=0) - table.max(axis=0)).sum())
        if off_majority >= min_level_size:
            return None
        detail = f"only {off_majority} row(s) lie off their class's most common {attr.name}"
    else:
        values = attr.values.astype(np.float64)
        total = float(np.var(values))
        within = float(
            sum(np.var(values[target == c]) * np.mean(target == c) for c in np.unique(target))
        )
        if total == 0 or within >= 0.05 * total:
            return None
        detail = f"{within / total:.1%} of its variance lies within target classes"
    return (
        f"{attr.name} is nearly collinear with the target ({detail}): it cannot be told"
        f" apart from the label, so 'encoded' is judged on the plain probe"
        f" (probe_*.{attr.name}.* = probe_*_marginal.{attr.name}.*) -- a layer that encodes"
        " the label encodes it too; erasure is still done within target classes"
    )


def target_association(
    attr: Attribute, y: np.ndarray, kind: str, within_target: bool = True
) -> str | None:
    """A note when the attribute is associated with the target (p < 0.05): a plain probe can
    then decode it through the disease signal alone. With ``within_target`` the judged
    probes are beyond the target (within target classes) and the note says so; without, it
    warns that layers encoding the target can decode the attribute through it. (The erasure
    is done within target classes either way.)"""
    if kind not in ("binary", "multiclass"):
        return None
    from scipy.stats import chi2_contingency, kruskal

    target = y[attr.known]
    if attr.kind == "categorical":
        table = pd.crosstab(attr.values, target)
        if table.shape[0] < 2 or table.shape[1] < 2:
            return None
        p = float(chi2_contingency(table.to_numpy())[1])
        if kind == "binary":
            rates = (table[table.columns[-1]] / table.sum(axis=1)).round(2)
            detail = "prevalence " + ", ".join(f"{k} {v:.2f}" for k, v in rates.items())
        else:
            detail = f"chi-square p = {p:.2g}"
    else:
        samples = [attr.values[target == c] for c in np.unique(target)]
        if len(samples) < 2 or min(len(v) for v in samples) < 2:
            return None
        p = float(kruskal(*samples).pvalue)
        detail = "mean " + ", ".join(
            f"{c}: {v.mean():.3g}" for c, v in zip(np.unique(target), samples, strict=True)
        )
    if p >= 0.05:
        return None
    head = f"{attr.name} is associated with the target ({detail}; p = {p:.2g}): "
    if within_target:
        return head + (
            f"a plain probe decodes {attr.name} from any layer that encodes the target"
            f" (probe_*_marginal.{attr.name}.*), so 'encoded' is judged within target"
            f" classes (probe_*.{attr.name}.*); erasure is done within target classes so"
            " 'used' is not confounded"
        )
    return head + (
        f"layers that encode the target can decode {attr.name} through it; erasure is done"
        " within target classes so 'used' is not confounded"
    )


def _joined(name: str, notes: list[str]) -> str:
    return f"attribute {name}: " + "; ".join(notes) if notes else ""
