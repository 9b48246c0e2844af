"""Handing freed host memory back to the operating system between the stages of an audit.

glibc's ``malloc`` keeps the pages of freed blocks in its arenas: after a check whose passes
held a gigabyte of activations (ResNet-50 at 224 px, MiniLM IG), the process keeps that
resident set although nothing uses it, and the next check's working set comes on top. With
``runtime.memory_budget_mb`` bounding each pass, what is left to bound is this retained
memory, so the runner calls :func:`release_freed_memory` after the sweep and after every
check: a garbage collection, then ``malloc_trim(0)``. Measured on the realistic benchmark
(ResNet-50 + MiniLM, CPU): see ``benchmarks/results/realistic.md``. A no-op where the C
library has no ``malloc_trim`` (macOS, Windows, musl)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import cache


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
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
