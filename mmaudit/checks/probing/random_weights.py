"""The probing check's random-weights baseline: the same architecture re-initialised, one
extra pass through the data, each probe repeated on its layers with the trained probe's
folds and permutations. Does the *input* already carry an attribute, or did *training*
put it there (``origin``)?"""

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
    try:
        random_embeddings = randomised_embeddings(ctx, layers)
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
    by_name = {a.name: a for a in attributes}
    done: list[tuple[int, ProbeResult, Estimate]] = []
    for i, row in enumerate(rows):
        attr = by_name[row.attribute]
        try:
            # the trained probe's permutations on the same folds: a p-value for "random
            # weights already expose it" (no control task: selectivity is not asked here)
            x = pool(random_embeddings[row.layer])
            result = probe_attribute(ctx, p, x, attr, row.result.null.size, control=False)
        except ProbeError as exc:
            found.notes.append(f"random-weights probe {attr.name} on {row.layer}: {exc}")
            continue
        done.append((i, result, probe_estimate(ctx, p, result, attr)))
    adjusted = adjust_pvalues([result.p_value for _, result, _ in done], "holm")
    baselined = list(rows)
    for (i, _, e), p_adj in zip(done, adjusted, strict=True):
        row = replace(rows[i], random=Estimate(e.value, e.ci_low, e.ci_high, e.n, float(p_adj)))
        baselined[i] = row
        found.metrics[f"probe_random.{row.attribute}.{layer_key(row.layer)}"] = row.random
    return baselined, found


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


def randomised_embeddings(ctx: AuditContext, layers: list[str]) -> dict[str, np.ndarray]:
    """Layer outputs of a re-initialised copy of the audited model, through the same data.

    A deep copy (moved to the CPU to re-draw the weights, then to the audit device) gets a
    second adapter and cache, so the audited module is never touched; one pass.
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
    )
    cache.request_layers(layers)
    sweep = cache.sweep()
    return {name: sweep.embeddings[name] for name in layers}
