"""Freed host memory handed back between the stages of an audit (``engine.host_memory``):
glibc keeps freed arenas resident, so the runner trims after the sweep and every check."""

from __future__ import annotations

import ctypes.util
import sys
from pathlib import Path

import pytest

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
