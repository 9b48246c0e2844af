"""Reading an audit config file: ``load_config`` reads the text (UTF-8 only), parses the YAML
refusing keys given twice, validates it against ``AuditConfig`` and resolves relative paths
against the config file's folder, so a config can be run from anywhere. Every problem is one
``ConfigError`` line naming the file and line. ``config_to_yaml`` writes the resolved config
back out for the report.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mmaudit.engine.config import AuditConfig
from mmaudit.engine.config_errors import dotted_key, validation_error
from mmaudit.engine.errors import ConfigError


def _resolve_paths(cfg: AuditConfig, base: Path) -> AuditConfig:
    """Make every relative path absolute against the config's folder."""

    def fix(p: Path | None) -> Path | None:
        if p is None:
            return None
        p = Path(p).expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    m = cfg.model
    m.checkpoint, m.weights, m.torchscript = fix(m.checkpoint), fix(m.weights), fix(m.torchscript)
    m.python_path = [fix(p) for p in m.python_path]  # type: ignore[misc]
    d = cfg.data
    d.manifest = fix(d.manifest)  # type: ignore[assignment]
    if d.image is not None:
        d.image.root = fix(d.image.root)
    if d.text is not None:
        d.text.tokenizer = fix(d.text.tokenizer)  # type: ignore[assignment]
    return cfg


_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one YAML mapping (plain YAML loading keeps the last silently)."""

    def __init__(self, key: str, first: int, second: int) -> None:
        lines = f"on line {first}" if first == second else f"(lines {first} and {second})"
        super().__init__(f"key '{key}' appears twice {lines}")
        self.key, self.second = key, second


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping, at any depth.

    Why: PyYAML keeps the last value, so a second ``batch_size:`` further down silently
    overrides the one the user is looking at. Keys merged in with ``<<: *anchor`` may be
    overridden, as YAML means them to be.
    """

    def compose_document(self) -> yaml.Node | None:  # type: ignore[override]
        node = super().compose_document()
        _refuse_duplicate_keys(node, (), set())
        return node


def _refuse_duplicate_keys(node: yaml.Node | None, loc: tuple[Any, ...], seen: set[int]) -> None:
    """Raise DuplicateKeyError for the first mapping under ``node`` that repeats a key."""
    if node is None or id(node) in seen:  # an alias shares its anchor's node
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if key.tag == _MERGE_TAG:
                continue
            part = key.value if isinstance(key, yaml.ScalarNode) else "?"
            if isinstance(key, yaml.ScalarNode):
                line = key.start_mark.line + 1
                if (key.tag, part) in first:
                    raise DuplicateKeyError(dotted_key((*loc, part)), first[key.tag, part], line)
                first[key.tag, part] = line
            _refuse_duplicate_keys(value, (*loc, part), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, (*loc, i), seen)


def _read_text(path: Path) -> str:
    """The config file's text; ConfigError naming the line and byte offset when it is not
    UTF-8 (a comment typed in Latin-1, a file saved as UTF-16)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the config: {exc.strerror or exc}", hint="check its permissions"
        ) from exc
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ConfigError(f"{path}: the config is UTF-16 text, not UTF-8", hint="save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        column = len(data[start : exc.start].decode("utf-8")) + 1  # valid up to the bad byte
        raise ConfigError(
            f"{path}:{line}:{column}: not UTF-8 text (byte 0x{data[exc.start]:02x} at byte"
            f" offset {exc.start})",
            hint="save it as UTF-8",
        ) from exc


def load_config(path: str | Path) -> AuditConfig:
    """Read, validate and resolve an audit config; ConfigError with one clear line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path}", hint="check the path, or copy configs/sample.yaml"
        )
    text = _read_text(path)
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
    except DuplicateKeyError as exc:
        raise ConfigError(
            f"{path}:{exc.second}: {exc}", hint="keep one; YAML would silently use the last"
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"{where}: YAML syntax error: {problem}",
            hint="check the indentation, colons and quotes on that line and the one above",
        ) from exc
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: the config must be a YAML mapping with model, data, checks, runtime",
            hint="start from configs/sample.yaml",
        )
    try:
        cfg = AuditConfig.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc, path, tree) from exc
    cfg = _resolve_paths(cfg, path.resolve().parent)
    return cfg


def config_to_yaml(cfg: AuditConfig) -> str:
    """The resolved config as YAML (paths absolute), as written into the report."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
