"""One pass of ``InferenceCache`` over the data: ``run_pass`` shards the rows, persists or
keeps each finished batch and gathers every rank's results in dataset order; ``compute``
runs the model batch by batch on what the loader brings (or on batches that decode no image:
``head_batch``, ``placeholder_batch``) and checks every output finite.

Kept apart from the cache's public API (which sweep is memoised under which key) because
this is the mechanics every sweep shares: base, extra layer, subset, ablated at the input
and substituted sweeps all run through here; the memory-budget chunking of each forward is
``chunked_forward``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmaudit.engine.chunked_forward import forward_in_chunks
from mmaudit.engine.data import Batch
from mmaudit.engine.errors import NonFiniteOutputError
from mmaudit.engine.host_memory import trim_freed_pages, trims_per_batch
from mmaudit.engine.nonfinite_outputs import failure_args, raise_first_failure, require_finite
from mmaudit.engine.shards import ShardFiles
from mmaudit.engine.sweep_outputs import LOGITS, SweepResult

if TYPE_CHECKING:
    from mmaudit.engine.cache import InferenceCache


def run_pass(
    cache: InferenceCache,
    key: str,
    transform: Callable[[Batch], Batch] | None,
    layers: list[str],
    ctx: Any = None,
    persist: bool = False,
    skip_image: bool = False,
    donors: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> SweepResult:
    """One pass over ``rows`` of the dataset (default all): this rank's shard in batches,
    results gathered from every rank in dataset order (``skip_image``: no image decoded,
    see ``head_batch``; ``donors``: each batch's donor rows, ``donors[rows]``, are
    decoded with it, see ``compute``). With ``persist`` (and all rows) and a work
    folder, each finished batch goes straight into memory-mapped arrays on disk (see
    ``ShardFiles``), which a resumed run reuses; in one process the result *is* those
    read-only memory maps, so RAM never holds the whole sweep. With several processes
    every rank then holds the gathered arrays in RAM.

    Raises NonFiniteOutputError on the first batch with a NaN or inf output (batches
    finished before it stay on disk for ``--resume``); under torchrun the failing rank
    still joins the gather, so every rank raises the lowest failing rank's error."""
    from mmaudit.engine import distributed

    start = time.perf_counter()
    mine = distributed.shard(np.arange(len(cache.dataset)) if rows is None else rows)
    chunks = [mine[i : i + cache.batch_size] for i in range(0, len(mine), cache.batch_size)]
    failure: NonFiniteOutputError | None = None
    local: tuple[np.ndarray, dict[str, np.ndarray]]
    try:
        if persist and rows is None and cache.work_dir is not None and len(mine):
            files = ShardFiles(
                cache.work_dir, key, layers, mine, len(cache.dataset), cache.batch_size
            )
            todo = files.unfinished()
            compute(
                cache, key, transform, layers, ctx, chunks, todo, files.write, skip_image, donors
            )
            local = files.read_only()
        else:
            done: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}

            def keep(k: int, out: np.ndarray, grabbed: dict[str, np.ndarray]) -> None:
                done[k] = (out, grabbed)

            everything = list(range(len(chunks)))
            compute(
                cache, key, transform, layers, ctx, chunks, everything, keep, skip_image, donors
            )
            local = (
                concat([done[k][0] for k in range(len(chunks))]),
                {n: concat([done[k][1][n] for k in range(len(chunks))]) for n in layers},
            )
    except NonFiniteOutputError as exc:
        if not distributed.active():
            raise
        # the other ranks are on their way to the gather below: join it, so every rank
        # learns of the failure and stops with the same error instead of waiting forever
        failure = exc
        local = (np.zeros((0,), np.float32), {n: np.zeros((0,), np.float32) for n in layers})
    if not distributed.active():
        return SweepResult(local[0], local[1], time.perf_counter() - start)
    # pickled for the gather as plain arrays (copies), not as memory maps
    parts = distributed.gather(
        (
            np.asarray(local[0]),
            {n: np.asarray(v) for n, v in local[1].items()},
            failure_args(failure),
        )
    )
    raise_first_failure([p[2] for p in parts])
    logits = np.concatenate([p[0] for p in parts if len(p[0])])
    emb = {n: np.concatenate([p[1][n] for p in parts if len(p[1][n])]) for n in layers}
    return SweepResult(logits, emb, time.perf_counter() - start)


