"""The memory budget of ``InferenceCache``'s no-gradient forwards.

Every forward of a sweep holds at most what ``runtime.memory_budget_mb`` allows: the
activation memory of one row is measured once per pass and input shape (a forward of one and
of two rows, every tensor alive at once counted; see ``methods.memory_budget``), and a batch
whose rows would not fit is run in chunks of rows that do (the outputs are the same; the rows
per forward chosen are recorded in the pass's record and in ``InferenceCache.timings``).
``memory_plan_notes`` words the passes that were split for the report.

Kept apart from the sweep mechanics (``sweep_pass``) because it is one concern with its own
state (the measured plans, the passes split) that every sweep shares, batched or not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from mmaudit.engine.data import Batch
from mmaudit.methods.memory_budget import MemoryBudget

if TYPE_CHECKING:
    from mmaudit.engine.cache import InferenceCache


def forward_in_chunks(
    cache: InferenceCache,
    batch: Batch,
    layers: list[str],
    store: dict[str, torch.Tensor],
    family: str,
    record: dict[str, Any],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and captured ``layers`` of ``batch``, in forwards of at most the rows that
    fit the memory budget (:func:`rows_per_forward`); ``record`` keeps the smallest, and
    ``cache.split_passes`` the pass families whose batches were split."""
    step = rows_per_forward(cache, batch, family)
    chosen = step if step < len(batch) else cache.batch_size  # a last short batch is whole
    record["rows_per_forward"] = min(chosen, record.get("rows_per_forward", chosen))
    if step >= len(batch):
        cache._current = batch
        logits = cache.adapter.logits(batch)
        cache.model_calls += 1
        return logits, {n: store[n] for n in layers}
    cache.split_passes.add(family)
    parts: list[torch.Tensor] = []
    held: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    for lo in range(0, len(batch), step):
        sub = batch.select(slice(lo, lo + step))
        cache._current = sub  # what a substituted layer reads its rows from
        parts.append(cache.adapter.logits(sub))
        cache.model_calls += 1
        for n in layers:
            held[n].append(store[n])
    cache._current = batch
    return torch.cat(parts), {n: torch.cat(v) for n, v in held.items()}


def rows_per_forward(cache: InferenceCache, batch: Batch, family: str) -> int:
    """Rows of ``batch`` one forward may hold within the memory budget, measured once per
    pass family and per-row input shape by two forwards (one row, then two: the first row
    repeated) whose live tensors are counted; the whole batch without a budget, or when
    the model cannot be measured (a TorchScript module the hooks cannot follow)."""
    if cache.memory is None or len(batch) <= 1:
        return len(batch)
    shape = tuple(
        (name, tuple(t.shape[1:]))
        for name in ("image", "input_ids", "tabular")
        for t in [getattr(batch, name, None)]
        if isinstance(t, torch.Tensor)
    )

    def probe(k: int) -> None:
        sub = batch.select(torch.zeros(k, dtype=torch.long, device=batch.index.device))
        cache._current = sub
        cache.adapter.logits(sub)

    try:
        return cache.memory.rows_per_chunk(family, shape, probe, cache.adapter.module, grad=False)
    except Exception:  # a model the probe cannot follow: whole batches, as before
        return len(batch)
    finally:
        cache._current = batch


def memory_plan_notes(memory: MemoryBudget | None, split: set[str]) -> list[str]:
    """One line: the budget and, per pass whose batches it split (``split``: pass names),
    the measured bytes per row and the rows per forward chosen; empty when nothing was
    split (a budget that holds whole batches changes nothing worth reporting)."""
    if memory is None:
        return []
    plans = [p for name, p in memory.plans.items() if name in split]
    if not plans:
        return []
    parts = "; ".join(p.describe() for p in plans)
    return [f"sweeps split to fit runtime.memory_budget_mb = {memory.budget_mb:g} MB: {parts}"]
