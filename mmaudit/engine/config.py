"""The YAML audit config: pydantic models with ``extra="forbid"`` and ``load_config()``.

Every problem with a config is one ``ConfigError`` line that names the file, the line and
the key path, with a hint: unknown keys (with a close match, the missing required key first),
keys given twice, values out of range, empty entries, text that is not UTF-8. Relative paths
resolve against the config file's folder, so a config can be run from anywhere.
"""

from __future__ import annotations

import codecs
import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from mmaudit.engine.errors import ConfigError

MODALITIES: tuple[str, ...] = ("image", "text", "tabular")


def cell_text(value: Any) -> str:
    """A manifest cell or YAML scalar as the text it is compared by: whole floats without
    ``.0``, because pandas reads an integer column with a blank cell as float."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _defaults_for_none(model: type[BaseModel], name: str) -> bool:
    """Whether ``name: null`` in ``model`` stands for the field's default: a section or
    mapping with a default (``runtime``, ``model.kwargs``), where null is not a value."""
    field = model.model_fields[name]
    annotation = field.annotation
    allows_none = annotation is None or type(None) in typing.get_args(annotation)
    return field.default_factory is not None and not allows_none


PositiveFloat = Annotated[float, Field(gt=0)]


def rule_error(message: str, hint: str, at: tuple[str | int, ...] = ()) -> PydanticCustomError:
    """A validation error that carries its own hint, for rules across keys (a column listed
    twice, the target used as an attribute); ``at`` continues the key path below the model
    that raises it, so the message names the offending entry and its line."""
    return PydanticCustomError(
        "config_rule", "{message}", {"message": message, "hint": hint, "at": at}
    )


class Strict(BaseModel):
    """Base model: unknown keys and NaN / infinite numbers are errors; an empty section
    (``runtime:`` with every line commented out) means its defaults."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_section_is_default(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {
            k: v
            for k, v in data.items()
            if not (v is None and k in cls.model_fields and _defaults_for_none(cls, k))
        }


class ModelConfig(Strict):
    """Which checkpoint to audit and how to call it."""

    checkpoint: Path | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: Path | None = None
    torchscript: Path | None = None
    python_path: list[Path] = Field(default_factory=list)
    inputs: dict[str, str] = Field(default_factory=dict)
    layers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        given = [k for k in ("checkpoint", "factory", "torchscript") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of model.checkpoint, model.factory or model.torchscript"
                f" (got {', '.join(given) or 'none'})"
            )
        if self.weights is not None and self.factory is None:
            raise ValueError("model.weights is only used with model.factory")
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(
                f"model.factory must look like 'package.module:function', got {self.factory!r}"
            )
        allowed = {"image", "text", "text_mask", "tabular", "present"}
        unknown = set(self.inputs) - allowed
        if unknown:
            raise ValueError(
                f"model.inputs keys must be among {sorted(allowed)}, got {sorted(unknown)}"
            )
        return self


class TargetConfig(Strict):
    """The label: one column (binary or multiclass) or several columns (multilabel)."""

    column: str | None = None
    columns: list[str] | None = None
    kind: Literal["binary", "multiclass", "multilabel"] = "binary"
    classes: list[str] | None = None
    positive: str | None = None

    @model_validator(mode="after")
    def _columns(self) -> TargetConfig:
        if self.kind == "multilabel":
            if not self.columns:
                raise ValueError("a multilabel target needs data.target.columns")
        elif not self.column:
            raise ValueError(f"a {self.kind} target needs data.target.column")
        return self

    @property
    def all_columns(self) -> list[str]:
        return list(self.columns or []) if self.kind == "multilabel" else [str(self.column)]


