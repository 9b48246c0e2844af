"""Freed host memory handed back between the stages of an audit (``engine.host_memory``):
glibc keeps freed arenas resident, so the runner trims after the sweep and every check."""

from __future__ import annotations

import ctypes.util
import sys
from pathlib import Path

import pytest
from test_cache import make_cache  # noqa: F401 (a fixture)

from mmaudit.engine import host_memory
from mmaudit.runner.audit import run_audit
from mmaudit.runner.overrides import Overrides

GLIBC = sys.platform.startswith("linux") and ctypes.util.find_library("c") is not None


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_freed_blocks_leave_the_resident_set() -> None:
    """512 blocks of 1 MiB (under glibc's largest mmap threshold, so they come from the
    arenas) are written and freed: the trim gives most of their 512 MiB back."""
    import numpy as np

    before = _rss_mib()
    blocks = [np.ones(1 << 18, dtype=np.float32) for _ in range(512)]
    held = _rss_mib()
    keep = np.ones(16, dtype=np.float32)  # a live block above them keeps the heap top in use
    del blocks
    assert host_memory.release_freed_memory() is True
    after = _rss_mib()
    assert held - before > 400  # the blocks were resident
    assert after - before < 0.5 * (held - before), (before, held, after)
    del keep


def test_the_runner_releases_after_the_sweep_and_after_every_check(
    tiny_manifest: Path, tiny_weights: Path, write_config, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from conftest import byo_model_config, tiny_config

    import mmaudit.runner.audit as audit

    byo_config = write_config(
        tiny_config(tiny_manifest, byo_model_config(tiny_weights / "tiny.safetensors"))
    )
    calls: list[int] = []
    monkeypatch.setattr(audit, "release_freed_memory", lambda: calls.append(1) or True)
    run_audit(byo_config, tmp_path / "r", Overrides(checks=["performance", "embedding"]))
    assert len(calls) == 1 + 2


def test_passes_on_a_cpu_trim_after_every_batch(
    make_cache,  # noqa: F811 (the fixture imported above)
    monkeypatch,
) -> None:  # type: ignore[no-untyped-def]
    """The sweep and every map_batches pass hand the batch's freed pages back before the
    next batch, on a CPU; on a GPU the host holds a batch's inputs only, so no trim."""
    import numpy as np
    import torch

    import mmaudit.engine.cache as cache_module
    import mmaudit.engine.sweep_pass as sweep_module

    trims: list[str] = []
    monkeypatch.setattr(cache_module, "trim_freed_pages", lambda: trims.append("map") or True)
    monkeypatch.setattr(sweep_module, "trim_freed_pages", lambda: trims.append("sweep") or True)
    cache = make_cache(batch_size=16)
    cache.sweep()
    assert trims.count("sweep") == -(-len(cache.dataset) // 16)  # one per batch
    cache.map_batches(lambda b: len(b), indices=np.arange(40))
    assert trims.count("map") == 3  # 16 + 16 + 8 rows
    assert host_memory.trims_per_batch(torch.device("cpu"))
    assert not host_memory.trims_per_batch(torch.device("cuda", 0))
