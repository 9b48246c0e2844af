"""``run_audit()``: config -> dataset + model -> one cached sweep -> checks -> report folder.

The runner sits above engine, checks and report and drives them for ``mmaudit run``; only
the cli and the tests import it. One module per concept:

- ``overrides``: command-line values that replace config values (``Overrides``);
- ``plan``: which checks run, which do not and why, and the config as it ran;
- ``preflight``: the model's first batch, checked before anything else runs;
- ``fingerprints``: digests of the checkpoint, manifest, tokenizer and config;
- ``resume``: the work folder of finished sweep batches kept for ``--resume``;
- ``environment``: versions, device and precision as report.json records them;
- ``samples``: the per-sample predictions and embeddings file;
- ``check_run``: one check run and judged into its ``CheckReport``;
- ``null_writer``: the writer of ranks other than 0 (writes nothing);
- ``audit``: ``run_audit`` itself, which puts these in order.
"""

from __future__ import annotations

from mmaudit.runner.audit import run_audit
from mmaudit.runner.fingerprints import checkpoint_files
from mmaudit.runner.overrides import Overrides, apply_overrides
from mmaudit.runner.plan import (
    DISABLED,
    NOT_REQUESTED,
    PlannedCheck,
    checks_not_run,
    config_as_run,
    plan_checks,
)
from mmaudit.runner.preflight import probe_model
from mmaudit.runner.resume import any_batch_done

__all__ = [
    "DISABLED",
    "NOT_REQUESTED",
    "Overrides",
    "PlannedCheck",
    "any_batch_done",
    "apply_overrides",
    "checkpoint_files",
    "checks_not_run",
    "config_as_run",
    "plan_checks",
    "probe_model",
    "run_audit",
]
