"""Which checks a run runs (validated params, merged thresholds; errors that name the config
file and line), which it leaves out and why, and the config as it ran (what config.yaml
holds, so the report reruns that audit)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmaudit.checks.contract import Check, build_params, merged_thresholds
from mmaudit.checks.registry import get_check, load_builtin_checks
from mmaudit.engine.config import AuditConfig
from mmaudit.engine.errors import CheckError


@dataclass
class PlannedCheck:
    name: str
    check: Check
    rules: dict[str, Any]
    raw_params: dict[str, Any] = field(default_factory=dict)


def plan_checks(
    cfg: AuditConfig, only: list[str] | None = None, config_path: str | Path | None = None
) -> list[PlannedCheck]:
    """Resolve which checks run, with validated params and merged thresholds (fails fast).

    Every registered check runs unless its ``checks:`` entry says ``enabled: false``: an
    entry configures a check, it does not select it (a threshold override for one check
    must not switch the others off). ``only`` (``--checks a,b``) narrows to those checks.
    With ``config_path``, errors in a ``checks:`` entry name the file and line.
    """
    registry = load_builtin_checks()
    locate = config_locator(Path(config_path)) if config_path is not None else None
    for name in cfg.checks:
        get_check(name, locate)  # unknown names in the YAML are errors with a did-you-mean
    if only:
        names = list(dict.fromkeys(get_check(n).name for n in only))
    else:
        names = [n for n in sorted(registry) if n not in cfg.checks or cfg.checks[n].enabled]
    if not names:
        raise CheckError(
            "no checks to run: every check is disabled in the config",
            hint="remove 'enabled: false' from one, or name checks with --checks",
        )
    planned = []
    for name in names:
        cls = get_check(name)
        cc = cfg.checks.get(name)
        raw = cc.params if cc else {}
        params = build_params(cls, raw, f"checks.{name}", locate)
        rules = merged_thresholds(cls, cc.thresholds if cc else {}, f"checks.{name}", locate)
        planned.append(PlannedCheck(name, cls(params), rules, raw))
    return planned


NOT_REQUESTED = "not requested (--checks)"
DISABLED = "disabled in config"


def checks_not_run(
    cfg: AuditConfig, planned: list[PlannedCheck], only: list[str] | None
) -> dict[str, str]:
    """Every registered check that is not in ``planned``, with why it does not run.

    Why: a run narrowed by ``--checks`` must say so in its report, or it reads as a full
    audit in which the left-out checks found nothing.
    """
    ran = {pc.name for pc in planned}
    not_run = {}
    for name in sorted(load_builtin_checks()):
        if name in ran:
            continue
        disabled = name in cfg.checks and not cfg.checks[name].enabled
        not_run[name] = DISABLED if disabled or not only else NOT_REQUESTED
    return not_run


def config_as_run(cfg: AuditConfig, planned: list[PlannedCheck]) -> AuditConfig:
    """A copy of ``cfg`` whose ``checks:`` section selects exactly the checks that ran
    (``enabled: false`` for the others, ``enabled: true`` for one named by ``--checks``
    although disabled in the file), so the config.yaml a report holds reruns that audit."""
    from mmaudit.engine.config import CheckConfig

    out = cfg.model_copy(deep=True)
    ran = {pc.name for pc in planned}
    for name in sorted(load_builtin_checks()):
        entry = out.checks.get(name)
        if name in ran and entry is not None and not entry.enabled:
            entry.enabled = True
        elif name not in ran:
            if entry is None:
                out.checks[name] = CheckConfig(enabled=False)
            else:
                entry.enabled = False
    return out


def narrowing_comment(only: list[str] | None) -> str:
    """A YAML comment heading config.yaml when ``--checks`` narrowed the run ('' if not)."""
    if not only:
        return ""
    return (
        f"# narrowed on the command line: --checks {','.join(only)}\n"
        "# (the checks it left out are written below as enabled: false)\n"
    )


def config_locator(path: Path) -> Callable[[str], str]:
    """``key -> "FILE:LINE"`` for dotted keys of the config file (the file alone when the
    key is not found), so check-level errors point where top-level ones do."""
    import yaml

    from mmaudit.engine.config_errors import line_of

    try:
        tree = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        tree = None

    def locate(key: str) -> str:
        line = line_of(tree, tuple(key.split(".")))
        return f"{path}:{line}" if line else str(path)

    return locate
