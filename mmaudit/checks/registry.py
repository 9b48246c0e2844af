"""The registry of built-in checks: every module or package under ``mmaudit/checks/`` that is
not one of the shared pieces (contract, findings, plotting, this registry) is a check and
registers itself with ``@register`` when imported.

Kept apart from ``contract`` so that the contract imports no check (no import circle).
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable

from mmaudit.checks.contract import REGISTRY, Check, config_place
from mmaudit.engine.errors import CheckError

SHARED_MODULES = frozenset({"contract", "findings", "plotting", "registry"})


def load_builtin_checks() -> dict[str, type[Check]]:
    """Import every module in ``mmaudit.checks`` (each registers itself); return the registry."""
    import mmaudit.checks as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name in SHARED_MODULES:
            continue
        importlib.import_module(f"mmaudit.checks.{info.name}")
    return REGISTRY


def get_check(name: str, locate: Callable[[str], str] | None = None) -> type[Check]:
    """The registered check ``name``; CheckError with a did-you-mean otherwise (and, for a
    name from the config file, its file and line)."""
    registry = load_builtin_checks()
    if name not in registry:
        close = difflib.get_close_matches(name, list(registry), n=1)
        hint = (
            f"did you mean '{close[0]}'?"
            if close
            else f"known checks: {', '.join(sorted(registry))}"
        )
        at = config_place(locate, f"checks.{name}")
        raise CheckError(f"{at}unknown check '{name}'", hint=hint + " (see `mmaudit checks`)")
    return registry[name]
