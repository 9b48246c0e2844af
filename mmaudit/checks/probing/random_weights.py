"""The probing check's random-weights baseline: the same architecture re-initialised, one
extra pass through a fixed subset of the data, each probe repeated on its layers with the
trained probe's permutation count. Does the *input* already carry an attribute, or did
*training* put it there (``origin``)?

Why a subset: the re-initialised model's layer outputs exist nowhere (the cache holds the
trained model's, and new weights change every layer), so they cost a forward of both
encoders per row. On every study that would be a second full sweep, growing with N. A seeded
draw of ``random_max_rows`` rows (default 1,000), stratified by the target and the probed
categorical attributes, keeps the cost fixed; the baseline's CI is that of the subset. Up to
the cap every row is used, exactly as without one.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from mmaudit.checks.contract import CheckOutput
from mmaudit.checks.probing.probes import probe_attribute, probe_estimate
from mmaudit.checks.probing.records import Attribute, ProbeRow, layer_key
from mmaudit.engine.errors import NonFiniteOutputError
from mmaudit.methods.probe_result import ProbeError, ProbeResult
from mmaudit.methods.probes import pool
from mmaudit.methods.stats import Estimate, adjust_pvalues

if TYPE_CHECKING:
    from mmaudit.checks.contract import AuditContext
    from mmaudit.checks.probing.check import ProbingCheck


def random_baseline(
    ctx: AuditContext,
    p: ProbingCheck.Params,
    attributes: list[Attribute],
    layers: list[str],
    rows: list[ProbeRow],
) -> tuple[list[ProbeRow], CheckOutput]:
    """``rows`` with their random-weights probe (``ProbeRow.random``; null_p = its Holm p over
    the random-weights family) where it ran; a randomised model that fails, or a probe that
    fails, costs only the baseline (a note), never the check."""
    found = CheckOutput()
    subset = control_rows(ctx, p, attributes)
    n = len(ctx.target)
    found.metrics["random_baseline.rows"] = int(len(subset))
    if len(subset) < n:
        found.coverage.append(
            f"random-weights baseline on {len(subset)} of {n} rows (random_max_rows ="
            f" {p.random_max_rows}: a seeded draw stratified by the target and the probed"
            " categorical attributes; a fixed cost, not a second sweep)"
        )
    try:
        random_embeddings = (
            randomised_embeddings(ctx, layers)  # every row: the copy's own sweep
            if len(subset) == n
            else randomised_embeddings(ctx, layers, subset)
        )
    except NonFiniteOutputError as exc:
        # the re-drawn weights' fault, not the checkpoint's (whose sweep was finite):
        # only the baseline is lost, so the run must not stop blaming the checkpoint
        found.notes.append(
            "random-weights probe not run: the randomised model produced non-finite"
            f" outputs ({exc}); the audited model's outputs are finite, so the probes"
            " and erasure stand, without the input-vs-training origin"
        )
        return rows, found
    except Exception as exc:  # an optional baseline must not sink the check
        found.notes.append(f"random-weights baseline not computed ({type(exc).__name__}: {exc})")
        return rows, found
    by_name = {a.name: on_rows(a, subset) for a in attributes}
    done: list[tuple[int, ProbeResult, Estimate]] = []
    for i, row in enumerate(rows):
        attr = by_name[row.attribute]
        try:
            # the trained probe's permutations on the same folds: a p-value for "random
            # weights already expose it" (no control task: selectivity is not asked here)
            x = pool(random_embeddings[row.layer])
            result = probe_attribute(
                ctx, p, x, attr, row.result.null.size, control=False, rows=subset
            )
        except ProbeError as exc:
            found.notes.append(f"random-weights probe {attr.name} on {row.layer}: {exc}")
            continue
        done.append((i, result, probe_estimate(ctx, p, result, attr, rows=subset)))
    adjusted = adjust_pvalues([result.p_value for _, result, _ in done], "holm")
    baselined = list(rows)
    for (i, _, e), p_adj in zip(done, adjusted, strict=True):
        row = replace(rows[i], random=Estimate(e.value, e.ci_low, e.ci_high, e.n, float(p_adj)))
        baselined[i] = row
        found.metrics[f"probe_random.{row.attribute}.{layer_key(row.layer)}"] = row.random
    return baselined, found


def control_rows(
    ctx: AuditContext, p: ProbingCheck.Params, attributes: list[Attribute]
) -> np.ndarray:
    """The dataset rows the random-weights baseline runs on, in dataset order: every row up
    to ``random_max_rows``; above it a seeded draw stratified by the target's classes (every
    column of a multilabel one; a continuous target is not stratified on) and each
    categorical attribute probed, cells in proportion to their size (largest remainders),
    each cell given a row while the cap allows, so no level of an attribute is lost by
    chance."""
    n = len(ctx.target)
    cap = p.random_max_rows
    if cap is None or n <= cap:
        return np.arange(n)
    columns = [np.full(n, "", dtype=str)]
    if ctx.config.data.target.kind in ("binary", "multiclass", "multilabel"):
        target = np.asarray(ctx.target)
        keys = (target.reshape(n, -1) if target.ndim > 1 else target[:, None]).astype(str)
        columns = [np.apply_along_axis("|".join, 1, keys)]
    for a in attributes:
        if a.kind == "categorical":
            col = np.full(n, "?", dtype=object)
            col[a.known] = np.asarray(a.values).astype(str)
            columns.append(col.astype(str))
    strata = columns[0]
    for col in columns[1:]:
        strata = np.char.add(np.char.add(strata, "/"), col)
    return _stratified_draw(strata, cap, ctx.rng("probing.random_rows"))


def _stratified_draw(strata: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """``cap`` row indices drawn within the cells of ``strata``, proportionally (Hamilton
    rounding), at least one per cell while ``cap`` allows, sorted."""
    cells, cell = np.unique(strata, return_inverse=True)
    sizes = np.bincount(cell, minlength=len(cells))
    exact = cap * sizes / len(strata)
    take = np.floor(exact).astype(int)
    if cap >= len(cells):
        take = np.maximum(take, 1)
    shuffled = rng.permutation(len(cells))  # equal remainders: a seeded order, not by name
    for c in shuffled[np.argsort(-(exact - take)[shuffled], kind="stable")]:
        if take.sum() >= cap:
            break
        take[c] += int(take[c] < sizes[c])
    while take.sum() > cap:  # one per cell overshot: trim the most over-served cell
        take[int(np.argmax(np.where(take > 1, take - exact, -np.inf)))] -= 1
    picked = [
        rng.choice(np.flatnonzero(cell == c), take[c], replace=False) for c in range(len(cells))
    ]
    return np.sort(np.concatenate(picked))


def on_rows(attr: Attribute, rows: np.ndarray) -> Attribute:
    """``attr`` restricted to the dataset ``rows`` (its values where it is known there)."""
    if len(rows) == len(attr.known):
        return attr
    position = np.cumsum(attr.known) - 1  # the index in ``values`` of each known row
    known = attr.known[rows]
    return replace(attr, known=known, values=np.asarray(attr.values)[position[rows][known]])


def reinitialise(module: Any, seed: int) -> None:
    """Re-draw every weight of ``module`` (CPU) in place, deterministically, leaving the global
    torch RNG as it was: ``reset_parameters()`` where a module has it (its default init),
    N(0, 0.02) for parameters no such module owns (tokens, attention projections)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        touched: set[int] = set()
        for m in module.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
                touched.update(id(q) for q in m.parameters(recurse=False))
        with torch.no_grad():
            for q in module.parameters():
                if id(q) not in touched:
                    q.normal_(0.0, 0.02)


