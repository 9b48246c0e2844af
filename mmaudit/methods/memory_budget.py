"""How many rows one forward (and backward) of an attribution pass may hold, from a budget.

Why: a gradient pass keeps every activation autograd saves for its backward until the
backward runs, so its memory grows with the rows it holds -- samples x path points for
Integrated Gradients, samples for CAMs, samples x occluded copies for occlusion. Fixed
"steps per pass" settings give 1,024 rows through six transformer layers at once for text
IG over a MiniLM encoder (11.7 GB measured); a budget in bytes gives each pass the rows
that fit, whatever the model and the input size.

How: :func:`measure` runs the pass to be made on 1 and on 2 rows (a probe: the same
forward, on a repeated first row) and counts

* with gradients: the bytes of the tensors autograd saves for the backward (through
  ``torch.autograd.graph.saved_tensors_hooks``, each storage counted once, the model's
  parameters and buffers left out), plus the probe's input rows and their gradients;
* without gradients: the peak of the bytes of all tensors alive at once during the forward
  (every tensor an operator creates is counted until it is freed, through a
  ``TorchDispatchMode``, so a residual branch kept beside its block, a hooked layer output
  or an output stacked by the caller all count), falling back to the largest
  ``inputs + output`` of any leaf module where the dispatch mode cannot run.

The difference of the two probes is the cost of one row; the rest (the 1-row total less
one row) is the fixed cost. :class:`MemoryBudget` turns that into rows per chunk
(``(budget - fixed) // bytes_per_row``, at least 1; a gradient pass's bytes counted
``BACKWARD_OVERHEAD`` times for the gradient buffers of the backward), memoised per pass
and input shape, and keeps what it chose for the report. The count is of tensor bytes, not allocator
overhead or kernel workspaces, so it is a close lower bound of the pass's peak, not a
hard ceiling.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "ChunkPlan",
    "Footprint",
    "MemoryBudget",
    "auto_budget_mb",
    "measure",
    "resolve_budget_mb",
    "split_rows",
]

_MB = 1024 * 1024

#: ``runtime.memory_budget_mb: auto`` on a CPU (and MPS, whose memory is the host's). A CPU
#: gains nothing from passes of many rows (its cores are busy at a few ResNet-50 images), so
#: the budget is small. Measured on ResNet-50 + MiniLM at 224 px, the whole audit of 1,024
#: studies (``benchmarks/results/realistic.md``) peaks at 2.2 GB with 384 MB. (Before the
#: measuring probes' graphs were freed, see ``_saved_bytes``, it peaked at 3.6 GB with
#: 1,024 MB and 3.1 GB with 512 or 384 MB.)
CPU_AUTO_BUDGET_MB = 384.0
#: ``auto`` on CUDA: this share of the device memory free once the model is loaded (a pass
#: then holds hundreds of rows, as a GPU needs to be busy), at least :data:`CPU_AUTO_BUDGET_MB`
CUDA_AUTO_SHARE = 0.5

#: a gradient pass's peak over the bytes saved for its backward: the backward holds
#: gradient buffers of its own while it frees saved tensors. Measured on text IG through
#: MiniLM-L6 (128 tokens, CPU): peak RSS grows 16.1 MB per row against 12.05 MB saved (1.34x)
BACKWARD_OVERHEAD = 1.5


@dataclass(frozen=True)
class Footprint:
    """Measured bytes of a pass: per row, and fixed (independent of the rows)."""

    bytes_per_row: int
    fixed_bytes: int


@dataclass(frozen=True)
class ChunkPlan:
    """What a pass was given: rows per forward/backward and the footprint behind it."""

    pass_name: str
    rows_per_chunk: int
    footprint: Footprint
    grad: bool
    held: bool = False  # rows made and held at once (copies of inputs), not a forward

    def describe(self) -> str:
        """One line for the report: the pass, its measured cost and the rows chosen."""
        what = "saved for the backward" if self.grad else "live at once (no gradient)"
        unit = "forward/backward" if self.grad else "forward"
        size = self.footprint.bytes_per_row
        amount = f"{size / _MB:.2f} MB" if size >= _MB / 10 else f"{size / 1024:.1f} KB"
        return (
            f"{self.pass_name}: {amount} {what} per row"
            f" -> {self.rows_per_chunk} rows {'at once' if self.held else 'per ' + unit}"
        )


def _storage_key(t: torch.Tensor) -> tuple[int, int] | None:
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse, meta or wrapper tensors
        return None
    return (storage.data_ptr(), storage.nbytes())


def _owned(module: nn.Module | None) -> set[int]:
    """Data pointers of the module's parameters and buffers (fixed, not per row)."""
    if module is None:
        return set()
    ptrs = set()
    for t in [*module.parameters(), *module.buffers()]:
        key = _storage_key(t)
        if key is not None:
            ptrs.add(key[0])
    return ptrs


