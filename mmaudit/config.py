"""The YAML audit config: pydantic models with ``extra="forbid"`` and ``load_config()``.

Unknown keys are errors that name the file, the key path, the line and a close
match; relative paths resolve against the config file's folder, so a config can
be run from anywhere.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmaudit.errors import ConfigError

MODALITIES: tuple[str, ...] = ("image", "text", "tabular")


def cell_text(value: Any) -> str:
    """A manifest cell or YAML scalar as the text it is compared by: whole floats without
    ``.0``, because pandas reads an integer column with a blank cell as float."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


class Strict(BaseModel):
    """Base model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


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
    size: int = 224
    channels: Literal[1, 3] = 1
    mean: list[float] = Field(default_factory=lambda: [0.5])
    std: list[float] = Field(default_factory=lambda: [0.25])
    # white level of greyscale PNG / TIFF images with more than 8 bits: the stored value read
    # as 1.0; auto = the file's bit depth (a PNG sBIT chunk's significant bits when present)
    max_value: Literal["auto"] | float = "auto"

    @field_validator("size")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 8:
            raise ValueError("image.size must be at least 8 pixels")
        return v

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


class TextConfig(Strict):
    """Report text column and the local tokenizer folder."""

    column: str
    tokenizer: Path
    max_length: int = 128


class TabularConfig(Strict):
    """Lab / vitals columns; normalisation stats from the data or given."""

    columns: list[str]
    normalization: Literal["data", "given", "none"] = "data"
    mean: dict[str, float] = Field(default_factory=dict)
    std: dict[str, float] = Field(default_factory=dict)

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
            return [cell_text(x) if isinstance(x, int | float) else x for x in v]
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
    id: str = "id"
    patient: str | None = None
    target: TargetConfig
    image: ImageConfig | None = None
    text: TextConfig | None = None
    tabular: TabularConfig | None = None
    attributes: dict[str, AttributeConfig] = Field(default_factory=dict)
    split: SplitConfig | None = None
    missing: MissingConfig = Field(default_factory=MissingConfig)

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
    seed: int = 0
    max_samples: int | None = Field(default=None, ge=1)
    progress: bool = True

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


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed at ``loc`` (for did-you-mean on unknown keys)."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    """The BaseModel class inside ``X | None`` or ``dict[str, X]`` annotations, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the key at ``loc`` in the composed YAML tree."""
    line = None
    for part in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for key, value in node.value:
            if key.value == str(part):
                line = key.start_mark.line + 1
                node = value
                break
        else:
            break
    return line


def format_validation_error(exc: ValidationError, path: Path, tree: yaml.Node | None) -> str:
    """One line: file, line, key path, what is wrong, and a close match for typos."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    line = _line_of(tree, loc)
    where = f"{path}:{line}" if line else str(path)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(AuditConfig, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; allowed keys: {', '.join(allowed)}"
        return f"{where}: unknown key '{key}'{hint}"
    if err["type"] == "missing":
        return f"{where}: missing required key '{key}'"
    msg = msg.removeprefix("Value error, ")
    got = err.get("input")
    shown = (
        f" (got {got!r})"
        if err["type"] not in ("value_error",) and not isinstance(got, dict)
        else ""
    )
    more = f" [+{len(exc.errors()) - 1} more]" if len(exc.errors()) > 1 else ""
    return f"{where}: {key}: {msg}{shown}{more}"


def load_config(path: str | Path) -> AuditConfig:
    """Read, validate and resolve an audit config; ConfigError with one clear line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path}", hint="check the path, or copy configs/sample.yaml"
        )
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
        tree = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: the config must be a YAML mapping with model, data, checks, runtime"
        )
    try:
        cfg = AuditConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path, tree)) from exc
    cfg = _resolve_paths(cfg, path.resolve().parent)
    return cfg


def config_to_yaml(cfg: AuditConfig) -> str:
    """The resolved config as YAML (paths absolute), as written into the report."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
