"""The probing check's test of use: each attribute erased from the fused embedding with
LEACE (within target classes) and the head re-run on the result, against erasing random
subspaces of the same rank; and the probe score the erasure leaves, out of sample."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from mmaudit.checks.contract import CheckOutput
from mmaudit.checks.probing.effects import erasure_effects
from mmaudit.checks.probing.predictions import head_probabilities, prob_change, probabilities
from mmaudit.checks.probing.records import Attribute, ErasureRow, null_p_or_nan
from mmaudit.methods.erasure import (
    LinearEraser,
    indicator_matrix,
    leace_fit,
    random_subspace_eraser,
)
from mmaudit.methods.probe_result import ProbeError
from mmaudit.methods.probes import run_probe
from mmaudit.methods.stats import Estimate, adjust_pvalues

if TYPE_CHECKING:
    from mmaudit.checks.contract import AuditContext
    from mmaudit.checks.probing.check import ProbingCheck


def erase_attributes(
    ctx: AuditContext, p: ProbingCheck.Params, attributes: list[Attribute]
) -> tuple[list[ErasureRow], CheckOutput]:
    """One ``ErasureRow`` per attribute that could be erased (the excess over random erasure
    Holm-corrected across them); the notes say which could not and why."""
    found = CheckOutput()
    raw = ctx.cache.embeddings("embedding")
    if raw.ndim != 2:
        found.notes.append(
            f"the fused embedding is not a vector (shape {raw.shape[1:]}): erasure skipped,"
            " so no attribute can be called used or not used"
        )
        return [], found
    x = raw.astype(np.float64)
    kind = ctx.config.data.target.kind
    y = ctx.target
    base = probabilities(ctx.cache.sweep().logits, kind)
    boot = {"groups": ctx.groups, "n_boot": p.n_boot, "alpha": p.alpha, "seed": ctx.seed}

    # erase within target classes: an attribute associated with the target (a site with a
    # higher prevalence) would otherwise take the disease signal with it
    strata = y if kind in ("binary", "multiclass") else None
    if strata is None:
        found.notes.append("multilabel target: erasure is not conditioned on the labels")
    random_probs: dict[int, list[np.ndarray]] = {}
    rows: list[ErasureRow] = []
    for attr in attributes:
        if strata is not None and not attr.beyond_target:
            found.notes.append(
                f"erasure of {attr.name} skipped: nearly collinear with the target, it"
                " leaves too few rows within target classes to find its direction apart"
                " from the label (erasing it across classes would erase the label), so"
                " whether the head uses it is not tested"
            )
            continue
        z = (
            indicator_matrix(attr.values)
            if attr.kind == "categorical"
            else attr.values.astype(np.float64)
        )
        eraser = leace_fit(
            x[attr.known], z, within=strata[attr.known] if strata is not None else None
        )
        if eraser.rank == 0:
            found.notes.append(f"erasure of {attr.name}: no linear trace to erase (rank 0)")
            continue
        erased = head_probabilities(ctx.cache, eraser, x, f"probing:leace:{attr.name}", kind)
        if eraser.rank not in random_probs:
            random_probs[eraser.rank] = [
                head_probabilities(
                    ctx.cache,
                    random_subspace_eraser(
                        x, eraser.rank, ctx.rng(f"probing:erase:{eraser.rank}:{j}"), strata
                    ),
                    x,
                    f"probing:random:{eraser.rank}:{j}",
                    kind,
                )
                for j in range(p.erasure_draws)
            ]
        randoms = random_probs[eraser.rank]
        effects = erasure_effects(y, base, erased, randoms, kind, **boot)
        draw_dp = np.stack([prob_change(base, r, kind) for r in randoms])  # (J, n)
        rows.append(
            ErasureRow(
                attribute=attr.name,
                rank=eraser.rank,
                residual=_residual(ctx, p, x, z, strata, attr),
                dp_draws=draw_dp.mean(axis=1),
                excess_rows=prob_change(base, erased, kind) - draw_dp.mean(axis=0),
                **effects,
            )
        )
    adjusted = adjust_pvalues([null_p_or_nan(r.excess) for r in rows], "holm")
    for row, p_adj in zip(rows, adjusted, strict=True):
        row.p_holm = float(p_adj)
        e = row.excess
        row.excess = Estimate(e.value, e.ci_low, e.ci_high, e.n, row.p_holm)
        a = row.attribute
        found.metrics[f"erasure.rank.{a}"] = row.rank
        found.metrics[f"erasure.dp.{a}"] = row.dp
        found.metrics[f"erasure.dp_random.{a}"] = row.dp_random
        found.metrics[f"erasure.dp_random_sd.{a}"] = row.dp_random_sd
        found.metrics[f"erasure.excess_dp.{a}"] = row.excess
        found.metrics[f"erasure.flip.{a}"] = row.flip
        found.metrics[f"erasure.flip_random.{a}"] = row.flip_random
        found.metrics[f"erasure.dauroc.{a}"] = row.dauroc
        found.metrics[f"erasure.dauroc_random.{a}"] = row.dauroc_random
        found.metrics[f"erasure.residual.{a}"] = row.residual
    return rows, found


def _residual(
    ctx: AuditContext,
    p: ProbingCheck.Params,
    x: np.ndarray,
    z: np.ndarray,
    strata: np.ndarray | None,
    attr: Attribute,
) -> float:
    """The probe score left after erasure, out of sample: each outer fold's eraser is fitted
    on its training rows (chance when LEACE did its job; with erasure within target classes
    the part of the attribute the target explains stays decodable)."""
    xk = x[attr.known]
    sk = strata[attr.known] if strata is not None else None

    def eraser_for(train: np.ndarray) -> LinearEraser:
        return leace_fit(xk[train], z[train], within=sk[train] if sk is not None else None)

    groups = ctx.groups[attr.known] if ctx.groups is not None else None
    try:
        return run_probe(
            xk,
            attr.values,
            attr.kind,  # type: ignore[arg-type]
            groups=groups,
            n_folds=p.n_folds,
            inner_folds=p.inner_folds,
            n_permutations=0,
            n_control=0,
            seed=ctx.seed,
            fold_transform=eraser_for,
        ).score
    except ProbeError:
        return math.nan
