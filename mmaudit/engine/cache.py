"""``InferenceCache``: the one place that runs the model.

One sweep over the data gives logits, probabilities and every requested layer
output; ablated sweeps (a modality removed at the input, or replaced at its
encoder output) are memoised by key; ``map_batches`` runs a check's heavy
per-batch work (attribution) on the device with OOM back-off. Checks never loop
over the data or call the model themselves.

Every forward of a sweep holds at most what ``memory_budget_mb`` allows: the activation
memory of one row is measured once per pass and input shape (a forward of one and of two
rows, every tensor alive at once counted; see ``methods.memory_budget``), and a batch whose
rows would not fit is run in chunks of rows that do (the outputs are the same; the rows per
forward chosen are recorded in ``passes`` and ``timings``).

Every output the cache stores (logits and captured layers of every sweep, ablated and
coalition sweeps included) is checked finite batch by batch: a NaN or inf stops the run
with ``NonFiniteOutputError`` naming the ids, on every rank alike.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mmaudit.engine.adapter import ModelAdapter
from mmaudit.engine.data import AuditDataset, Batch
from mmaudit.engine.errors import CheckError, NonFiniteOutputError
from mmaudit.engine.loader import BatchLoader, resolve_num_workers
from mmaudit.engine.nonfinite_outputs import failure_args, raise_first_failure, require_finite
from mmaudit.engine.removal import (
    RemovalHow,
    ablation_key,
    donor_inputs,
    empty_text,
    encoder_rows,
    tile_batch,
)
from mmaudit.engine.shards import ShardFiles
from mmaudit.engine.sweep_outputs import LOGITS, SweepResult
from mmaudit.methods.memory_budget import MemoryBudget


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
        memory_budget_mb: float | None = 1024.0,
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
        # rows per forward of the no-gradient passes (runtime.memory_budget_mb; None: whole
        # batches, unmeasured)
        self.memory = MemoryBudget(memory_budget_mb) if memory_budget_mb else None
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
        """One line: the budget and, per pass without gradients, the measured bytes per row
        and the rows per forward chosen (empty when nothing was planned)."""
        if self.memory is None or not self.memory.plans:
            return []
        parts = "; ".join(p.describe() for p in self.memory.plans.values())
        return [
            f"sweeps split to fit runtime.memory_budget_mb = {self.memory.budget_mb:g} MB: {parts}"
        ]

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

    def _run(
        self,
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
        see ``_head_batch``; ``donors``: each batch's donor rows, ``donors[rows]``, are
        decoded with it, see ``_compute``). With ``persist`` (and all rows) and a work
        folder, each finished batch goes straight into memory-mapped arrays on disk (see
        ``ShardFiles``), which a resumed run reuses; in one process the result *is* those
        read-only memory maps, so RAM never holds the whole sweep. With several processes
        every rank then holds the gathered arrays in RAM.

        Raises NonFiniteOutputError on the first batch with a NaN or inf output (batches
        finished before it stay on disk for ``--resume``); under torchrun the failing rank
        still joins the gather, so every rank raises the lowest failing rank's error."""
        from mmaudit.engine import distributed

        start = time.perf_counter()
        mine = distributed.shard(np.arange(len(self.dataset)) if rows is None else rows)
        chunks = [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        failure: NonFiniteOutputError | None = None
        local: tuple[np.ndarray, dict[str, np.ndarray]]
        try:
            if persist and rows is None and self.work_dir is not None and len(mine):
                files = ShardFiles(
                    self.work_dir, key, layers, mine, len(self.dataset), self.batch_size
                )
                todo = files.unfinished()
                self._compute(
                    key, transform, layers, ctx, chunks, todo, files.write, skip_image, donors
                )
                local = files.read_only()
            else:
                done: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}

                def keep(k: int, out: np.ndarray, grabbed: dict[str, np.ndarray]) -> None:
                    done[k] = (out, grabbed)

                everything = list(range(len(chunks)))
                self._compute(
                    key, transform, layers, ctx, chunks, everything, keep, skip_image, donors
                )
                local = (
                    _concat([done[k][0] for k in range(len(chunks))]),
                    {n: _concat([done[k][1][n] for k in range(len(chunks))]) for n in layers},
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

    def _compute(
        self,
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
        ``donors[chunk]`` in the same batch, and they wait in ``self._donor`` for
        ``remove_inputs``, so that a permuted image is decoded by the workers too."""
        manager = self.adapter.capture(layers) if layers else _null_capture()
        with torch.inference_mode(), manager as store, self._pass(f"sweep {key}") as record:
            if ctx is not None:
                ctx.__enter__()
            batches: Generator[Batch, None, None]
            if skip_image:
                batches = self.loader.timed(self._placeholder_batch(chunks[k]) for k in todo)
            else:
                wanted = [
                    chunks[k] if donors is None else np.concatenate([chunks[k], donors[chunks[k]]])
                    for k in todo
                ]
                batches = self.iter_batches(f"sweep {key}", chunks=wanted)
            try:
                for k, batch in zip(todo, batches, strict=True):
                    start = time.perf_counter()
                    if donors is not None:
                        n = len(chunks[k])
                        self._donor = batch.select(slice(n, None))
                        batch = batch.select(slice(0, n))
                    self._current = batch
                    if transform is not None:
                        batch = transform(batch)
                    family = "sweep" if ctx is None else f"sweep {key}"
                    logits, held = self._forward(batch, layers, store, family, record)
                    rows = batch.index.cpu().numpy()
                    require_finite(
                        {LOGITS: logits, **held},
                        rows,
                        key,
                        self.dataset.ids,
                        self.adapter,
                    )
                    out = logits.float().cpu().numpy()
                    grabbed = {n: held[n].float().cpu().numpy() for n in layers}
                    self.model_s += time.perf_counter() - start
                    record["batches"] += 1
                    sink(k, out, grabbed)
            finally:
                batches.close()
                self._donor = None
                if ctx is not None:
                    ctx.__exit__(None, None, None)

    def _forward(
        self,
        batch: Batch,
        layers: list[str],
        store: dict[str, torch.Tensor],
        family: str,
        record: dict[str, Any],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and captured ``layers`` of ``batch``, in forwards of at most the rows that
        fit the memory budget (:meth:`_rows_per_forward`); ``record`` keeps the smallest."""
        step = self._rows_per_forward(batch, family)
        chosen = step if step < len(batch) else self.batch_size  # a last short batch is whole
        record["rows_per_forward"] = min(chosen, record.get("rows_per_forward", chosen))
        if step >= len(batch):
            self._current = batch
            logits = self.adapter.logits(batch)
            self.model_calls += 1
            return logits, {n: store[n] for n in layers}
        parts: list[torch.Tensor] = []
        held: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
        for lo in range(0, len(batch), step):
            sub = batch.select(slice(lo, lo + step))
            self._current = sub  # what a substituted layer reads its rows from
            parts.append(self.adapter.logits(sub))
            self.model_calls += 1
            for n in layers:
                held[n].append(store[n])
        self._current = batch
        return torch.cat(parts), {n: torch.cat(v) for n, v in held.items()}

    def _rows_per_forward(self, batch: Batch, family: str) -> int:
        """Rows of ``batch`` one forward may hold within the memory budget, measured once per
        pass family and per-row input shape by two forwards (one row, then two: the first row
        repeated) whose live tensors are counted; the whole batch without a budget, or when
        the model cannot be measured (a TorchScript module the hooks cannot follow)."""
        if self.memory is None or len(batch) <= 1:
            return len(batch)
        shape = tuple(
            (name, tuple(t.shape[1:]))
            for name in ("image", "input_ids", "tabular")
            for t in [getattr(batch, name, None)]
            if isinstance(t, torch.Tensor)
        )

        def probe(k: int) -> None:
            sub = batch.select(torch.zeros(k, dtype=torch.long, device=batch.index.device))
            self._current = sub
            self.adapter.logits(sub)

        try:
            return self.memory.rows_per_chunk(family, shape, probe, self.adapter.module, grad=False)
        except Exception:  # a model the probe cannot follow: whole batches, as before
            return len(batch)
        finally:
            self._current = batch

    # ---------------------------------------------------------------- sweeps
    def sweep(self) -> SweepResult:
        """Logits and every requested layer output for the whole dataset (run once)."""
        if "base" not in self._sweeps:
            self._sweeps["base"] = self._run("base", None, list(self._layers), persist=True)
        return self._sweeps["base"]

    def embeddings(self, name: str) -> np.ndarray:
        """A captured layer output, (N, ...) in dataset order; captured on demand if new."""
        base = self.sweep()
        if name not in base.embeddings:
            extra = self._run(f"layer {name}", None, [name])
            base.embeddings[name] = extra.embeddings[name]
        return base.embeddings[name]

    def layers_on_rows(self, layers: list[str], rows: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs of ``layers`` on ``rows`` of the dataset only (in the order given), one pass,
        not memoised: for a fixed subset that need not cost a sweep of every study."""
        result = self._run(f"rows {len(rows)}", None, list(layers), rows=np.asarray(rows))
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
                self._sweeps[key] = self._run(
                    key,
                    lambda b, remove=remove: self.remove_inputs(b, remove, draw),
                    [],
                    donors=donors,
                )
        elif todo:
            self._sweeps.update(self._run_encoder_coalitions(todo, draw))
        return [self._sweeps[k] if r else self.sweep() for k, r in zip(keys, removes, strict=True)]

    def encoder_mean(self, modality: str) -> torch.Tensor:
        """Mean encoder output over the samples where ``modality`` is present, (1, ...)."""
        full = _tensor_view(self.embeddings(modality))
        has = self.dataset.present[:, self.dataset.modalities.index(modality)]
        rows = np.flatnonzero(has) if has.any() else np.arange(len(has))
        total = torch.zeros(full.shape[1:], dtype=torch.float64)
        for lo in range(0, len(rows), 4096):
            total += full[torch.from_numpy(rows[lo : lo + 4096])].double().sum(0)
        return (total / len(rows)).float()[None]

    def _run_encoder_coalitions(
        self, todo: dict[str, dict[str, RemovalHow]], draw: int
    ) -> dict[str, SweepResult]:
        """Logits of every removal in ``todo`` (key -> removal) at the encoder level, in one
        pass over the data. No image is decoded when the image encoder is substituted (a
        zero placeholder of the right shape stands in: the encoder that would read it never
        runs); text ids and labs are cheap pre-tensorised rows that go to the model too, since
        a fusion may read them (the built-in attention fusion masks its text queries with the
        attention mask). A permuted text or lab encoder output brings its donor's ids and
        mask, or lab values and missing flags, along, as at the input. Each forward stacks up
        to ``4 * batch_size`` rows (the head is far lighter than the encoders); on CUDA
        out-of-memory the number of coalitions per forward halves.

        Raises CheckError when a modality without an encoder layer (``model.layers``) is to
        be removed other than as 'missing': there is no encoder output to replace, and the
        model would silently run on the real input; NonFiniteOutputError when a coalition's
        logits hold a NaN or inf."""
        from mmaudit.engine import distributed

        start = time.perf_counter()
        ds = self.dataset
        mods = [m for m in ds.modalities if m in self.adapter.layers]
        lacking = [
            m
            for m in ds.modalities
            if m not in mods and any(r.get(m, "missing") != "missing" for r in todo.values())
        ]
        if lacking:
            raise CheckError(
                f"encoder-level removal of {', '.join(lacking)} needs model.layers to name its"
                " encoder; remove it at the input level instead"
            )
        cached = {m: _tensor_view(self.embeddings(m)) for m in mods}
        means = {
            m: self.encoder_mean(m) for m in mods if any(r.get(m) == "mean" for r in todo.values())
        }
        perm = self.permutation(draw)
        removals = list(todo.values())
        mine = distributed.shard(np.arange(len(ds)))
        skip_image = "image" in mods
        moves_inputs = any(r.get(m) == "permute" for r in removals for m in ("text", "tabular"))
        parts: list[list[np.ndarray]] = [[] for _ in removals]
        current: dict[str, torch.Tensor] = {}
        per_forward = max(1, (4 * self.batch_size) // max(1, min(self.batch_size, len(mine))))
        keys = list(todo)
        failure: NonFiniteOutputError | None = None
        try:
            with contextlib.ExitStack() as stack, torch.inference_mode():
                for m in mods:
                    stack.enter_context(
                        self.adapter.substitute(m, lambda m=m: current[m])  # type: ignore[misc]
                    )
                chunks = [
                    mine[lo : lo + self.batch_size] for lo in range(0, len(mine), self.batch_size)
                ]
                # the image is decoded (by the loader's workers) only when it goes to the model
                batches = stack.enter_context(
                    contextlib.closing(
                        self.loader.timed(self._head_batch(c) for c in chunks)
                        if skip_image
                        else self.iter_batches("coalitions", chunks=chunks)
                    )
                )
                record = stack.enter_context(self._pass("coalitions"))
                for rows, batch in zip(chunks, batches, strict=True):
                    start = time.perf_counter()
                    donor = self._head_batch(perm[rows]) if moves_inputs else None
                    pos = 0
                    while pos < len(removals):
                        group = removals[pos : pos + per_forward]
                        try:
                            for m in mods:
                                current[m] = torch.cat(
                                    [
                                        encoder_rows(cached[m], means.get(m), r.get(m), rows, perm)
                                        for r in group
                                    ]
                                ).to(self.adapter.device)
                            stacked = tile_batch(batch, len(group)).replace(
                                present=torch.cat(
                                    [self._coalition_present(batch, r, mods, perm) for r in group]
                                ),
                                **donor_inputs(batch, donor, group),
                            )
                            if skip_image:
                                stacked.image = self._image_placeholder(len(stacked))
                            logits = self.adapter.logits(stacked)
                        except torch.cuda.OutOfMemoryError:
                            if per_forward == 1:
                                raise
                            torch.cuda.empty_cache()
                            per_forward = max(1, per_forward // 2)
                            continue
                        self.model_calls += 1
                        require_finite(
                            {LOGITS: logits},
                            rows,
                            "|".join(keys[pos : pos + len(group)]),
                            self.dataset.ids,
                            self.adapter,
                            len(group),
                        )
                        out = logits.float().cpu().numpy()
                        for j, chunk in enumerate(np.split(out, len(group))):
                            parts[pos + j].append(chunk)
                        pos += len(group)
                    self.model_s += time.perf_counter() - start
                    record["batches"] += 1
        except NonFiniteOutputError as exc:
            if not distributed.active():
                raise
            failure = exc  # join the gather below with the others (see _run)
            parts = [[] for _ in removals]
        local = [_concat(p) for p in parts]
        if distributed.active():
            shared = distributed.gather((local, failure_args(failure)))
            raise_first_failure([f for _, f in shared])
            gathered = [g for g, _ in shared]
        else:
            gathered = [local]
        took = (time.perf_counter() - start) / len(removals)
        return {
            key: SweepResult(np.concatenate([g[j] for g in gathered if len(g[j])]), {}, took)
            for j, key in enumerate(todo)
        }

    def _head_batch(self, rows: np.ndarray) -> Batch:
        """The batch of ``rows`` on the device without an image or ROI mask (nothing is
        decoded; the caller puts a placeholder in where the model needs one): text and labs
        are indexed from the pre-tensorised arrays. Images come from ``loader`` alone."""
        ds = self.dataset
        return ds.collate([{"index": int(i)} for i in rows]).to(self.adapter.device)

    def _placeholder_batch(self, rows: np.ndarray) -> Batch:
        """``_head_batch`` without decoding, the image a placeholder of the right shape."""
        batch = self._head_batch(rows)
        if self.dataset.cfg.image is not None:
            batch.image = self._image_placeholder(len(rows))
        return batch

    def _image_placeholder(self, size: int) -> torch.Tensor | None:
        """Zeros of the image input's shape for ``size`` rows, without the memory (expanded)."""
        img = self.dataset.cfg.image
        if img is None:
            return None
        zero = torch.zeros(1, img.channels, img.size, img.size, device=self.adapter.device)
        return zero.expand(size, -1, -1, -1)

    def _coalition_present(
        self, batch: Batch, remove: dict[str, RemovalHow], mods: list[str], perm: np.ndarray
    ) -> torch.Tensor:
        """The presence flags of ``batch`` under ``remove`` at the encoder level: False for
        'missing'; a permuted encoder output brings its donor's flag along, as at the input."""
        ds = self.dataset
        present = batch.present.clone()
        rows = batch.index.cpu().numpy()
        for m, how in remove.items():
            col = ds.modalities.index(m)
            if how == "missing":
                present[:, col] = False
            elif how == "permute" and m in mods:
                donor = torch.from_numpy(ds.present[perm[rows], col])
                present[:, col] = donor.to(present.device)
        return present

    def _run_substituted(
        self,
        key: str,
        outputs: dict[str, torch.Tensor],
        transform: Callable[[Batch], Batch] | None = None,
    ) -> SweepResult:
        """A sweep in which each named layer returns its row of ``outputs`` (N, ...) instead of
        running: the modules before it never run, only what follows it does."""
        stack = contextlib.ExitStack()
        for layer, full in outputs.items():

            def supply(full: torch.Tensor = full) -> torch.Tensor:
                assert self._current is not None
                return full[self._current.index.cpu()].to(self.adapter.device)

            stack.enter_context(self.adapter.substitute(layer, supply))
        return self._run(key, transform, [], ctx=stack, skip_image="image" in outputs)

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
            m: _tensor_view(self.embeddings(m))
            for m in self.dataset.modalities
            if m in self.adapter.layers and m != layer
        }
        outputs[layer] = torch.as_tensor(values, dtype=torch.float32)
        result = self._run_substituted(full_key or f"layer:{layer}", outputs)
        if full_key is not None:
            self._sweeps[full_key] = result
        return result.logits

    def input_mean(self, modality: str) -> torch.Tensor:
        """The dataset mean of a modality's model input, computed once: the mean image over
        samples that have one, (1, C, H, W); the mean of each lab column over the rows where
        it is not missing, (1, F), in the model's input space (after the configured
        normalisation, so it is the audited data's mean whatever that normalisation is)."""
        if modality not in self._input_means:
            ds = self.dataset
            if modality == "tabular":
                values, missing = ds.tabular, ds.tabular_missing
                assert values is not None and missing is not None
                seen = (~missing).double()
                count = seen.sum(0).clamp(min=1)
                self._input_means[modality] = ((values.double() * seen).sum(0) / count).float()[
                    None
                ]
            else:
                total, count = None, 0
                col = ds.modalities.index("image")
                with contextlib.closing(self.iter_batches("mean image")) as batches:
                    for b in batches:
                        keep = b.present[:, col]
                        s = b.image[keep].sum(0)  # type: ignore[index]
                        total = s if total is None else total + s
                        count += int(keep.sum())
                mean = (total / max(count, 1)).cpu()  # type: ignore[operator]
                self._input_means[modality] = mean[None]
        return self._input_means[modality]

    def remove_inputs(self, batch: Batch, remove: dict[str, RemovalHow], draw: int = 0) -> Batch:
        """``batch`` with the named modalities removed at the input.

        'mean' is the dataset mean (:meth:`input_mean`) for images and labs; a report has no
        mean, so for text 'mean' is the empty report, the same as 'zero'. 'missing' clears
        the presence flag and zeroes / empties the input as well.
        """
        changes: dict[str, Any] = {}
        present = batch.present.clone()
        ds = self.dataset
        donor: Batch | None = None
        if "permute" in remove.values():
            idx = self.permutation(draw)[batch.index.cpu().numpy()]
            donor = self._donor
            if donor is None or not np.array_equal(donor.index.cpu().numpy(), idx):
                # outside a pass that brought the donors along: decode here (images only
                # when the image is the one permuted)
                decode = remove.get("image") == "permute"
                items = [ds[int(i)] if decode else {"index": int(i)} for i in idx]
                donor = ds.collate(items).to(batch.index.device)
        for m, how in remove.items():
            col = ds.modalities.index(m)
            if how == "permute":
                assert donor is not None
                present[:, col] = donor.present[:, col]
                if m == "image":
                    changes["image"] = donor.image
                elif m == "text":
                    changes["input_ids"], changes["attention_mask"] = (
                        donor.input_ids,
                        donor.attention_mask,
                    )
                else:
                    changes["tabular"] = donor.tabular
                    changes["tabular_missing"] = donor.tabular_missing
                continue
            if how == "missing":
                present[:, col] = False
            if m == "text":
                ids, mask = empty_text(ds, len(batch), batch.index.device)
                changes["input_ids"], changes["attention_mask"] = ids, mask
                continue
            current = batch.image if m == "image" else batch.tabular
            assert current is not None
            if how == "mean":
                changes[m] = self.input_mean(m).to(current.device).expand_as(current)
            else:
                changes[m] = torch.zeros_like(current)
        changes["present"] = present
        return batch.replace(**changes)

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
            except torch.cuda.OutOfMemoryError:
                if bs == 1:
                    raise
                torch.cuda.empty_cache()
                bs = max(1, bs // 2)
        return [r for part in distributed.gather(results) for r in part]


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0,), dtype=np.float32)


def _tensor_view(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory, without a copy, so a memory-mapped sweep stays on
    disk. The cache only ever indexes these tensors (a copy) and never writes to them, so a
    read-only memory map is safe here; torch's warning about read-only arrays is silenced for
    this call alone."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


class _null_capture:
    def __enter__(self) -> dict[str, torch.Tensor]:
        return {}

    def __exit__(self, *exc: Any) -> None:
        return None
