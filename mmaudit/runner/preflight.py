"""The model's first batch, before anything else runs: a model that cannot take the data, or
answers NaN / inf, stops the run with one line (exit 2) before a report folder is started."""

from __future__ import annotations

from typing import Any

from mmaudit.engine.errors import MmauditError, ModelLoadError, NonFiniteOutputError


def probe_model(adapter: Any, dataset: Any, target_kind: str) -> None:
    """Run the model on the first few rows before anything else does; ModelLoadError (one
    line, exit 2) when it raises or its number of outputs does not fit the target, and
    NonFiniteOutputError (naming the ids) when it answers NaN or inf for any of them.

    Why: a model that cannot take the data would otherwise fail inside the sweep with a
    traceback, or later inside every check, after a report folder was started.
    """
    import torch

    batch = next(iter(dataset.batches(min(4, len(dataset))))).to(adapter.device)
    try:
        with torch.inference_mode():
            logits = adapter.logits(batch)
    except MmauditError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"the model failed on one batch: {type(exc).__name__}: {exc}".splitlines()[0],
            hint="check model.inputs and the data config; --debug shows the traceback",
        ) from exc
    expected = (1, 2) if target_kind == "binary" else (len(dataset.class_names),)
    if logits.ndim != 2 or logits.shape[1] not in expected:
        outputs = logits.shape[1] if logits.ndim == 2 else f"shape {tuple(logits.shape)}"
        raise ModelLoadError(
            f"the model returns {outputs} outputs but a {target_kind} target with"
            f" {len(dataset.class_names)} classes needs {' or '.join(map(str, expected))}",
            hint="check the model's head (model.kwargs) and data.target; if the audited rows"
            " lack some of the model's classes, list them all in data.target.classes",
        )
    bad = ~torch.isfinite(logits.float()).reshape(len(logits), -1).all(1)
    if bool(bad.any()):
        from mmaudit.engine.nonfinite_outputs import some_ids

        values = logits[bad]
        kinds = [k for k, hit in (("NaN", values.isnan()), ("inf", values.isinf())) if hit.any()]
        ids = dataset.ids[batch.index.cpu().numpy()[bad.cpu().numpy()]]
        hint = "check the checkpoint (weights, dtype) and these rows' inputs"
        if adapter.effective_precision == "fp16":
            hint += "; fp16 overflows to inf: try runtime.precision bf16 or fp32"
        raise NonFiniteOutputError(
            f"model output 'logits' is {'/'.join(kinds)} for {some_ids(ids)} ({len(ids)} of"
            f" {len(batch)} rows of the first batch, probed before the run)",
            hint=hint,
        )
