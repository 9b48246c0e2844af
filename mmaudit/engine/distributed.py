"""Several processes, one audit: PyTorch's own distributed runtime, launched by ``torchrun``.

Every rank runs the same program. Model-bound work (the sweep, ablated sweeps,
``map_batches``) is split into contiguous shards of the dataset, one per rank, on
the rank's own device; results are all-gathered in rank order, so every rank holds
the same full arrays in dataset order and runs the same (cheap) analysis; only rank
0 writes the report. NCCL on GPUs, gloo on CPU. Without ``torchrun`` (WORLD_SIZE
unset or 1) everything here is a no-op.

The same report at any world size: which rank, batch or position a sample lands in
differs with the world size, so any random draw made inside per-batch work is keyed by
the sample (``sample_seeds``: run seed, what is drawn, dataset index), never by the rank,
the batch or the order in which samples are met.
"""

from __future__ import annotations

import datetime
import os
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from mmaudit.engine.errors import MmauditError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """The ranks of this job on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without it)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    """True inside an initialised process group of more than one process."""
    import torch.distributed as dist

    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def init(device: str) -> str:
    """Join the process group when launched by torchrun; return the device this rank uses."""
    if world_size() <= 1:
        return device
    import torch
    import torch.distributed as dist

    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MmauditError(f"rank {rank()}: runtime.device is '{device}' but this rank has no GPU")
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if wants_cuda else "gloo",
            timeout=datetime.timedelta(minutes=30),
        )
    if wants_cuda:
        torch.cuda.set_device(local_rank())
        return f"cuda:{local_rank()}"
    return "cpu"


def shard(indices: np.ndarray) -> np.ndarray:
    """This rank's contiguous share of ``indices`` (no duplicates, no gaps across ranks)."""
    n, w, r = len(indices), world_size(), rank()
    if not active():
        return indices
    return indices[r * n // w : (r + 1) * n // w]


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (a one-element list without a process group)."""
    if not active():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def agree(value: str, what: str) -> None:
    """Stop with a clear message when ranks disagree on ``value`` (e.g. a config hash)."""
    values = gather(value)
    if len(set(values)) > 1:
        raise MmauditError(f"ranks disagree on {what}: every rank must run the same {what}")


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def shutdown() -> None:
    if active():
        import torch.distributed as dist

        dist.destroy_process_group()


def sample_seeds(seed: int, salt: str, indices: Iterable[int]) -> list[int]:
    """One seed per sample (0 .. 2**32 - 1, what numpy's legacy seeding and torch take) from
    the run seed, a name for what is drawn (``salt``) and the sample's dataset index. A
    sample's draws then come out the same whichever rank and batch it is in, and whatever
    was drawn before it; different salts give independent streams."""
    tag = zlib.crc32(salt.encode())
    return [
        int(np.random.SeedSequence([int(seed), tag, int(i)]).generate_state(1)[0]) for i in indices
    ]