@contextlib.contextmanager
def _saved_bytes(module: nn.Module | None) -> Iterator[list[int]]:
    """Bytes of the distinct storages autograd saves while open (parameters left out)."""
    owned = _owned(module)
    seen: dict[int, int] = {}
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key is not None and key[0] not in owned and key[0] != 0:
            seen[key[0]] = max(seen.get(key[0], 0), key[1])
        # not ``t`` itself: a saved output handed back as-is refers to its own grad_fn, a
        # cycle through autograd's C++ graph that Python's gc never frees -- every probe's
        # whole graph (180 MB for a ResNet-50 pass at 224 px) stayed alive to the end of the audit
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total
    total[0] = sum(seen.values())


def _tensor_bytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    return 0


@contextlib.contextmanager
def _live_bytes(module: nn.Module | None) -> Iterator[list[int]]:
    """The largest ``inputs + output`` bytes of any leaf module run while open."""
    peak = [0]
    handles = []
    if module is not None:

        def hook(_m: nn.Module, args: tuple, out: object) -> None:
            peak[0] = max(peak[0], _tensor_bytes(args) + _tensor_bytes(out))

        for m in module.modules():
            if not any(True for _ in m.children()):
                handles.append(m.register_forward_hook(hook))
    try:
        yield peak
    finally:
        for h in handles:
            h.remove()


class _LivePeak:
    """The peak bytes of tensor storages created while open and still alive (each storage
    counted once, freed when its last reference goes): what a forward without gradients
    needs at once beyond what existed before it (weights, inputs made earlier)."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        live: dict[int, int] = {}
        state = {"live": 0, "peak": 0}

        def free(key: int) -> None:
            state["live"] -= live.pop(key, 0)

        def keys(value: object) -> set[int]:
            if isinstance(value, torch.Tensor):
                try:
                    return {value.untyped_storage()._cdata}
                except (RuntimeError, NotImplementedError):  # sparse, meta or wrapper tensors
                    return set()
            if isinstance(value, (tuple, list)):
                return set().union(*(keys(v) for v in value)) if value else set()
            if isinstance(value, dict):
                return keys(list(value.values()))
            return set()

        def book(value: object, inputs: set[int]) -> None:
            if isinstance(value, torch.Tensor):
                try:
                    storage = value.untyped_storage()
                except (RuntimeError, NotImplementedError):  # sparse, meta or wrapper tensors
                    return
                key = storage._cdata
                # a view or an in-place result shares an input's storage: nothing new
                if key in live or key in inputs:
                    return
                live[key] = storage.nbytes()
                state["live"] += live[key]
                state["peak"] = max(state["peak"], state["live"])
                weakref.finalize(storage, free, key)
            elif isinstance(value, (tuple, list)):
                for v in value:
                    book(v, inputs)

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                book(out, keys(list(args)) | keys(kwargs))
                return out

        self.mode = Mode()
        self.state = state

    @property
    def peak(self) -> int:
        return int(self.state["peak"])


def _peak_no_grad(
    probe: Callable[[int], torch.Tensor | None], k: int, module: nn.Module | None
) -> int:
    """Bytes a forward of ``probe(k)`` without gradients needs at once: the peak of live
    tensors (:class:`_LivePeak`), else the largest leaf module's inputs + output."""
    tracker = _LivePeak()
    try:
        with torch.no_grad(), tracker.mode:
            leaf = probe(k)
        del leaf
        return tracker.peak
    except Exception:  # a model or tensor type the dispatch mode cannot follow
        with torch.no_grad(), _live_bytes(module) as live:
            leaf = probe(k)
        return live[0] + _tensor_bytes(leaf)


def measure(
    probe: Callable[[int], torch.Tensor | None],
    module: nn.Module | None,
    *,
    grad: bool = True,
) -> Footprint:
    """The footprint of a pass, from ``probe(1)`` and ``probe(2)``.

    ``probe(k)`` runs the pass's forward on ``k`` rows (with autograd on when ``grad``)
    and returns its input leaf (counted with its gradient), or None. ``module``: the
    model, whose parameters and buffers are not per-row costs.
    """
    totals = []
    for k in (1, 2):
        if grad:
            with torch.enable_grad(), _saved_bytes(module) as saved:
                leaf = probe(k)
            totals.append(saved[0] + 2 * _tensor_bytes(leaf))
            del leaf
        else:
            totals.append(_peak_no_grad(probe, k, module))
    per_row = max(totals[1] - totals[0], 1)
    return Footprint(bytes_per_row=int(per_row), fixed_bytes=int(max(totals[0] - per_row, 0)))