class ImageConfig(Strict):
    """Image path column and the preprocessing the model expects."""

    column: str
    roi_mask: str | None = None
    root: Path | None = None
    # below 8 pixels no CNN stem leaves a feature map to explain
    size: int = Field(default=224, ge=8)
    channels: Literal[1, 3] = 1
    mean: list[float] = Field(default_factory=lambda: [0.5])
    std: list[PositiveFloat] = Field(default_factory=lambda: [0.25])
    # white level of greyscale PNG / TIFF images with more than 8 bits: the stored value read
    # as 1.0; auto = the file's bit depth (a PNG sBIT chunk's significant bits when present)
    max_value: Literal["auto"] | float = "auto"

    @field_validator("max_value", mode="before")
    @classmethod
    def _white_level(cls, v: Any) -> Any:
        if v == "auto":
            return v
        try:
            number = float(v)
        except (TypeError, ValueError):
            number = float("nan")
        if not number > 0:
            raise ValueError(f"image.max_value must be auto or a positive number, got {v!r}")
        return number

    @field_validator("mean", "std")
    @classmethod
    def _per_channel(cls, v: list[float], info: ValidationInfo) -> list[float]:
        channels = info.data.get("channels", 1)
        if len(v) not in (1, channels):
            wanted = "1 value" if channels == 1 else f"1 value (every channel) or {channels}"
            raise ValueError(f"{len(v)} values; give {wanted} (image.channels is {channels})")
        return v


class TextConfig(Strict):
    """Report text column and the local tokenizer folder."""

    column: str
    tokenizer: Path
    # 2: room for the [CLS] and [SEP] a tokenizer adds; with 1 it pads nothing and
    # truncates nothing, so reports come out longer than max_length
    max_length: int = Field(default=128, ge=2)


class TabularConfig(Strict):
    """Lab / vitals columns; normalisation stats from the data or given."""

    columns: list[str]
    normalization: Literal["data", "given", "none"] = "data"
    mean: dict[str, float] = Field(default_factory=dict)
    std: dict[str, PositiveFloat] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _each_once(self) -> TabularConfig:
        # a repeated lab would be fed to the model twice and ranked twice in attribution
        first: dict[str, int] = {}
        for i, c in enumerate(self.columns):
            if c in first:
                raise rule_error(
                    f"'{c}' is listed twice (items {first[c]} and {i})",
                    hint="list each column once",
                    at=("columns", i),
                )
            first[c] = i
        return self

    @model_validator(mode="after")
    def _given(self) -> TabularConfig:
        if self.normalization == "given":
            missing = [c for c in self.columns if c not in self.mean or c not in self.std]
            if missing:
                raise ValueError(f"normalization 'given' needs mean and std for {missing}")
        return self


