"""``InferenceCache``: the one place that runs the model.

One sweep over the data gives logits, probabilities and every requested layer
output; ablated sweeps (a modality removed at the input, or replaced at its
encoder output) are memoised by key; ``map_batches`` runs a check's heavy
per-batch work (attribution) on the device with OOM back-off. Checks never loop
over the data or call the model themselves.

This module holds the cache's state and public API: which pass is memoised under which
key, the loader every pass shares, the record of passes and timings. The mechanics live
beside it, one concern each, as functions of the cache:

* ``sweep_pass``: one pass over the data (sharding, ``--resume`` files, the gather across
  ranks, the batch loop);
* ``chunked_forward``: every forward of a sweep holds at most what ``memory_budget_mb``
  allows (rows per forward measured once per pass and input shape; the outputs are the
  same), and the words the report gives that plan (:meth:`InferenceCache.memory_record`);
* ``input_removal``: modalities removed at the input (the dataset mean input, donors);
* ``encoder_level``: passes in which cached encoder outputs stand in for the encoders
  (coalitions, substituted layers).

Every output the cache stores (logits and captured layers of every sweep, ablated and
coalition sweeps included) is checked finite batch by batch: a NaN or inf stops the run
with ``NonFiniteOutputError`` naming the ids, on every rank alike.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mmaudit.engine.adapter import ModelAdapter
from mmaudit.engine.chunked_forward import memory_plan_notes
from mmaudit.engine.data import AuditDataset, Batch
from mmaudit.engine.encoder_level import (
    encoder_mean,
    run_encoder_coalitions,
    run_substituted,
    tensor_view,
)
from mmaudit.engine.host_memory import trim_freed_pages, trims_per_batch
from mmaudit.engine.input_removal import dataset_input_mean, remove_inputs
from mmaudit.engine.loader import BatchLoader, resolve_num_workers
from mmaudit.engine.removal import RemovalHow, ablation_key
from mmaudit.engine.sweep_outputs import SweepResult
from mmaudit.engine.sweep_pass import run_pass
from mmaudit.methods.memory_budget import MemoryBudget, auto_budget_mb


class InferenceCache:
    """Runs the model over the dataset once per distinct request and remembers the result."""

    def __init__(
        self,
        adapter: ModelAdapter,
        dataset: AuditDataset,
        *,
        batch_size: int = 64,
        num_workers: int | str = 0,
        seed: int = 0,
        progress: bool = False,
        target_kind: str = "binary",
        memory_budget_mb: float | str | None = "auto",
    ) -> None:
        self.adapter = adapter
        self.dataset = dataset
        self.batch_size = batch_size
        # "auto" (runtime.num_workers) resolved for this device and data; the report records it
        self.workers = resolve_num_workers(
            num_workers, adapter.device, dataset.cfg.image is not None
        )
        self.num_workers = self.workers.workers
        self.seed = seed
        self.progress = progress
        self.target_kind = target_kind
        # rows per forward of the no-gradient passes (runtime.memory_budget_mb, auto resolved
        # once for this device and kept for every check; None: whole batches, unmeasured)
        self.budget_chosen = "runtime.memory_budget_mb"
        if memory_budget_mb == "auto":
            budget_mb, self.budget_chosen = auto_budget_mb(adapter.device)
        else:
            budget_mb = None if memory_budget_mb is None else float(memory_budget_mb)
        self.memory = MemoryBudget(budget_mb) if budget_mb else None
        # the pass families whose batches the budget split (see chunked_forward)
        self.split_passes: set[str] = set()
        self.model_calls = 0
        self.batches_run = 0
        # seconds in the model (forward, check work, results back on the CPU), per pass too;
        # the wait for data is the loader's
        self.model_s = 0.0
        self.passes: list[dict[str, Any]] = []
        self._loader: BatchLoader | None = None
        self._donor: Batch | None = None  # the donor rows of the batch in hand (see _compute)
        self._sweeps: dict[str, SweepResult] = {}
        self._layers: list[str] = []
        self._input_means: dict[str, torch.Tensor] = {}
        self._perms: dict[int, np.ndarray] = {}
        self._current: Batch | None = None
        # where finished sweep batches are kept for --resume (None: nothing written)
        self.work_dir: Path | None = None

    # ---------------------------------------------------------------- plumbing
    def request_layers(self, names: list[str]) -> None:
        """Ask for layer outputs in the base sweep (call before ``sweep()``)."""
        for n in names:
            if n not in self._layers and (n in self.adapter.layers or "." in n):
                self._layers.append(n)

    def iter_batches(
        self,
        desc: str,
        indices: np.ndarray | None = None,
        batch_size: int | None = None,
        chunks: list[np.ndarray] | None = None,
    ) -> Generator[Batch, None, None]:
        """Batches on the device (from ``loader``), with a progress bar when enabled."""
        bs = batch_size or self.batch_size
        if chunks is None:
            rows = np.arange(len(self.dataset)) if indices is None else np.asarray(indices)
            chunks = [rows[i : i + bs] for i in range(0, len(rows), bs)]
        total = len(chunks)
        source = self.loader.batches(chunks)
        if not self.progress or not sys.stdout.isatty():  # a log gets the runner's stage lines
            yield from source
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=True,
        ) as bar:
            task = bar.add_task(desc, total=total)
            for b in source:
                yield b
                bar.advance(task)

    @property
    def loader(self) -> BatchLoader:
        """Where batches come from: ``num_workers`` processes decode them, kept across passes."""
        if self._loader is None or self._loader.workers != self.num_workers:
            self.close()
            self._loader = BatchLoader(self.dataset, self.num_workers, self.adapter.device)
        return self._loader

    def close(self) -> None:
        """End the loader's worker processes (a later pass starts them again)."""
        if self._loader is not None:
            self._loader.close()

    def timings(self) -> dict[str, float]:
        """Where the model-bound time went, for report.json: ``data_wait_s`` (waiting for
        batches: decoding not hidden behind the model, collation, host-to-device copies) and
        ``model_s`` (forwards and checks' per-batch work until the results are on the CPU),
        over every pass (``passes`` of them) and for the base sweep alone. More waiting than
        model time means loading is the bottleneck."""
        out = {
            "data_wait_s": self._loader.wait_s if self._loader is not None else 0.0,
            "model_s": self.model_s,
            "passes": float(len(self.passes)),
        }
        for p in self.passes:
            if p["pass"] == "sweep base":
                out["sweep.data_wait_s"] = p["data_wait_s"]
                out["sweep.model_s"] = p["model_s"]
                if "rows_per_forward" in p:
                    out["sweep.rows_per_forward"] = float(p["rows_per_forward"])
        if self.memory is not None:
            out["memory_budget_mb"] = self.memory.budget_mb
        return out

    def memory_notes(self) -> list[str]:
        """One line: the budget and, per pass without gradients whose batches it split, the
        measured bytes per row and the rows per forward chosen (empty when nothing was
        split)."""
        return memory_plan_notes(self.memory, self.split_passes)

    def memory_record(self) -> dict[str, Any]:
        """report.json's record (``environment``) of the no-gradient memory plan, once the
        checks ran: ``memory_plan`` with the budget, :meth:`memory_notes`'s line and, per pass
        that was split, the measured bytes per row (and fixed) and the rows per forward. Empty
        when no pass was split: the budget alone is in ``timings`` already, and a plan that
        changed nothing would only be noise beside it. (Gradient passes report their own
        plans in their check's notes.)"""
        notes = self.memory_notes()
        if self.memory is None or not notes:
            return {}
        passes = {
            name: {
                "bytes_per_row": plan.footprint.bytes_per_row,
                "fixed_bytes": plan.footprint.fixed_bytes,
                "rows_per_forward": plan.rows_per_chunk,
            }
            for name, plan in self.memory.plans.items()
            if name in self.split_passes
        }
        return {
            "memory_plan": {
                "budget_mb": self.memory.budget_mb,
                "note": " ".join(notes),
                "passes": passes,
            }
        }

    @contextlib.contextmanager
    def _pass(self, name: str) -> Iterator[dict[str, Any]]:
        """Record one pass's batches, data wait and model time in ``passes``."""
        record = {"pass": name, "batches": 0, "data_wait_s": 0.0, "model_s": 0.0}
        wait, model = self.loader.wait_s, self.model_s
        try:
            yield record
        finally:
            record["data_wait_s"] = self.loader.wait_s - wait
            record["model_s"] = self.model_s - model
            self.passes.append(record)

    # ---------------------------------------------------------------- sweeps
    def sweep(self) -> SweepResult:
        """Logits and every requested layer output for the whole dataset (run once)."""
        if "base" not in self._sweeps:
            self._sweeps["base"] = run_pass(self, "base", None, list(self._layers), persist=True)
        return self._sweeps["base"]

    def embeddings(self, name: str) -> np.ndarray:
        """A captured layer output, (N, ...) in dataset order; captured on demand if new."""
        base = self.sweep()
        if name not in base.embeddings:
            extra = run_pass(self, f"layer {name}", None, [name])
            base.embeddings[name] = extra.embeddings[name]
        return base.embeddings[name]

    def layers_on_rows(self, layers: list[str], rows: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs of ``layers`` on ``rows`` of the dataset only (in the order given), one pass,
        not memoised: for a fixed subset that need not cost a sweep of every study."""
        result = run_pass(self, f"rows {len(rows)}", None, list(layers), rows=np.asarray(rows))
        return result.embeddings

    def permutation(self, draw: int = 0) -> np.ndarray:
        """The seeded permutation used by 'permute' removal. ``draw`` 0 is the one every
        check shares; further draws are independent permutations, used to average per-sample
        values over several donors."""
        if draw not in self._perms:
            seed = self.seed + 7919 if draw == 0 else [self.seed + 7919, draw]
            self._perms[draw] = np.random.default_rng(seed).permutation(len(self.dataset))
        return self._perms[draw]

    def ablated(
        self,
        remove: dict[str, RemovalHow],
        level: Literal["input", "encoder"] = "input",
        draw: int = 0,
    ) -> SweepResult:
        """Logits with modalities removed, memoised by (level, removal, draw) key.

        ``input``: the modality's input is zeroed / set to the dataset mean / taken from
        another sample (permute) / marked absent (model-native missing).
        ``encoder``: the encoder outputs of the base sweep are reused for every modality
        (encoders never run again) and the removed ones are replaced; only the fusion
        and head run. ``draw`` picks the permutation of 'permute' (see :meth:`permutation`).
        """
        return self.ablated_many([remove], level, draw)[0]

    def ablated_many(
        self,
        removes: list[dict[str, RemovalHow]],
        level: Literal["input", "encoder"] = "input",
        draw: int = 0,
    ) -> list[SweepResult]:
        """:meth:`ablated` for several removals at once. At the encoder level every removal
        not yet memoised is evaluated in one pass over the data: per batch, the cached
        encoder outputs of all those coalitions are stacked along the batch axis and fusion
        and head run on them together."""
        keys = [ablation_key(r, level, draw) for r in removes]
        todo = {k: r for k, r in zip(keys, removes, strict=True) if r and k not in self._sweeps}
        if level == "input":
            for key, remove in todo.items():
                if remove.get("image") == "mean":
                    self.input_mean("image")  # a pass of its own, before this one
                # a permuted image's donors are decoded by the loader with their batch
                donors = self.permutation(draw) if remove.get("image") == "permute" else None
                self._sweeps[key] = run_pass(
                    self,
                    key,
                    lambda b, remove=remove: self.remove_inputs(b, remove, draw),
                    [],
                    donors=donors,
                )
        elif todo:
            self._sweeps.update(run_encoder_coalitions(self, todo, draw))
        return [self._sweeps[k] if r else self.sweep() for k, r in zip(keys, removes, strict=True)]

    def encoder_mean(self, modality: str) -> torch.Tensor:
        """Mean encoder output over the samples where ``modality`` is present, (1, ...)."""
        return encoder_mean(self, modality)

    def logits_with_layer(
        self, layer: str, values: np.ndarray, key: str | None = None
    ) -> np.ndarray:
        """Logits when ``layer`` (e.g. ``embedding``) outputs ``values`` (N, ...) in dataset
        order, e.g. an erased embedding. Every modality encoder is replaced by its cached output
        too, so only the modules after ``layer`` run, and no image is decoded. Memoised when
        ``key`` is given."""
        full_key = f"layer:{layer}:{key}" if key is not None else None
        if full_key is not None and full_key in self._sweeps:
            return self._sweeps[full_key].logits
        outputs = {
            m: tensor_view(self.embeddings(m))
            for m in self.dataset.modalities
            if m in self.adapter.layers and m != layer
        }
        outputs[layer] = torch.as_tensor(values, dtype=torch.float32)
        result = run_substituted(self, full_key or f"layer:{layer}", outputs)
        if full_key is not None:
            self._sweeps[full_key] = result
        return result.logits

    def input_mean(self, modality: str) -> torch.Tensor:
        """The dataset mean of a modality's model input (1, ...), computed once (see
        :func:`mmaudit.engine.input_removal.dataset_input_mean`)."""
        if modality not in self._input_means:
            self._input_means[modality] = dataset_input_mean(self, modality)
        return self._input_means[modality]

    def remove_inputs(self, batch: Batch, remove: dict[str, RemovalHow], draw: int = 0) -> Batch:
        """``batch`` with the named modalities removed at the input (see
        :func:`mmaudit.engine.input_removal.remove_inputs`)."""
        return remove_inputs(self, batch, remove, draw)

    # ---------------------------------------------------------------- check work
    def map_batches(
        self,
        fn: Callable[[Batch], Any],
        *,
        grad: bool = False,
        desc: str = "batches",
        indices: np.ndarray | None = None,
        batch_size: int | None = None,
    ) -> list[Any]:
        """Apply ``fn`` to every batch on the device (autocast as configured).

        ``grad=True`` enables autograd for attribution. On CUDA out-of-memory the batch
        size halves and the batch is retried. Under torchrun each rank takes its shard and
        the per-batch results of all ranks come back in dataset order, so ``fn`` should
        return CPU values (numpy arrays, floats) that can be gathered.
        """
        from mmaudit.engine import distributed

        bs = batch_size or self.batch_size
        trim = trims_per_batch(self.adapter.device)
        results: list[Any] = []
        pending = np.arange(len(self.dataset)) if indices is None else np.asarray(indices)
        pending = distributed.shard(pending)
        pos = 0
        while pos < len(pending):
            try:
                with (
                    contextlib.closing(self.iter_batches(desc, pending[pos:], bs)) as batches,
                    self._pass(desc) as record,
                ):
                    for batch in batches:
                        start = time.perf_counter()
                        self._current = batch
                        with torch.set_grad_enabled(grad), self.adapter.autocast():
                            results.append(fn(batch))
                        self.model_s += time.perf_counter() - start
                        record["batches"] += 1
                        self.batches_run += 1
                        pos += len(batch)
                        if trim:
                            trim_freed_pages()
            except torch.cuda.OutOfMemoryError:
                if bs == 1:
                    raise
                torch.cuda.empty_cache()
                bs = max(1, bs // 2)
        return [r for part in distributed.gather(results) for r in part]
