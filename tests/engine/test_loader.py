"""How many loader workers ``runtime.num_workers: auto`` gives, and why, per device and data."""

from __future__ import annotations

import pytest

from mmaudit.engine.loader import MAX_AUTO_WORKERS, resolve_num_workers


def test_a_number_is_used_as_given_on_any_device() -> None:
    for device in ("cpu", "cuda:0"):
        choice = resolve_num_workers(3, device, decodes_images=True, cores=2)
        assert (choice.workers, choice.asked) == (3, 3)
        assert "set in runtime.num_workers" in choice.reason
    assert resolve_num_workers(0, "cuda", True).pin_memory


def test_auto_is_no_workers_on_the_cpu_or_without_images() -> None:
    cpu = resolve_num_workers("auto", "cpu", decodes_images=True, cores=64)
    assert cpu.workers == 0 and "CPU" in cpu.reason and not cpu.pin_memory
    text_only = resolve_num_workers("auto", "cuda", decodes_images=False, cores=64)
    assert text_only.workers == 0 and "no images" in text_only.reason


@pytest.mark.parametrize(
    ("cores", "ranks", "workers"),
    [(16, 1, MAX_AUTO_WORKERS), (4, 1, 3), (1, 1, 0), (16, 2, 7), (16, 8, 1)],
)
def test_auto_on_cuda_is_the_free_cores_per_rank(cores: int, ranks: int, workers: int) -> None:
    """One core per rank stays with its main process; the rest decode, up to the cap."""
    choice = resolve_num_workers("auto", "cuda:0", True, cores=cores, local_ranks=ranks)
    assert choice.workers == workers and choice.pin_memory
    assert choice.record() == {
        "num_workers": workers,
        "num_workers_asked": "auto",
        "num_workers_reason": choice.reason,
        "pin_memory": True,
    }
    assert f"of {cores}" in choice.reason


def test_auto_reads_the_ranks_on_this_machine_from_torchrun(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    choice = resolve_num_workers("auto", "cuda:1", True, cores=16)
    assert choice.workers == 3 and "shared by 4 ranks" in choice.reason