def compute(
    cache: InferenceCache,
    key: str,
    transform: Callable[[Batch], Batch] | None,
    layers: list[str],
    ctx: Any,
    chunks: list[np.ndarray],
    todo: list[int],
    sink: Callable[[int, np.ndarray, dict[str, np.ndarray]], None],
    skip_image: bool = False,
    donors: np.ndarray | None = None,
) -> None:
    """Run the model on the chunks numbered ``todo``; hand each chunk's logits and layer
    outputs (float32, on the CPU) to ``sink(k, logits, layers)`` as soon as it is done.
    With ``skip_image`` the image encoder is substituted: no image is decoded and a
    placeholder stands in. With ``donors`` the loader decodes each chunk's donor rows
    ``donors[chunk]`` in the same batch, and they wait in ``cache._donor`` for
    ``remove_inputs``, so that a permuted image is decoded by the workers too."""
    manager = cache.adapter.capture(layers) if layers else null_capture()
    trim = trims_per_batch(cache.adapter.device)
    with torch.inference_mode(), manager as store, cache._pass(f"sweep {key}") as record:
        if ctx is not None:
            ctx.__enter__()
        batches: Generator[Batch, None, None]
        if skip_image:
            batches = cache.loader.timed(placeholder_batch(cache, chunks[k]) for k in todo)
        else:
            wanted = [
                chunks[k] if donors is None else np.concatenate([chunks[k], donors[chunks[k]]])
                for k in todo
            ]
            batches = cache.iter_batches(f"sweep {key}", chunks=wanted)
        try:
            for k, batch in zip(todo, batches, strict=True):
                start = time.perf_counter()
                if donors is not None:
                    n = len(chunks[k])
                    cache._donor = batch.select(slice(n, None))
                    batch = batch.select(slice(0, n))
                cache._current = batch
                if transform is not None:
                    batch = transform(batch)
                family = "sweep" if ctx is None else f"sweep {key}"
                logits, held = forward_in_chunks(cache, batch, layers, store, family, record)
                rows = batch.index.cpu().numpy()
                require_finite(
                    {LOGITS: logits, **held},
                    rows,
                    key,
                    cache.dataset.ids,
                    cache.adapter,
                )
                out = logits.float().cpu().numpy()
                grabbed = {n: held[n].float().cpu().numpy() for n in layers}
                cache.model_s += time.perf_counter() - start
                record["batches"] += 1
                sink(k, out, grabbed)
                if trim:
                    trim_freed_pages()
        finally:
            batches.close()
            cache._donor = None
            if ctx is not None:
                ctx.__exit__(None, None, None)


def head_batch(cache: InferenceCache, rows: np.ndarray) -> Batch:
    """The batch of ``rows`` on the device without an image or ROI mask (nothing is
    decoded; the caller puts a placeholder in where the model needs one): text and labs
    are indexed from the pre-tensorised arrays. Images come from ``loader`` alone."""
    ds = cache.dataset
    return ds.collate([{"index": int(i)} for i in rows]).to(cache.adapter.device)


def placeholder_batch(cache: InferenceCache, rows: np.ndarray) -> Batch:
    """``head_batch`` without decoding, the image a placeholder of the right shape."""
    batch = head_batch(cache, rows)
    if cache.dataset.cfg.image is not None:
        batch.image = image_placeholder(cache, len(rows))
    return batch


def image_placeholder(cache: InferenceCache, size: int) -> torch.Tensor | None:
    """Zeros of the image input's shape for ``size`` rows, without the memory (expanded)."""
    img = cache.dataset.cfg.image
    if img is None:
        return None
    zero = torch.zeros(1, img.channels, img.size, img.size, device=cache.adapter.device)
    return zero.expand(size, -1, -1, -1)


def concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0,), dtype=np.float32)


class null_capture:
    def __enter__(self) -> dict[str, torch.Tensor]:
        return {}

    def __exit__(self, *exc: Any) -> None:
        return None
