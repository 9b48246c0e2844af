"""The work folder where finished sweep batches wait for ``--resume``: prepared (emptied, or
kept when its meta.json matches this run) and asked whether any batch finished."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mmaudit.engine.config import AuditConfig
from mmaudit.engine.errors import MmauditError
from mmaudit.report.folder import WORK_OWNER, work_folder
from mmaudit.runner.fingerprints import config_fingerprint


def any_batch_done(work_dir: Path) -> bool:
    """Whether a sweep left finished batches in ``work_dir`` (its ``*.done.npy`` flags)."""
    import numpy as np

    for flags in work_dir.glob("*.done.npy"):
        try:
            if np.load(flags, mmap_mode="r").any():
                return True
        except (OSError, ValueError):  # a flag file cut short: nothing to resume from it
            continue
    return False


def prepare_work_dir(
    out: Path, cfg: AuditConfig, model_sha: str, manifest_sha: str, resume: bool
) -> Path:
    """The folder where finished sweep batches wait for a --resume (hidden sibling of OUT).

    Without ``resume`` (or with nothing to resume) the folder is emptied, but not removed:
    rank 0 holds its lock (``WorkLock``), taken on the folder itself, since the run began.
    """
    from mmaudit.engine import distributed

    work = work_folder(out)
    meta = {
        "config": config_fingerprint(cfg),
        "checkpoint": model_sha,
        "manifest": manifest_sha,
        "world_size": distributed.world_size(),
    }
    meta_file = work / "meta.json"
    if resume and meta_file.is_file():
        try:
            previous = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            previous = None
        if not isinstance(previous, dict):
            raise MmauditError(
                f"--resume: {meta_file} is unreadable (cut short?)",
                hint="run without --resume to start over",
            )
        changed = [k for k in meta if previous.get(k) != meta[k]]
        if changed:
            raise MmauditError(
                f"--resume: {work} comes from a run with another {', '.join(changed)}",
                hint="run without --resume to start over",
            )
        return work
    distributed.barrier()
    if distributed.is_main():
        work.mkdir(parents=True, exist_ok=True)
        for entry in work.iterdir():
            if entry.name == WORK_OWNER:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        meta_file.write_text(json.dumps(meta))
    distributed.barrier()
    return work
