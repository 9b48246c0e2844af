"""Command-line values (``--device``, ``--batch-size``, ...) that replace config values for
one run, and putting them into the config."""

from __future__ import annotations

from dataclasses import dataclass

from mmaudit.engine.config import AuditConfig
from mmaudit.engine.errors import ConfigError


@dataclass
class Overrides:
    """Command-line values that replace config values for one run."""

    checks: list[str] | None = None
    device: str | None = None
    batch_size: int | None = None
    max_samples: int | None = None
    progress: bool | None = None
    redact: bool | None = None


def apply_overrides(cfg: AuditConfig, o: Overrides) -> AuditConfig:
    """``cfg`` with the command-line values put in; ConfigError for an invalid one."""
    if o.device is not None:
        try:
            cfg.runtime.device = type(cfg.runtime)._device(o.device)  # type: ignore[attr-defined]
        except ValueError as exc:
            raise ConfigError(
                f"--device {o.device!r} is not a device", hint="use auto, cpu, cuda, cuda:N or mps"
            ) from exc
    if o.batch_size is not None:
        cfg.runtime.batch_size = o.batch_size
    if o.max_samples is not None:
        cfg.runtime.max_samples = o.max_samples
    if o.progress is not None:
        cfg.runtime.progress = o.progress
    if o.redact is not None:
        cfg.report.redact = o.redact
    return cfg
