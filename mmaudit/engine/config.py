"""The YAML audit config as pydantic models with ``extra="forbid"``: what every section may
hold, its defaults and ranges, and the rules across keys. Reading a config file is
``config_file.load_config``; the one-line messages for a bad value are ``config_errors``.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

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
    # DataLoader workers; auto = the free cores when the model runs on CUDA (decoding then
    # overlaps the model), 0 on CPU, where workers would compete with the model for cores
    num_workers: int | Literal["auto"] = "auto"
    # the memory one pass over the model (IG, CAMs, occlusion, the sweep) may take; batch x
    # path points are split into chunks that fit it. auto: 384 MB on CPU, half the free
    # device memory on CUDA (methods.memory_budget.auto_budget_mb; the report records it)
    memory_budget_mb: Annotated[float, Field(gt=0)] | Literal["auto"] = "auto"
    # numpy's legacy seeding and scikit-learn's random_state take 0 .. 2**32 - 1
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    max_samples: int | None = Field(default=None, ge=1)
    progress: bool = True
    # exit 1 when a check is skipped (its requirements unmet), as for a failed gate
    fail_on_skipped: bool = False

    @field_validator("memory_budget_mb", mode="before")
    @classmethod
    def _memory_budget(cls, v: Any) -> Any:
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if v != "auto" and not (number and v > 0):
            raise ValueError(f"must be a number of MB > 0 or auto (got {v!r})")
        return v

    @field_validator("num_workers", mode="before")
    @classmethod
    def _num_workers(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and v < 0:
            raise ValueError(f"must be >= 0 or auto (got {v})")
        return v

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
