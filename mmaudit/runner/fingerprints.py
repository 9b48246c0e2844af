"""The digests that identify a run's inputs: the checkpoint's files (``model.sha256``, the
--resume key), the manifest, the tokenizer folder, and the config's result-deciding part."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mmaudit.engine.config import AuditConfig


def sha256_of(paths: list[Path]) -> str:
    """One digest over the bytes of every file given (in order)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def tokenizer_sha256(cfg: AuditConfig) -> str | None:
    """One digest over the tokenizer folder's files (names and bytes), None without text."""
    if cfg.data.text is None:
        return None
    folder = Path(cfg.data.text.tokenizer)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        h.update(sha256_of([p]).encode())
    return h.hexdigest()


def checkpoint_files(cfg: AuditConfig) -> list[Path]:
    """The files whose bytes make the checkpoint's identity (``model.sha256``, the --resume
    key): a built-in checkpoint's folder, a TorchScript file, or a factory's weights and
    the factory's source (its code builds the model, so editing it is another checkpoint).
    Imports the factory, as loading the model does: call it after ``load_model``."""
    m = cfg.model
    if m.checkpoint is not None:
        return sorted(p for p in Path(m.checkpoint).iterdir() if p.is_file())
    if m.torchscript is not None:
        return [Path(m.torchscript)]
    files = [Path(m.weights)] if m.weights is not None else []
    if m.factory is not None:
        from mmaudit.engine.loading import factory_source_files

        files += factory_source_files(m.factory, m.python_path)
    return files


def config_fingerprint(cfg: AuditConfig) -> str:
    """A hash of what decides the results (not how progress is shown)."""
    raw = cfg.model_dump(mode="json")
    raw["runtime"].pop("progress", None)
    raw["runtime"].pop("device", None)
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()
