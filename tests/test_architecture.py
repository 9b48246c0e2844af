"""The layering rules, read from the import graph (ast), so that the layout cannot rot:

- ``methods`` (the algorithms) import nothing from checks, report, the runner or cli;
- a check imports no other check, no report, no runner, no cli (the shared pieces of
  ``checks/`` — contract, findings, plotting, registry — are not checks);
- ``engine`` imports no check, report, runner or cli;
- ``report`` imports no check (it works from report.json and the contract's data types);
- no import circle anywhere, counting imports inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmaudit"
SHARED_CHECK_MODULES = {"contract", "findings", "plotting", "registry"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """Every mmaudit module ``tree`` imports (at any depth, except under TYPE_CHECKING):
    ``from a.b import c`` counts as ``a.b.c`` when that is a module, else ``a.b``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mmaudit"))
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("mmaudit")
        ):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else str(node.module))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the mmaudit modules it imports."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {
        name: _imports(ast.parse(path.read_text(), str(path)), modules) - {name}
        for name, path in files.items()
    }


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "top"


def _check_of(module: str) -> str | None:
    """The check a module belongs to (``mmaudit.checks.saliency.maps`` -> ``saliency``)."""
    parts = module.split(".")
    if len(parts) < 3 or parts[1] != "checks" or parts[2] in SHARED_CHECK_MODULES:
        return None
    return parts[2]


def rule_breaks(graph: dict[str, set[str]]) -> list[str]:
    breaks = []
    for module, targets in sorted(graph.items()):
        layer = _layer(module)
        for target in sorted(targets):
            to_layer = _layer(target)
            to_check = _check_of(target)
            if layer == "methods" and to_layer in {"checks", "report", "runner", "cli"}:
                breaks.append(f"{module} (methods) imports {target}")
            if layer == "engine" and to_layer in {"checks", "report", "runner", "cli"}:
                breaks.append(f"{module} (engine) imports {target}")
            if layer == "report" and to_check is not None:
                breaks.append(f"{module} (report) imports the check {target}")
            own = _check_of(module)
            if own is not None:
                if to_check is not None and to_check != own:
                    breaks.append(f"{module} (check {own}) imports another check: {target}")
                if to_layer in {"report", "runner", "cli"}:
                    breaks.append(f"{module} (check {own}) imports {target}")
    return breaks


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return cycles


def test_layers_import_only_downwards() -> None:
    assert rule_breaks(import_graph()) == []


def test_no_import_circle() -> None:
    assert import_cycles(import_graph()) == []


def test_the_rules_can_fail() -> None:
    """The reader sees a planted break and a planted circle."""
    graph = {
        "mmaudit.methods.stats": {"mmaudit.checks.findings"},
        "mmaudit.checks.saliency": {"mmaudit.checks.attribution", "mmaudit.report.writer"},
        "mmaudit.checks.attribution": set(),
        "mmaudit.checks.findings": {"mmaudit.methods.stats"},
        "mmaudit.report.writer": set(),
    }
    assert len(rule_breaks(graph)) == 3
    assert import_cycles(graph) == [["mmaudit.checks.findings", "mmaudit.methods.stats"]]


@pytest.mark.parametrize("layer", ["engine", "methods", "checks", "report", "sample"])
def test_every_layer_is_a_package(layer: str) -> None:
    assert (PACKAGE / layer / "__init__.py").is_file()


CHECK_MODULE_LINES = 300


def test_a_check_package_keeps_its_orchestration_short() -> None:
    """A check that is a package keeps the class, its parameters and the order of its stages
    in ``check.py`` (at most 300 lines); the work is in the stage modules."""
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in (PACKAGE / "checks").glob("*/check.py")
        if (n := len(path.read_text().splitlines())) > CHECK_MODULE_LINES
    }
    assert long == {}
    assert len(list((PACKAGE / "checks").glob("*/check.py"))) >= 6
