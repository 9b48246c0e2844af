"""The per-sample file of a report: predictions and pooled embeddings, only as far as
``report.save_predictions`` / ``save_embeddings`` ask, so `mmaudit diff` can pair two audits."""

from __future__ import annotations

from typing import Any

from mmaudit.engine.config import AuditConfig
from mmaudit.report.writer import ReportWriter


def pooled(values: Any) -> Any:
    """One vector per sample: token outputs (N, T, D) and feature maps (N, C, H, W) averaged."""
    if values.ndim == 3:
        return values.mean(axis=1)
    if values.ndim == 4:
        return values.mean(axis=(2, 3))
    return values.reshape(len(values), -1)


def save_samples(
    cfg: AuditConfig, dataset: Any, cache: Any, writer: ReportWriter
) -> dict[str, Any]:
    """Per-sample predictions and compact embeddings, so `mmaudit diff` can pair two audits.

    Only what ``report.save_predictions`` / ``save_embeddings`` ask for: with embeddings
    alone, the frame holds just the ids the embeddings are paired by.
    """
    import pandas as pd

    saved: dict[str, Any] = {"predictions": False, "embeddings": [], "embeddings_left_out": []}
    if not cfg.report.save_predictions and not cfg.report.save_embeddings:
        return saved
    sweep = cache.sweep()
    frame = pd.DataFrame({"id": [str(i) for i in dataset.ids]})
    if cfg.report.save_predictions:
        add_predictions(frame, cfg, dataset, sweep)
    layers = {}
    if cfg.report.save_embeddings:
        layers = {name: pooled(v) for name, v in sweep.embeddings.items()}
    left_out = writer.add_samples(frame, layers, cfg.report.embeddings_max_mb)
    saved["predictions"] = cfg.report.save_predictions
    saved["embeddings"] = [k for k in layers if k not in left_out]
    saved["embeddings_left_out"] = left_out
    return saved


def add_predictions(frame: Any, cfg: AuditConfig, dataset: Any, sweep: Any) -> None:
    """Add patient, target(s), logits and probabilities to the per-sample ``frame``."""
    from mmaudit.checks.performance import sweep_probs

    if dataset.patients is not None:
        frame["patient"] = [str(p) for p in dataset.patients]
    target = dataset.target
    if target.ndim == 1:
        frame["target"] = target
    else:
        for k, name in enumerate(dataset.class_names):
            frame[f"target.{name}"] = target[:, k]
    probs = sweep_probs(sweep.logits, cfg.data.target.kind)
    for k in range(sweep.logits.shape[1]):
        frame[f"logit.{k}"] = sweep.logits[:, k]
        frame[f"prob.{k}"] = probs[:, k]
