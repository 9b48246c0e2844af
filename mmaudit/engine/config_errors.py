"""One ``ConfigError`` line for a config that fails validation: where (file, line, dotted key
path), what is wrong, and a hint (a close match for a typo, what to write, the default).

The line is found in the composed YAML tree (``line_of``); the allowed keys and defaults are
read from the models in ``config`` (``AuditConfig``). ``describe_error`` is shared with the
checks, whose parameters are validated elsewhere but should read the same way.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from mmaudit.engine.config import AuditConfig, cell_text
from mmaudit.engine.errors import ConfigError


def dotted_key(loc: tuple[Any, ...]) -> str:
    """A key path as written in messages: ``data.image.std[1]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f"{'.' if text else ''}{part}"
    return text


def _annotation_at(loc: tuple[Any, ...]) -> Any:
    """The type of the value at ``loc`` in AuditConfig (None when it cannot be followed):
    through model fields, ``X | None``, ``dict[str, X]`` values and ``list[X]`` items."""
    current: Any = AuditConfig
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        elif typing.get_origin(current) is list:
            current = typing.get_args(current)[0]
        else:
            return None
    return _unwrap(current)


def _unwrap(annotation: Any) -> Any:
    """``X`` from ``X | None`` and ``Annotated[X, ...]``; other unions stay as they are."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return annotation


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Keys allowed at ``loc`` (for did-you-mean on unknown keys)."""
    model = _annotation_at(loc)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _default_at(loc: tuple[Any, ...]) -> Any:
    """The default of the field at ``loc``; None when it has none (or is not a field)."""
    model = _annotation_at(loc[:-1]) if loc else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    field = model.model_fields.get(str(loc[-1]))
    if field is None or field.is_required():
        return None
    return field.get_default(call_default_factory=True)


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the key (or list item) at ``loc`` in the composed YAML tree; the
    deepest one found when the path leaves the tree."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    line = key.start_mark.line + 1
                    node = value
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _scalar_at(node: yaml.Node | None, loc: tuple[Any, ...]) -> str | None:
    """The text of the scalar at ``loc`` as written in the YAML (``yes``), or None."""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if 0 <= part < len(node.value) else None
        else:
            return None
    return node.value if isinstance(node, yaml.ScalarNode) else None


_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def _shown(value: Any) -> str:
    """A YAML value as quoted in a message, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_error(err: ErrorDetails) -> str:
    """What is wrong with one value, as a short phrase: ``must be >= 0 (got -1)``.

    Public so that check parameters, validated elsewhere, can read the same way.
    """
    kind = err["type"]
    got = err.get("input")
    if kind in _BOUNDS:
        sign, name = _BOUNDS[kind]
        return f"must be {sign} {cell_text((err.get('ctx') or {})[name])} (got {_shown(got)})"
    if kind == "finite_number":
        return f"must be a finite number (got {_shown(got)})"
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "value_error" or isinstance(got, dict):
        return msg
    return f"{msg} (got {_shown(got)})"


def _primary(errors: list[ErrorDetails]) -> tuple[ErrorDetails, str | None, int]:
    """The error to show, the missing required key it stands for, and how many remain.

    A misspelt required key (``modle:``) is two errors to pydantic, "missing model" and
    "unknown modle"; the user made one mistake, so they read as one line about the typo.
    """
    missing = [tuple(e["loc"]) for e in errors if e["type"] == "missing"]
    for err in errors:
        if err["type"] != "extra_forbidden":
            continue
        loc = tuple(err["loc"])
        required = [str(m[-1]) for m in missing if m[:-1] == loc[:-1]]
        close = difflib.get_close_matches(str(loc[-1]), required, n=1)
        if close:
            return err, close[0], len(errors) - 2
    return errors[0], None, len(errors) - 1


def validation_error(exc: ValidationError, path: Path, tree: yaml.Node | None) -> ConfigError:
    """One ConfigError line for a failed validation: file, line, key path, what is wrong,
    and a hint (a close match for typos, what to write, the default)."""
    err, required, rest = _primary(exc.errors())
    loc = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "config_rule":
        loc = (*loc, *ctx.get("at", ()))
    key = dotted_key(loc) or "(top level)"
    line = line_of(tree, loc)
    where = f"{path}:{line}" if line else str(path)
    more = f" [+{rest} more]" if rest > 0 else ""
    reference = "configs/full.yaml documents every option"
    if kind == "config_rule":
        return ConfigError(f"{where}: {key}: {ctx['message']}{more}", hint=ctx["hint"])
    if kind == "string_type" and isinstance(err.get("input"), bool):
        # YAML 1.1 reads yes / no / on / off / true / false unquoted as a boolean
        written = _scalar_at(tree, loc) or str(err["input"]).lower()
        name = f"{loc[-1]}: " if isinstance(loc[-1], str) else "- "
        return ConfigError(
            f"{where}: {key}: YAML reads {written} as a boolean, not text{more}",
            hint=f"quote it: {name}'{written}'",
        )
    if kind == "extra_forbidden":
        if required is not None:
            hint = f"did you mean '{required}'? It is required and not given"
        else:
            allowed = _fields_at(loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"
        return ConfigError(f"{where}: unknown key '{key}'{more}", hint=hint)
    if kind == "missing":
        return ConfigError(
            f"{where}: missing required key '{key}'{more}", hint=f"add it; {reference}"
        )
    if kind == "attribute_entry":
        got = err.get("input")
        what = "is empty" if got is None else f"must be a mapping, not {_shown(got)}"
        return ConfigError(
            f"{where}: {key} {what}{more}",
            hint=f"write `{loc[-1]}: {{kind: categorical}}` (or continuous), or remove the line",
        )
    default = _default_at(loc)
    if err.get("input", "") is None and kind.endswith("_type"):
        what = "its keys" if _fields_at(loc) else "a value"
        drop = " or remove the line for the default" if default is not None else ""
        return ConfigError(f"{where}: {key} is empty{more}", hint=f"give {what}{drop}; {reference}")
    hint = f"the default is {_shown(default)}; {reference}" if default is not None else reference
    return ConfigError(f"{where}: {key}: {describe_error(err)}{more}", hint=hint)


def format_validation_error(exc: ValidationError, path: Path, tree: yaml.Node | None) -> str:
    """The one line (hint included) that ``validation_error`` gives, as text."""
    return validation_error(exc, path, tree).one_line()