class AttributeConfig(Strict):
    """A patient / acquisition attribute; never fed to the model."""

    column: str | None = None
    kind: Literal["categorical", "continuous"] = "categorical"
    bins: list[float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:
        # `site:` (null) or `site: continuous` would otherwise get pydantic's "valid
        # dictionary" message; which kind is meant is not for us to guess
        if not isinstance(data, dict):
            raise PydanticCustomError("attribute_entry", "{message}", {"message": "not a mapping"})
        return data

    @field_validator("bins")
    @classmethod
    def _edges(cls, v: list[float] | None, info: ValidationInfo) -> list[float] | None:
        # a typo such as [40, 60, 6] would otherwise be sorted into other groups silently
        if v is None:
            return v
        if info.data.get("kind") != "continuous":
            raise ValueError("only a kind: continuous attribute has bins; set kind or drop bins")
        if not v:
            raise ValueError("give the bin edges, e.g. [40, 60, 75], or leave bins out")
        if any(lo >= hi for lo, hi in zip(v, v[1:], strict=False)):
            edges = ", ".join(cell_text(b) for b in v)
            raise ValueError(f"must be increasing edges, got [{edges}]")
        return v


class SplitConfig(Strict):
    """Keep only rows whose ``column`` is one of ``values``.

    Values compare as text: YAML numbers are written the way the column's cells are
    (``1`` and ``1.0`` both as ``'1'``), so a fold column that pandas reads as float
    because of one blank cell is still selected by ``values: [1]``.
    """

    column: str
    values: list[str]

    @field_validator("values", mode="before")
    @classmethod
    def _numbers_as_text(cls, v: Any) -> Any:
        if isinstance(v, list):
            # not bools (an int to Python): `values: [yes]` must be refused, not read 'True'
            return [
                cell_text(x) if isinstance(x, int | float) and not isinstance(x, bool) else x
                for x in v
            ]
        return v


class MissingConfig(Strict):
    """What a model without a presence-mask keyword gets for a missing modality.

    Applied only when the model's forward takes no ``present`` mask; a model that
    takes one gets the mask and the inputs unchanged (zeros, empty text).
    """

    image: Literal["zero", "mean"] = "zero"
    text: Literal["empty", "mask"] = "empty"
    tabular: Literal["zero", "mean"] = "zero"


class DataConfig(Strict):
    """The manifest and how to read each modality from it."""

    manifest: Path
    # the CSV field separator (Parquet ignores it); 'tab' or '\\t' for a tab
    separator: str = ","
    id: str = "id"
    patient: str | None = None
    target: TargetConfig
    image: ImageConfig | None = None
    text: TextConfig | None = None
    tabular: TabularConfig | None = None
    attributes: dict[str, AttributeConfig] = Field(default_factory=dict)
    split: SplitConfig | None = None
    missing: MissingConfig = Field(default_factory=MissingConfig)

    @field_validator("separator")
    @classmethod
    def _one_character(cls, v: str) -> str:
        v = {"tab": "\t", "\\t": "\t"}.get(v, v)
        if len(v) != 1 or v in '"\r\n':
            raise ValueError(
                f"data.separator must be one character such as ',' ';' or tab, got {v!r}"
            )
        return v

    @model_validator(mode="after")
    def _target_is_not_an_input(self) -> DataConfig:
        # a lab that is the label hands the model the answer; an attribute that is the label
        # splits the rows into groups of one class, where no metric can be computed
        target = set(self.target.all_columns)
        where = "data.target.column" if self.target.kind != "multilabel" else "data.target.columns"
        if self.tabular is not None:
            for i, c in enumerate(self.tabular.columns):
                if c in target:
                    raise rule_error(
                        f"column '{c}' is the target ({where}); a lab column holding the label"
                        " gives the model the answer",
                        hint="remove it from data.tabular.columns",
                        at=("tabular", "columns", i),
                    )
        for name, a in self.attributes.items():
            column = a.column or name
            if column in target:
                raise rule_error(
                    f"column '{column}' is the target ({where}); subgroups of the target hold"
                    " one class each, so no per-group metric can be computed",
                    hint=f"remove data.attributes.{name}",
                    at=("attributes", name),
                )
        return self

    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if getattr(self, m) is not None]


class CheckConfig(Strict):
    """Per-check switch, parameters and threshold overrides."""

    enabled: bool = True
    params: dict[str, Any] = Field(default_factory=dict)
    thresholds: dict[str, dict[str, Any]] = Field(default_factory=dict)


class RuntimeConfig(Strict):
    """Where and how the model runs."""

    device: str = "auto"
    batch_size: int = Field(default=64, ge=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    num_workers: int = Field(default=0, ge=0)
    # numpy's legacy seeding and scikit-learn's random_state take 0 .. 2**32 - 1
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    max_samples: int | None = Field(default=None, ge=1)
    progress: bool = True
    # exit 1 when a check is skipped (its requirements unmet), as for a failed gate
    fail_on_skipped: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {v!r}")


class ReportConfig(Strict):
    """What the report folder keeps besides metrics (for `mmaudit diff`) and what it hides."""

    redact: bool = False
    save_predictions: bool = True
    save_embeddings: bool = True
    embeddings_max_mb: float = Field(default=32.0, ge=0)


class AuditConfig(Strict):
    """The whole audit config."""

    model: ModelConfig
    data: DataConfig
    checks: dict[str, CheckConfig] = Field(default_factory=dict)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @field_validator("checks", mode="before")
    @classmethod
    def _none_is_default(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: ({} if c is None else c) for k, c in v.items()}
        return v


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
                    raise DuplicateKeyError(_dotted((*loc, part)), first[key.tag, part], line)
                first[key.tag, part] = line
            _refuse_duplicate_keys(value, (*loc, part), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, (*loc, i), seen)


def _dotted(loc: tuple[Any, ...]) -> str:
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


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
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
    key = _dotted(loc) or "(top level)"
    line = _line_of(tree, loc)
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
