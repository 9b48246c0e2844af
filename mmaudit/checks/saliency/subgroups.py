"""Every location statistic broken down by every attribute, with a permutation test of the
gap between levels (Holm per statistic over attributes x methods)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mmaudit.checks.contract import CheckOutput
from mmaudit.checks.saliency.maps import Maps
from mmaudit.checks.saliency.metrics import holm_adjusted, scaled, slug
from mmaudit.checks.saliency.setting import Setting
from mmaudit.methods.stats import Estimate, permutation_pvalue

#: location statistics broken down by attribute (off-ROI, pointing and rank need masks;
#: hotspot_share: the share in the method's top off-ROI hotspot box)
SUBGROUP_STATS = ("off_roi", "pointing", "rank_acc", "border", "hotspot_share")


@dataclass(frozen=True)
class Levels:
    """Attribute levels of the mapped image rows (continuous attributes binned)."""

    #: attribute -> level label per mapped row (None where unknown)
    labels: dict[str, np.ndarray]
    #: attribute -> its level labels in display order
    order: dict[str, list[str]]


def attribute_levels(s: Setting, main: Maps) -> Levels:
    """Attribute -> level label per image row (continuous attributes binned at the config's
    bins or the quartiles)."""
    attrs = s.ds.attributes
    cfg_attrs = s.ctx.config.data.attributes
    levels: dict[str, np.ndarray] = {}
    level_order: dict[str, list[str]] = {}
    for name in attrs.columns:
        col = attrs[name].to_numpy()[main.rows]
        spec = cfg_attrs.get(name)
        if spec is not None and spec.kind == "continuous":
            v = col.astype(float)
            edges = spec.bins or list(np.nanquantile(v, [0.25, 0.5, 0.75]))
            edges = sorted(set(float(e) for e in edges if np.isfinite(e)))
            idx = np.digitize(v, edges)
            names = (
                [f"lt{edges[0]:g}"]
                + [f"{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
                + [f"ge{edges[-1]:g}"]
            )
            lab = np.array([names[i] for i in idx], dtype=object)
            lab[~np.isfinite(v)] = None
            level_order[name] = names
        else:
            lab = np.array([None if pd.isna(x) else str(x) for x in col], dtype=object)
            level_order[name] = sorted({x for x in lab if x is not None})
        levels[name] = lab
    return Levels(levels, level_order)


def subgroup_metrics(
    s: Setting,
    main: Maps,
    levels: Levels,
    trusted: dict[str, bool],
    box_chance: dict[str, float],
) -> CheckOutput:
    """Every location statistic (off-ROI, pointing, rank accuracy, border, hotspot share)
    per level of every attribute, and a permutation test of the gap between levels.

    The gap (largest minus smallest level mean) is tested against ``n_permutations``
    shuffles of the attribute (by patient when it is constant within patients) among
    the rows where both the attribute and the statistic are known, one null per
    finiteness pattern shared by the method/statistic columns that have it (see
    :func:`level_gap_tests`); all gaps of one shuffle come from one-hot matrix products.
    Holm runs per statistic over attributes x methods, and untrusted methods lose their
    p-values."""
    out = CheckOutput()
    rows = main.rows
    table: list[dict[str, Any]] = []
    gap_keys: dict[str, list[str]] = {}
    for attr, lab in levels.labels.items():
        known = np.array([x is not None for x in lab])
        uniq = [x for x in levels.order[attr] if x in set(lab[known])]
        if len(uniq) < 2:
            out.notes.append(f"attribute {attr}: fewer than 2 levels among image rows")
            continue
        columns: list[tuple[str, str]] = []
        for stat in SUBGROUP_STATS:
            for m in s.methods:
                if stat not in main.stats[m]:
                    continue
                v = main.stats[m][stat]
                columns.append((stat, m))
                for lev in uniq:
                    sel = lab == lev
                    est = s.boot(v[sel], rows[sel])
                    out.metrics[f"by_attr.{slug(attr)}.{slug(lev)}.{stat}.{m}"] = est
                    if stat == "hotspot_share":
                        out.metrics[f"by_attr.{slug(attr)}.{slug(lev)}.hotspot_enrichment.{m}"] = (
                            scaled(est, 1.0 / box_chance[m])
                        )
                    table.append(
                        {
                            "attribute": attr,
                            "level": lev,
                            "method": m,
                            "statistic": stat,
                            "mean": est.value,
                            "ci_low": est.ci_low,
                            "ci_high": est.ci_high,
                            "n": est.n,
                            "trusted": trusted.get(m, True),
                        }
                    )
        codes = np.array([uniq.index(x) for x in lab[known]])
        values = np.stack([main.stats[m][st][known] for st, m in columns], axis=1)
        # shuffled by patient where the level is constant within patients
        rng = s.ctx.rng(f"saliency.subgroups.{attr}")
        groups = s.bs.codes[rows[known]]
        tests = level_gap_tests(codes, groups, values, len(uniq), rng, s.params.n_permutations)
        for j, (gap, pval, n) in enumerate(tests):
            if gap is None:
                continue
            stat, m = columns[j]
            key = f"subgroup_gap.{slug(attr)}.{stat}.{m}"
            out.metrics[key] = Estimate(gap, n=n, null_p=pval)
            gap_keys.setdefault(stat, []).append(key)
    for keys in gap_keys.values():
        out.metrics.update(holm_adjusted(out.metrics, keys, trusted))
    if table:
        out.tables["subgroups"] = pd.DataFrame(table)
    return out


def _permuted_codes(
    codes: np.ndarray, groups: np.ndarray, rng: np.random.Generator, n: int, block: int
) -> Iterator[np.ndarray]:
    """``n`` permutations of the level ``codes``, in ``(block, len(codes))`` blocks; by patient
    (each patient keeps one level, the levels are shuffled across patients) when the level
    is constant within patients, as patient attributes are, so that a patient's rows move
    together; by row otherwise."""
    uniq, first, inv = np.unique(groups, return_index=True, return_inverse=True)
    per_patient = codes[first]
    by_patient = len(uniq) < len(codes) and np.array_equal(per_patient[inv], codes)
    unit = per_patient if by_patient else codes
    for start in range(0, n, block):
        b = min(block, n - start)
        drawn = rng.permuted(np.broadcast_to(unit, (b, len(unit))), axis=1)
        yield drawn[:, inv] if by_patient else drawn


def level_gap_tests(
    codes: np.ndarray,
    groups: np.ndarray,
    values: np.ndarray,
    n_levels: int,
    rng: np.random.Generator,
    n_permutations: int,
) -> list[tuple[float | None, float | None, int]]:
    """(observed level gap, permutation p, n) per column of ``values`` (rows x statistics,
    NaN where missing); None for a column with under 4 values or one level.

    The null of a column shuffles the level codes among the rows where that column is
    finite, so observed and null gaps rest on the same level counts. Where NaN depends on
    the level (dead maps follow the predicted class; ROI masks come from one site), a null
    built over every row would mix the levels into balanced counts and be too narrow.
    Columns sharing a finiteness pattern share one null, so the test stays vectorised.
    """
    finite = np.isfinite(values)
    res: list[tuple[float | None, float | None, int]] = [(None, None, 0)] * values.shape[1]
    patterns: dict[bytes, list[int]] = {}
    for j in range(values.shape[1]):
        patterns.setdefault(finite[:, j].tobytes(), []).append(j)
    for cols in patterns.values():
        ok = finite[:, cols[0]]
        if ok.sum() < 4 or len(np.unique(codes[ok])) < 2:
            continue
        v = values[ok][:, cols]
        observed = _level_gaps(codes[ok][None], v, n_levels)[0]
        block = max(1, (1 << 21) // (int(ok.sum()) * n_levels))  # one-hot block of 16 MB at most
        null = np.concatenate(
            [
                _level_gaps(perms, v, n_levels)
                for perms in _permuted_codes(codes[ok], groups[ok], rng, n_permutations, block)
            ]
        )
        for i, j in enumerate(cols):
            p = permutation_pvalue(observed[i], null[:, i], "greater")
            res[j] = (float(observed[i]), p, int(ok.sum()))
    return res


def _level_gaps(perms: np.ndarray, values: np.ndarray, n_levels: int) -> np.ndarray:
    """Largest minus smallest level mean of every column of ``values`` ``(n, K)``, NaN rows
    left out, under every row of level codes ``perms`` ``(P, n)``: ``(P, K)`` from one-hot
    matrix products (a level without values is left out; one level left gives 0)."""
    finite = np.isfinite(values)
    v = np.where(finite, values, 0.0)
    onehot = (perms[:, None, :] == np.arange(n_levels)[None, :, None]).astype(np.float64)
    sums = onehot @ v  # (P, L, K)
    counts = onehot @ finite.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / counts, np.nan)
    return np.fmax.reduce(means, axis=1) - np.fmin.reduce(means, axis=1)
