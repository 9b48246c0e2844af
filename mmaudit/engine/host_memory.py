"""Handing freed host memory back to the operating system between the stages of an audit.

glibc's ``malloc`` keeps the pages of freed blocks in its arenas: after a check whose passes
held a gigabyte of activations (ResNet-50 at 224 px, MiniLM IG), the process keeps that
resident set although nothing uses it, and the next check's working set comes on top. With
``runtime.memory_budget_mb`` bounding each pass, what is left to bound is this retained
memory, so the runner calls :func:`release_freed_memory` after the sweep and after every
check: a garbage collection, then ``malloc_trim(0)``; and on a CPU every pass of the cache
trims after each batch (:func:`trim_freed_pages`), as a pass's peak is its batch's working
set plus what earlier batches left in the arenas. Measured on the realistic benchmark
(ResNet-50 + MiniLM, CPU): see ``benchmarks/results/realistic.md``. A no-op where the C
library has no ``malloc_trim`` (macOS, Windows, musl)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import cache

import torch


@cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Collect garbage and return the C heap's free pages to the OS; whether it could trim."""
    gc.collect()
    return trim_freed_pages()


def trim_freed_pages() -> bool:
    """Return the C heap's free pages to the OS (no garbage collection: cheap enough to run
    after every batch of a pass); whether it could trim."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def trims_per_batch(device: torch.device) -> bool:
    """Whether the passes on ``device`` trim after every batch: on a CPU the activations of
    a batch are host memory, and pages freed by one batch but kept by the allocator would
    stay resident under the next batch's (fragments of other sizes); on a GPU the host holds
    only the batch's inputs and outputs."""
    return device.type == "cpu"