def randomised_embeddings(
    ctx: AuditContext, layers: list[str], rows: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Layer outputs of a re-initialised copy of the audited model, on ``rows`` of the data
    (default every row).

    A deep copy (moved to the CPU to re-draw the weights, then to the audit device) gets a
    second adapter and cache (with the audit's memory budget), so the audited module is never
    touched; one pass over ``rows``, after which the copy is released.
    """
    import copy

    from mmaudit.engine.adapter import ModelAdapter
    from mmaudit.engine.cache import InferenceCache

    ad = ctx.adapter
    clone = copy.deepcopy(ad.module).cpu()
    reinitialise(clone, ctx.seed)
    twin = ModelAdapter(
        clone,
        source=f"{ad.source} (random weights)",
        modalities=ad.modalities,
        keywords=ad.keywords,
        layers=ad.layers,
        detected={},
        device=ad.device,
        precision=ad.precision,
        scriptable_hooks=ad.supports_hooks,
        model_modalities=ad.model_modalities,
    )
    cache = InferenceCache(
        twin,
        ctx.dataset,
        batch_size=ctx.cache.batch_size,
        num_workers=ctx.cache.num_workers,
        seed=ctx.seed,
        progress=ctx.cache.progress,
        target_kind=ctx.cache.target_kind,
        memory_budget_mb=ctx.memory_budget_mb,
    )
    try:
        if rows is None:
            cache.request_layers(layers)
            sweep = cache.sweep()
            return {name: sweep.embeddings[name] for name in layers}
        return cache.layers_on_rows(layers, rows)
    finally:
        cache.close()
