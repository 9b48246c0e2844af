"""Stopping a run on a NaN or inf model output, and saying where: ``require_finite`` checks
one batch's outputs and raises ``NonFiniteOutputError`` naming the output, the first ids and
the sweep; ``failure_args`` / ``raise_first_failure`` carry such a failure across the ranks of
a distributed run, so that every rank stops with the same message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from mmaudit.engine.errors import NonFiniteOutputError
from mmaudit.engine.sweep_outputs import LOGITS

if TYPE_CHECKING:
    from mmaudit.engine.adapter import ModelAdapter


def require_finite(
    outputs: dict[str, torch.Tensor],
    rows: np.ndarray,
    key: str,
    ids: np.ndarray,
    adapter: ModelAdapter,
    coalitions: int = 1,
) -> None:
    """Stop the run when one of a batch's ``outputs`` (the logits, keyed LOGITS, and
    captured layer outputs, for the dataset ``rows``) holds a NaN or inf: every check
    would build on it. One reduction on the device per output and batch; the rows are
    located only on failure. The message details the first bad output, encoders before
    the layers after them and the logits last, as the first is nearest the cause.
    ``coalitions`` > 1: the outputs stack that many coalitions of ``rows`` (see
    ``engine.encoder_level.run_encoder_coalitions``); ``key`` is then their keys joined by '|'.
    ``ids`` are the dataset's ids; ``adapter`` names the layers and the precision.

    Raises NonFiniteOutputError naming the output, the first ids and the sweep."""
    bad = [n for n, t in outputs.items() if not bool(torch.isfinite(t).all())]
    if not bad:
        return
    order = {m: k for k, m in enumerate(("image", "text", "tabular"))}
    bad.sort(key=lambda n: (n == LOGITS, order.get(n, len(order))))
    values = outputs[bad[0]]
    n = values.shape[0] if values.dim() else 1
    per_row = (~torch.isfinite(values.reshape(n, -1))).any(1).cpu().numpy()
    kinds = [
        k
        for k, hit in (("NaN", torch.isnan(values)), ("inf", torch.isinf(values)))
        if bool(hit.any())
    ]
    keys = key.split("|")
    if n == len(rows) * coalitions:
        where = np.flatnonzero(per_row)
        bad_rows = np.unique(rows[where % len(rows)])
        first = keys[int(where[0]) // len(rows)] if coalitions > 1 else key
        whose = some_ids(ids[bad_rows])
        count = f"{len(bad_rows)} of {len(rows)} rows"
    else:  # a layer whose first axis is not the batch: the rows cannot be told apart
        first = keys[0]
        whose = f"one of {some_ids(ids[rows])}"
        count = f"{len(rows)} rows"
    also = f"; also not finite: {', '.join(output_words(b, adapter) for b in bad[1:])}"
    hint = (
        "check the checkpoint (weights, dtype) and these rows' inputs; rerun with --debug"
        " for the traceback"
    )
    if adapter.effective_precision == "fp16":
        hint += "; fp16 overflows to inf: try runtime.precision bf16 or fp32"
    raise NonFiniteOutputError(
        f"{output_words(bad[0], adapter)} is {'/'.join(kinds)} for {whose} ({count} of a"
        f" batch in {sweep_words(first)}){also if len(bad) > 1 else ''}",
        hint=hint,
    )


def output_words(name: str, adapter: ModelAdapter) -> str:
    """A sweep output in words: the logits, or a layer with its module path."""
    if name == LOGITS:
        return "model output 'logits'"
    path = adapter.layers.get(name, name)
    return f"layer '{name}'" + (f" ({path})" if path != name else "")


def some_ids(ids: np.ndarray, shown: int = 5) -> str:
    """The first ``shown`` ids, then how many more."""
    head = ", ".join(str(i) for i in ids[:shown])
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return f"id{'s' if len(ids) > 1 else ''} {head}{more}"


def sweep_words(key: str) -> str:
    """A sweep's memo key in words, for error messages."""
    if key == "base":
        return "the base sweep"
    if key.startswith("layer "):
        return f"the capture of {key}"
    if key.startswith("layer:"):
        return f"the sweep with {key.split(':')[1]} replaced"
    return f"the ablated sweep '{key}'"


def failure_args(exc: NonFiniteOutputError | None) -> tuple[str, str] | None:
    """What travels to the other ranks of a failure (message and hint; exceptions with a
    hint do not survive pickling whole)."""
    return None if exc is None else (str(exc), exc.hint)


def raise_first_failure(failures: list[tuple[str, str] | None]) -> None:
    """Raise, on every rank alike, the failure of the lowest rank that had one."""
    for f in failures:
        if f is not None:
            raise NonFiniteOutputError(f[0], hint=f[1])
