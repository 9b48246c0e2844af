"""The per-rank shard files of a persisted sweep (``ShardFiles``): each rank's logits and
layer outputs written chunk by chunk as ``.npy`` memory maps in the work folder, with done
flags, so a sweep's memory stays flat as the dataset grows and ``--resume`` reuses every
finished chunk.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from mmaudit.engine.sweep_outputs import LOGITS


class ShardFiles:
    """One rank's share of a persisted sweep, as ``.npy`` files in the work folder that are
    filled chunk by chunk while the sweep runs, so memory stays flat as the dataset grows.

    ``<stem>.logits.npy`` and ``<stem>.layer.<name>.npy`` hold float32 rows, one per row of the
    shard; ``<stem>.done.npy`` holds one uint8 flag per chunk of ``batch_size`` rows. The stem
    names the sweep key, rank, world size, the shard's rows out of the dataset length and the
    batch size, so a resume with another world size, dataset length or batch size finds no file
    of its own and recomputes. A chunk's flag is set only after its rows are flushed, so a set
    flag always means the rows are on disk, however the earlier run ended.
    """

    def __init__(
        self,
        folder: Path,
        key: str,
        layers: list[str],
        rows: np.ndarray,
        total: int,
        batch_size: int,
    ) -> None:
        from mmaudit.engine import distributed

        world = distributed.world_size() if distributed.active() else 1
        rank = distributed.rank() if distributed.active() else 0
        stem = (
            f"{_slug(key)}.rank{rank}of{world}"
            f".rows{int(rows[0])}-{int(rows[-1]) + 1}of{total}"
            f".batch{batch_size}"
        )
        self.rows = len(rows)
        self.batch_size = batch_size
        self.layers = list(layers)
        self.paths = {LOGITS: folder / f"{stem}.logits.npy"}
        self.paths |= {n: folder / f"{stem}.layer.{_slug(n)}.npy" for n in layers}
        self.done_path = folder / f"{stem}.done.npy"
        self.arrays: dict[str, np.memmap] = {}
        self.done = self._open((len(rows) + batch_size - 1) // batch_size)

    def _open(self, chunks: int) -> np.memmap:
        """The done flags left by an earlier run when every file it needs is intact; otherwise
        fresh all-zero flags (stale output files are then replaced by the first chunk)."""
        try:
            done = np.load(self.done_path, mmap_mode="r+")
            arrays = {n: np.load(p, mmap_mode="r+") for n, p in self.paths.items()}
        except (OSError, ValueError):
            done, arrays = None, {}
        intact = (
            done is not None
            and done.dtype == np.uint8
            and done.shape == (chunks,)
            and all(a.dtype == np.float32 and a.shape[:1] == (self.rows,) for a in arrays.values())
        )
        if intact:
            self.arrays = arrays
            return done  # type: ignore[return-value]
        done = open_memmap(self.done_path, mode="w+", dtype=np.uint8, shape=(chunks,))
        done.flush()
        return done

    def unfinished(self) -> list[int]:
        """Chunks (numbered from 0 within the shard) that still need the model."""
        return [int(k) for k in np.flatnonzero(self.done == 0)]

    def write(self, k: int, logits: np.ndarray, layers: dict[str, np.ndarray]) -> None:
        """Put chunk ``k``'s rows on disk, then mark it done."""
        lo = k * self.batch_size
        for name, values in {LOGITS: logits, **layers}.items():
            if name not in self.arrays:
                shape = (self.rows, *values.shape[1:])
                self.arrays[name] = open_memmap(
                    self.paths[name], mode="w+", dtype=np.float32, shape=shape
                )
            self.arrays[name][lo : lo + len(values)] = values
            self.arrays[name].flush()
        self.done[k] = 1
        self.done.flush()

    def read_only(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits and layer outputs of the whole shard as read-only memory maps."""
        for a in self.arrays.values():
            a.flush()
        self.arrays = {}  # closes the writable maps
        logits = np.load(self.paths[LOGITS], mmap_mode="r")
        return logits, {n: np.load(self.paths[n], mmap_mode="r") for n in self.layers}


def _slug(text: str) -> str:
    """``text`` as part of a file name: kept when already safe, else sanitised and suffixed
    with a short hash so two different names never share a file."""
    if text and all(c.isalnum() or c in "._-" for c in text):
        return text
    safe = "".join(c if c.isalnum() else "_" for c in text)
    return f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
