"""``InferenceCache``: the one place that runs the model.

One sweep over the data gives logits, probabilities and every requested layer
output; ablated sweeps (a modality removed at the input, or replaced at its
encoder output) are memoised by key; ``map_batches`` runs a check's heavy
per-batch work (attribution) on the device with OOM back-off. Checks never loop
over the data or call the model themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mmaudit.data import AuditDataset, Batch
from mmaudit.model import ModelAdapter

RemovalHow = Literal["zero", "mean", "permute", "missing"]


@dataclass
class SweepResult:
    """What one pass over the dataset produced, in dataset order."""

    logits: np.ndarray
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def probs(self) -> np.ndarray:
        return logits_to_probs(self.logits)


def logits_to_probs(logits: np.ndarray, kind: str = "auto") -> np.ndarray:
    """Sigmoid for one column (binary) or multilabel, softmax for several classes."""
    if kind == "multilabel" or (kind == "auto" and logits.shape[1] == 1):
        return 1.0 / (1.0 + np.exp(-logits))
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class InferenceCache:
    """Runs the model over the dataset once per distinct request and remembers the result."""

    def __init__(
        self,
        adapter: ModelAdapter,
        dataset: AuditDataset,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        progress: bool = False,
        target_kind: str = "binary",
    ) -> None:
        self.adapter = adapter
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.progress = progress
        self.target_kind = target_kind
        self.model_calls = 0
        self.batches_run = 0
        self._sweeps: dict[str, SweepResult] = {}
        self._layers: list[str] = []
        self._input_means: dict[str, torch.Tensor] = {}
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
    ) -> Iterator[Batch]:
        """Batches on the device, with a progress bar when enabled."""
        bs = batch_size or self.batch_size
        if chunks is not None:
            total = len(chunks)
        else:
            n = len(self.dataset) if indices is None else len(indices)
            total = (n + bs - 1) // bs
        source = self.dataset.batches(bs, self.num_workers, indices, chunks)
        if not self.progress:
            for b in source:
                yield b.to(self.adapter.device)
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
                yield b.to(self.adapter.device)
                bar.advance(task)

    def _run(
        self,
        key: str,
        transform: Callable[[Batch], Batch] | None,
        layers: list[str],
        ctx: Any = None,
        persist: bool = False,
    ) -> SweepResult:
        """One pass: this rank's shard in batches, results gathered from every rank in dataset
        order. With ``persist`` and a work folder, each finished batch is written to disk and
        reused by a resumed run."""
        from mmaudit import distributed

        start = time.perf_counter()
        mine = distributed.shard(np.arange(len(self.dataset)))
        chunks = [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        done: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        files = {k: self._batch_file(key, c) for k, c in enumerate(chunks)} if persist else {}
        for k, path in files.items():
            if path is not None and path.is_file():
                with np.load(path) as saved:
                    if all(n in saved.files for n in layers):
                        done[k] = (saved["__logits__"], {n: saved[n] for n in layers})
        todo = [k for k in range(len(chunks)) if k not in done]
        manager = self.adapter.capture(layers) if layers else _null_capture()
        with torch.inference_mode(), manager as store:
            if ctx is not None:
                ctx.__enter__()
            try:
                batches = self.iter_batches(f"sweep {key}", chunks=[chunks[k] for k in todo])
                for k, batch in zip(todo, batches, strict=True):
                    self._current = batch
                    if transform is not None:
                        batch = transform(batch)
                    out = self.adapter.logits(batch).float().cpu().numpy()
                    self.model_calls += 1
                    grabbed = {n: store[n].float().cpu().numpy() for n in layers}
                    done[k] = (out, grabbed)
                    if files.get(k) is not None:
                        np.savez(files[k], __logits__=out, **grabbed)  # type: ignore[arg-type]
            finally:
                if ctx is not None:
                    ctx.__exit__(None, None, None)
        local = (
            _concat([done[k][0] for k in range(len(chunks))]),
            {n: _concat([done[k][1][n] for k in range(len(chunks))]) for n in layers},
        )
        parts = distributed.gather(local)
        logits = np.concatenate([p[0] for p in parts if len(p[0])])
        emb = {n: np.concatenate([p[1][n] for p in parts if len(p[1][n])]) for n in layers}
        return SweepResult(logits, emb, time.perf_counter() - start)

    def _batch_file(self, key: str, chunk: np.ndarray) -> Path | None:
        if self.work_dir is None or not len(chunk):
            return None
        safe = "".join(c if c.isalnum() else "_" for c in key)
        return self.work_dir / f"{safe}_{int(chunk[0])}_{int(chunk[-1])}.npz"

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

    def permutation(self) -> np.ndarray:
        """The fixed derangement-like permutation used by 'permute' removal (seeded)."""
        if not hasattr(self, "_perm"):
            rng = np.random.default_rng(self.seed + 7919)
            self._perm = rng.permutation(len(self.dataset))
        return self._perm

    def ablated(
        self, remove: dict[str, RemovalHow], level: Literal["input", "encoder"] = "input"
    ) -> SweepResult:
        """Logits with modalities removed, memoised by (level, removal) key.

        ``input``: the modality's input is zeroed / set to the dataset mean / taken from
        another sample (permute) / marked absent (model-native missing).
        ``encoder``: the encoder outputs of the base sweep are reused for every modality
        (encoders never run again) and the removed ones are replaced; only the fusion
        and head run.
        """
        key = f"{level}:" + ",".join(f"{m}={h}" for m, h in sorted(remove.items()))
        if not remove:
            return self.sweep()
        if key in self._sweeps:
            return self._sweeps[key]
        if level == "input":
            result = self._run(key, lambda b: self.remove_inputs(b, remove), [])
        else:
            result = self._run_encoder_level(key, remove)
        self._sweeps[key] = result
        return result

    def _run_encoder_level(self, key: str, remove: dict[str, RemovalHow]) -> SweepResult:
        mods = [m for m in self.dataset.modalities if m in self.adapter.layers]
        perm = torch.from_numpy(self.permutation())
        outputs: dict[str, torch.Tensor] = {}
        for m in mods:
            full = torch.from_numpy(self.embeddings(m))
            how = remove.get(m)
            if how == "permute":
                full = full[perm]
            elif how == "mean":
                full = full.mean(0, keepdim=True).expand_as(full)
            elif how == "zero":
                full = torch.zeros_like(full)
            outputs[m] = full
        miss = [self.dataset.modalities.index(m) for m, h in remove.items() if h == "missing"]
        # a permuted encoder output brings its sample's presence flag along, as at the input
        moved = [self.dataset.modalities.index(m) for m in mods if remove.get(m) == "permute"]
        donor_present = torch.from_numpy(self.dataset.present[self.permutation()])

        def mark_missing(b: Batch) -> Batch:
            if not miss and not moved:
                return b
            present = b.present.clone()
            present[:, miss] = False
            if moved:
                present[:, moved] = donor_present[b.index.cpu()][:, moved].to(present.device)
            return b.replace(present=present)

        return self._run_substituted(key, outputs, mark_missing)

    def _run_substituted(
        self,
        key: str,
        outputs: dict[str, torch.Tensor],
        transform: Callable[[Batch], Batch] | None = None,
    ) -> SweepResult:
        """A sweep in which each named layer returns its row of ``outputs`` (N, ...) instead of
        running: the modules before it never run, only what follows it does."""
        import contextlib

        stack = contextlib.ExitStack()
        for layer, full in outputs.items():

            def supply(full: torch.Tensor = full) -> torch.Tensor:
                assert self._current is not None
                return full[self._current.index.cpu()].to(self.adapter.device)

            stack.enter_context(self.adapter.substitute(layer, supply))
        return self._run(key, transform, [], ctx=stack)

    def logits_with_layer(
        self, layer: str, values: np.ndarray, key: str | None = None
    ) -> np.ndarray:
        """Logits when ``layer`` (e.g. ``embedding``) outputs ``values`` (N, ...) in dataset
        order, e.g. an erased embedding. Every modality encoder is replaced by its cached output
        too, so only the modules after ``layer`` run. Memoised when ``key`` is given."""
        full_key = f"layer:{layer}:{key}" if key is not None else None
        if full_key is not None and full_key in self._sweeps:
            return self._sweeps[full_key].logits
        outputs = {
            m: torch.from_numpy(self.embeddings(m))
            for m in self.dataset.modalities
            if m in self.adapter.layers and m != layer
        }
        outputs[layer] = torch.as_tensor(values, dtype=torch.float32)
        result = self._run_substituted(full_key or f"layer:{layer}", outputs)
        if full_key is not None:
            self._sweeps[full_key] = result
        return result.logits

    def input_mean(self, modality: str) -> torch.Tensor:
        """Dataset-mean image (over present samples), computed once."""
        if modality not in self._input_means:
            total, count = None, 0
            for b in self.dataset.batches(self.batch_size, self.num_workers):
                m = self.dataset.modalities.index("image")
                keep = b.present[:, m]
                s = b.image[keep].sum(0)  # type: ignore[index]
                total = s if total is None else total + s
                count += int(keep.sum())
            self._input_means[modality] = (total / max(count, 1))[None]  # type: ignore[operator]
        return self._input_means[modality]

    def remove_inputs(self, batch: Batch, remove: dict[str, RemovalHow]) -> Batch:
        """``batch`` with the named modalities removed at the input."""
        changes: dict[str, Any] = {}
        present = batch.present.clone()
        ds = self.dataset
        donor: Batch | None = None
        if "permute" in remove.values():
            idx = self.permutation()[batch.index.cpu().numpy()]
            donor = ds.collate([ds[int(i)] for i in idx]).to(batch.index.device)
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
                continue
            if how == "missing":
                present[:, col] = False
            if m == "image":
                if how == "mean":
                    changes["image"] = (
                        self.input_mean("image").to(batch.image.device).expand_as(batch.image)
                    )  # type: ignore[union-attr]
                else:
                    changes["image"] = torch.zeros_like(batch.image)  # type: ignore[arg-type]
            elif m == "text":
                ids, mask = empty_text(ds, len(batch), batch.index.device)
                changes["input_ids"], changes["attention_mask"] = ids, mask
            else:
                # tabular features are standardised, so zero is the dataset mean
                changes["tabular"] = torch.zeros_like(batch.tabular)  # type: ignore[arg-type]
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
        from mmaudit import distributed

        bs = batch_size or self.batch_size
        results: list[Any] = []
        pending = np.arange(len(self.dataset)) if indices is None else np.asarray(indices)
        pending = distributed.shard(pending)
        pos = 0
        while pos < len(pending):
            try:
                for batch in self.iter_batches(desc, pending[pos:], bs):
                    self._current = batch
                    with torch.set_grad_enabled(grad), self.adapter.autocast():
                        results.append(fn(batch))
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


def empty_text(
    dataset: AuditDataset, n: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of an empty report ([CLS] [SEP] + padding) for ``n`` samples."""
    tok = dataset.tokenizer
    length = dataset.input_ids.shape[1]  # type: ignore[union-attr]
    enc = tok([""], padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    ids = enc["input_ids"].long().expand(n, -1).to(device)
    mask = enc["attention_mask"].long().expand(n, -1).to(device)
    return ids, mask


class _null_capture:
    def __enter__(self) -> dict[str, torch.Tensor]:
        return {}

    def __exit__(self, *exc: Any) -> None:
        return None
