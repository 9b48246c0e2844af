"""Passes of ``InferenceCache`` in which cached encoder outputs stand in for the encoders,
so only what follows them (fusion and head) runs and no image is decoded:
``run_encoder_coalitions`` (every encoder-level removal not yet memoised, stacked along the
batch axis in one pass over the data, with ``coalition_present`` for their presence flags),
``run_substituted`` (named layers return given rows, e.g. an erased embedding) and
``encoder_mean`` (a modality's mean encoder output, the 'mean' removal at this level).

Kept apart from the sweep mechanics (``sweep_pass``) because these passes bypass the
loader's decoding and the encoders altogether and have their own batching (coalitions
stacked per forward, with their own out-of-memory back-off).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from mmaudit.engine.data import Batch
from mmaudit.engine.errors import CheckError, NonFiniteOutputError
from mmaudit.engine.nonfinite_outputs import failure_args, raise_first_failure, require_finite
from mmaudit.engine.removal import RemovalHow, donor_inputs, encoder_rows, tile_batch
from mmaudit.engine.sweep_outputs import LOGITS, SweepResult
from mmaudit.engine.sweep_pass import concat, head_batch, image_placeholder, run_pass

if TYPE_CHECKING:
    from mmaudit.engine.cache import InferenceCache


def encoder_mean(cache: InferenceCache, modality: str) -> torch.Tensor:
    """Mean encoder output over the samples where ``modality`` is present, (1, ...)."""
    full = tensor_view(cache.embeddings(modality))
    has = cache.dataset.present[:, cache.dataset.modalities.index(modality)]
    rows = np.flatnonzero(has) if has.any() else np.arange(len(has))
    total = torch.zeros(full.shape[1:], dtype=torch.float64)
    for lo in range(0, len(rows), 4096):
        total += full[torch.from_numpy(rows[lo : lo + 4096])].double().sum(0)
    return (total / len(rows)).float()[None]


def run_encoder_coalitions(
    cache: InferenceCache, todo: dict[str, dict[str, RemovalHow]], draw: int
) -> dict[str, SweepResult]:
    """Logits of every removal in ``todo`` (key -> removal) at the encoder level, in one
    pass over the data. No image is decoded when the image encoder is substituted (a
    zero placeholder of the right shape stands in: the encoder that would read it never
    runs); text ids and labs are cheap pre-tensorised rows that go to the model too, since
    a fusion may read them (the built-in attention fusion masks its text queries with the
    attention mask). A permuted text or lab encoder output brings its donor's ids and
    mask, or lab values and missing flags, along, as at the input. Each forward stacks up
    to ``4 * batch_size`` rows (the head is far lighter than the encoders); on CUDA
    out-of-memory the number of coalitions per forward halves.

    Raises CheckError when a modality without an encoder layer (``model.layers``) is to
    be removed other than as 'missing': there is no encoder output to replace, and the
    model would silently run on the real input; NonFiniteOutputError when a coalition's
    logits hold a NaN or inf."""
    from mmaudit.engine import distributed

    start = time.perf_counter()
    ds = cache.dataset
    mods = [m for m in ds.modalities if m in cache.adapter.layers]
    lacking = [
        m
        for m in ds.modalities
        if m not in mods and any(r.get(m, "missing") != "missing" for r in todo.values())
    ]
    if lacking:
        raise CheckError(
            f"encoder-level removal of {', '.join(lacking)} needs model.layers to name its"
            " encoder; remove it at the input level instead"
        )
    cached = {m: tensor_view(cache.embeddings(m)) for m in mods}
    means = {
        m: cache.encoder_mean(m) for m in mods if any(r.get(m) == "mean" for r in todo.values())
    }
    perm = cache.permutation(draw)
    removals = list(todo.values())
    mine = distributed.shard(np.arange(len(ds)))
    skip_image = "image" in mods
    moves_inputs = any(r.get(m) == "permute" for r in removals for m in ("text", "tabular"))
    parts: list[list[np.ndarray]] = [[] for _ in removals]
    current: dict[str, torch.Tensor] = {}
    per_forward = max(1, (4 * cache.batch_size) // max(1, min(cache.batch_size, len(mine))))
    keys = list(todo)
    failure: NonFiniteOutputError | None = None
    try:
        with contextlib.ExitStack() as stack, torch.inference_mode():
            for m in mods:
                stack.enter_context(
                    cache.adapter.substitute(m, lambda m=m: current[m])  # type: ignore[misc]
                )
            chunks = [
                mine[lo : lo + cache.batch_size] for lo in range(0, len(mine), cache.batch_size)
            ]
            # the image is decoded (by the loader's workers) only when it goes to the model
            batches = stack.enter_context(
                contextlib.closing(
                    cache.loader.timed(head_batch(cache, c) for c in chunks)
                    if skip_image
                    else cache.iter_batches("coalitions", chunks=chunks)
                )
            )
            record = stack.enter_context(cache._pass("coalitions"))
            for rows, batch in zip(chunks, batches, strict=True):
                batch_start = time.perf_counter()
                donor = head_batch(cache, perm[rows]) if moves_inputs else None
                pos = 0
                while pos < len(removals):
                    group = removals[pos : pos + per_forward]
                    try:
                        for m in mods:
                            current[m] = torch.cat(
                                [
                                    encoder_rows(cached[m], means.get(m), r.get(m), rows, perm)
                                    for r in group
                                ]
                            ).to(cache.adapter.device)
                        stacked = tile_batch(batch, len(group)).replace(
                            present=torch.cat(
                                [coalition_present(cache, batch, r, mods, perm) for r in group]
                            ),
                            **donor_inputs(batch, donor, group),
                        )
                        if skip_image:
                            stacked.image = image_placeholder(cache, len(stacked))
                        logits = cache.adapter.logits(stacked)
                    except torch.cuda.OutOfMemoryError:
                        if per_forward == 1:
                            raise
                        torch.cuda.empty_cache()
                        per_forward = max(1, per_forward // 2)
                        continue
                    cache.model_calls += 1
                    require_finite(
                        {LOGITS: logits},
                        rows,
                        "|".join(keys[pos : pos + len(group)]),
                        cache.dataset.ids,
                        cache.adapter,
                        len(group),
                    )
                    out = logits.float().cpu().numpy()
                    for j, chunk in enumerate(np.split(out, len(group))):
                        parts[pos + j].append(chunk)
                    pos += len(group)
                cache.model_s += time.perf_counter() - batch_start
                record["batches"] += 1
    except NonFiniteOutputError as exc:
        if not distributed.active():
            raise
        failure = exc  # join the gather below with the others (see sweep_pass.run_pass)
        parts = [[] for _ in removals]
    local = [concat(p) for p in parts]
    if distributed.active():
        shared = distributed.gather((local, failure_args(failure)))
        raise_first_failure([f for _, f in shared])
        gathered = [g for g, _ in shared]
    else:
        gathered = [local]
    took = (time.perf_counter() - start) / len(removals)
    return {
        key: SweepResult(np.concatenate([g[j] for g in gathered if len(g[j])]), {}, took)
        for j, key in enumerate(todo)
    }


def coalition_present(
    cache: InferenceCache,
    batch: Batch,
    remove: dict[str, RemovalHow],
    mods: list[str],
    perm: np.ndarray,
) -> torch.Tensor:
    """The presence flags of ``batch`` under ``remove`` at the encoder level: False for
    'missing'; a permuted encoder output brings its donor's flag along, as at the input."""
    ds = cache.dataset
    present = batch.present.clone()
    rows = batch.index.cpu().numpy()
    for m, how in remove.items():
        col = ds.modalities.index(m)
        if how == "missing":
            present[:, col] = False
        elif how == "permute" and m in mods:
            donor = torch.from_numpy(ds.present[perm[rows], col])
            present[:, col] = donor.to(present.device)
    return present


def run_substituted(
    cache: InferenceCache,
    key: str,
    outputs: dict[str, torch.Tensor],
    transform: Callable[[Batch], Batch] | None = None,
) -> SweepResult:
    """A sweep in which each named layer returns its row of ``outputs`` (N, ...) instead of
    running: the modules before it never run, only what follows it does."""
    stack = contextlib.ExitStack()
    for layer, full in outputs.items():

        def supply(full: torch.Tensor = full) -> torch.Tensor:
            assert cache._current is not None
            return full[cache._current.index.cpu()].to(cache.adapter.device)

        stack.enter_context(cache.adapter.substitute(layer, supply))
    return run_pass(cache, key, transform, [], ctx=stack, skip_image="image" in outputs)


def tensor_view(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory, without a copy, so a memory-mapped sweep stays on
    disk. The cache only ever indexes these tensors (a copy) and never writes to them, so a
    read-only memory map is safe here; torch's warning about read-only arrays is silenced for
    this call alone."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)