class MemoryBudget:
    """Rows per chunk for every pass of an audit, within ``budget_mb`` (memoised)."""

    def __init__(self, budget_mb: float) -> None:
        if budget_mb <= 0:
            raise ValueError(f"memory budget must be > 0 MB, got {budget_mb}")
        self.budget_mb = float(budget_mb)
        self.plans: dict[str, ChunkPlan] = {}
        self._memo: dict[Hashable, ChunkPlan] = {}

    @property
    def budget_bytes(self) -> int:
        return int(self.budget_mb * _MB)

    def rows_for(self, footprint: Footprint, grad: bool = True, share: float = 1.0) -> int:
        """Rows whose footprint fits ``share`` of the budget (at least 1); a gradient pass's
        bytes count ``BACKWARD_OVERHEAD`` times (what the backward adds at its peak)."""
        factor = BACKWARD_OVERHEAD if grad else 1.0
        room = share * self.budget_bytes - factor * footprint.fixed_bytes
        return max(1, int(room // max(factor * footprint.bytes_per_row, 1)))

    def rows_per_chunk(
        self,
        pass_name: str,
        key: Hashable,
        probe: Callable[[int], torch.Tensor | None],
        module: nn.Module | None,
        *,
        grad: bool = True,
        share: float = 1.0,
    ) -> int:
        """Rows one forward (and backward) of ``pass_name`` may hold; ``key`` names the
        per-row shape, so a pass is measured once per shape (not once per batch).
        ``share``: the part of the budget the pass may use (the rest held by its caller)."""
        memo_key = (pass_name, key, grad, share)
        plan = self._memo.get(memo_key)
        if plan is None:
            fp = measure(probe, module, grad=grad)
            plan = ChunkPlan(pass_name, self.rows_for(fp, grad, share), fp, grad)
            self._memo[memo_key] = plan
        self.plans[pass_name] = plan
        return plan.rows_per_chunk

    def rows_held(self, what: str, bytes_per_row: int, share: float = 1.0) -> int:
        """Rows whose ``bytes_per_row`` of inputs made and held at once (known, not measured:
        e.g. filled copies of an image) fit ``share`` of the budget; recorded as ``what``."""
        plan = ChunkPlan(
            what, self.rows_for(Footprint(int(bytes_per_row), 0), False, share),
            Footprint(int(bytes_per_row), 0), False, held=True,
        )  # fmt: skip
        self.plans[what] = plan
        return plan.rows_per_chunk

    def notes(self, prefix: str = "memory") -> list[str]:
        """One line per pass planned: the budget, the measured bytes and rows chosen."""
        if not self.plans:
            return []
        parts = "; ".join(p.describe() for p in self.plans.values())
        return [
            f"{prefix}: gradient passes split to fit runtime.memory_budget_mb ="
            f" {self.budget_mb:g} MB: {parts}"
        ]


def auto_budget_mb(device: torch.device | str) -> tuple[float, str]:
    """The budget ``runtime.memory_budget_mb: auto`` means on ``device``, and why (a few
    words for the report)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        mb = max(CPU_AUTO_BUDGET_MB, float(int(CUDA_AUTO_SHARE * free / _MB)))
        return mb, (
            f"auto: {CUDA_AUTO_SHARE:.0%} of the {free / _MB:,.0f} MB free on {device}"
            " after loading the model"
        )
    return CPU_AUTO_BUDGET_MB, (
        f"auto: {CPU_AUTO_BUDGET_MB:g} MB on {device.type}, where larger passes run no faster"
        " and the host keeps fragments of what they free"
    )


def resolve_budget_mb(value: float | str | None, device: torch.device | str) -> float | None:
    """``runtime.memory_budget_mb`` as a number of MB (``auto`` resolved for ``device``);
    None stays None (no budget: whole batches)."""
    if value == "auto":
        return auto_budget_mb(device)[0]
    return None if value is None else float(value)


def split_rows(n_samples: int, n_points: int, max_rows: int) -> tuple[int, int]:
    """``(samples, points)`` per chunk with ``samples * points <= max_rows`` (at least 1
    each): all samples and as many points as fit, else fewer samples and one point."""
    max_rows = max(1, int(max_rows))
    if n_samples <= max_rows:
        return n_samples, max(1, min(n_points, max_rows // max(n_samples, 1)))
    return max_rows, 1
