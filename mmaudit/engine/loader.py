"""How batches reach the model: how many DataLoader workers decode images
(``runtime.num_workers``, with ``auto`` resolved here), pinned memory on CUDA, and one pool
of persistent workers that serves every pass over the data.

The cache runs many passes over the same dataset (the sweep, ablated sweeps, each check's
attribution work). A DataLoader per pass would start its workers anew each time; here one
DataLoader with persistent workers is kept, and each pass only tells it which batches to
make. The time the caller waits for each batch is added up (``wait_s``), so a report can
say whether loading or the model is the bottleneck.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmaudit.engine import distributed
from mmaudit.engine.data import AuditDataset, Batch

# more decoding processes than this rarely feed one model faster, and each holds a copy of
# the dataset's Python state
MAX_AUTO_WORKERS = 8
# the most decoded batches kept in flight (workers x prefetch_factor of them)
IN_FLIGHT_BYTES = 1 << 30


@dataclass(frozen=True)
class WorkerChoice:
    """The number of loader workers an audit uses, what was asked, and why; ``pin_memory``:
    batches are pinned for asynchronous copies to the GPU."""

    workers: int
    asked: int | str
    reason: str
    pin_memory: bool = False

    def record(self) -> dict[str, Any]:
        """The report.json fields (``environment``)."""
        return {
            "num_workers": self.workers,
            "num_workers_asked": self.asked,
            "num_workers_reason": self.reason,
            "pin_memory": self.pin_memory,
        }


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or ``taskset``
    can narrow below the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_num_workers(
    asked: int | str,
    device: torch.device | str,
    decodes_images: bool,
    cores: int | None = None,
    local_ranks: int | None = None,
) -> WorkerChoice:
    """``runtime.num_workers`` as a number. A number is used as given. ``auto`` is:

    - 0 when there are no images to decode: text and labs are tensors made once up front,
      and a worker would only add a copy between processes;
    - 0 when the model runs on the CPU: decoding workers would take the cores the model's
      own threads use, so the audit gets no faster (often slower);
    - on CUDA, the free cores: this process's cores shared among the ranks on this machine
      (``LOCAL_WORLD_SIZE`` under torchrun), less one for each rank's main process, at most
      ``MAX_AUTO_WORKERS``.
    """
    pin = torch.device(device).type == "cuda"
    if asked != "auto":
        return WorkerChoice(int(asked), asked, "set in runtime.num_workers", pin)
    if not decodes_images:
        return WorkerChoice(0, asked, "auto: no images to decode (text and labs are tensors)", pin)
    if not pin:
        return WorkerChoice(
            0, asked, "auto: the model runs on the CPU, where decoding workers take its cores"
        )
    cores = available_cores() if cores is None else cores
    ranks = local_ranks or distributed.local_world_size()
    free = max(0, cores // max(1, ranks) - 1)
    workers = min(free, MAX_AUTO_WORKERS)
    shared = f" shared by {ranks} ranks" if ranks > 1 else ""
    return WorkerChoice(
        workers,
        asked,
        f"auto: {free} free core(s) of {cores}{shared} (one kept for the main process),"
        f" at most {MAX_AUTO_WORKERS}",
        pin,
    )


class _Chunks(torch.utils.data.Sampler[list[int]]):
    """A batch sampler whose batches are set before each pass, so that one DataLoader (and
    its persistent workers) serves passes over different rows."""

    def __init__(self) -> None:
        self.chunks: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(list(self.chunks))

    def __len__(self) -> int:
        return len(self.chunks)


class BatchLoader:
    """Batches of an ``AuditDataset`` on a device, decoded by ``workers`` processes.

    With workers, one DataLoader with persistent workers is made on the first pass and kept
    (``close()`` ends it). It is remade when the dataset's stand-ins change (see
    ``AuditDataset.configure_missing``), since each worker holds a copy of the dataset. A
    pass started while another is still being read (a nested pass) gets a DataLoader of
    its own for that pass. On CUDA batches are pinned and copied without blocking.
    """

    def __init__(self, dataset: AuditDataset, workers: int, device: torch.device | str) -> None:
        self.dataset = dataset
        self.workers = workers
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        self.wait_s = 0.0  # time spent waiting for batches (decoding, collation, copies)
        self.started = 0  # DataLoaders made with workers (each starts its processes)
        self._loader: torch.utils.data.DataLoader[Any] | None = None
        self._sampler = _Chunks()
        self._state = -1  # the dataset version the workers hold
        self._busy = False

    def prefetch_factor(self, batch_size: int) -> int:
        """Batches each worker prepares ahead: 2 to 4, fewer when big images would keep
        more than ``IN_FLIGHT_BYTES`` in flight."""
        img = self.dataset.cfg.image
        per_batch = 4 * batch_size * (img.channels * img.size**2 if img is not None else 1)
        fits = IN_FLIGHT_BYTES // max(1, self.workers * per_batch)
        return int(np.clip(fits, 1, 4))

    def batches(self, chunks: list[np.ndarray]) -> Generator[Batch, None, None]:
        """One batch per chunk of dataset rows, in order, on the device."""
        sampler = [[int(i) for i in c] for c in chunks if len(c)]
        if not sampler:
            return
        if self.workers == 0:
            source: Iterator[Batch] = (
                self.dataset.collate([self.dataset[i] for i in rows]) for rows in sampler
            )
            yield from self.timed(source, pin=self.pin)
            return
        if self._busy:
            yield from self.timed(iter(self._one_pass_loader(sampler)))
            return
        self._busy = True
        try:
            loader = self._persistent(max(len(c) for c in sampler))
            self._sampler.chunks = sampler
            yield from self.timed(iter(loader))
        finally:
            self._busy = False

    def timed(self, source: Iterator[Batch], pin: bool = False) -> Generator[Batch, None, None]:
        """``source``'s batches on the device, the wait for each added to ``wait_s``; ``pin``:
        pin them here (a DataLoader with ``pin_memory`` has pinned them already)."""
        while True:
            start = time.perf_counter()
            try:
                batch = next(source)
            except StopIteration:
                return
            if pin:
                batch = batch.pin_memory()
            batch = batch.to(self.device)
            self.wait_s += time.perf_counter() - start
            yield batch

    def _persistent(self, batch_size: int) -> torch.utils.data.DataLoader[Any]:
        state = self.dataset.version
        if self._loader is not None and state != self._state:
            self.close()
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                self.dataset,
                batch_sampler=self._sampler,
                num_workers=self.workers,
                collate_fn=self.dataset.collate,
                pin_memory=self.pin,
                persistent_workers=True,
                prefetch_factor=self.prefetch_factor(batch_size),
            )
            self._state = state
            self.started += 1
        return self._loader

    def _one_pass_loader(self, sampler: list[list[int]]) -> torch.utils.data.DataLoader[Any]:
        self.started += 1
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.workers,
            collate_fn=self.dataset.collate,
            pin_memory=self.pin,
            prefetch_factor=self.prefetch_factor(max(len(c) for c in sampler)),
        )

    def close(self) -> None:
        """End the persistent workers (a later pass starts new ones)."""
        loader, self._loader = self._loader, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
