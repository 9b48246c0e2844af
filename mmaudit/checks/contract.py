"""The Check contract: base class, registry, ``AuditContext`` and ``CheckOutput``.

A check is one module or package in ``mmaudit/checks/`` with one ``@register`` class
(``registry.py`` finds them). It
declares what it needs (modalities, layers, ROI masks); when those are missing
it is ``skipped`` with the reason. It computes flat dotted metrics, tables and
figures; it does not judge them: ``findings.py`` applies thresholds (defaults
plus YAML) afterwards.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from mmaudit.engine.config import cell_text
from mmaudit.engine.config_errors import describe_error
from mmaudit.engine.errors import CheckError
from mmaudit.methods.stats import Estimate

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from mmaudit.engine.adapter import ModelAdapter
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.config import AuditConfig
    from mmaudit.engine.data import AuditDataset

Severity = Literal["pass", "warn", "fail", "error", "note"]
MetricValue = Estimate | float | int | str | None


class ThresholdRule(BaseModel):
    """Judge one metric (or every metric matching a ``*`` pattern) against limits.

    ``statistic`` picks what the limits compare (the value or a CI bound). Two gates must
    both hold before anything but ``pass`` is raised: ``max_p``, the metric's (corrected)
    null p-value at most this; ``ci_low_above``, its CI lower bound above this (0: the CI
    excludes zero). A metric without the p-value or CI a gate needs passes.
    """

    model_config = ConfigDict(extra="forbid")

    metric: str
    warn_above: float | None = None
    fail_above: float | None = None
    warn_below: float | None = None
    fail_below: float | None = None
    statistic: Literal["value", "ci_low", "ci_high"] = "value"
    max_p: float | None = None
    ci_low_above: float | None = None
    # what the rule computes, in the terms of its metric (shown by `mmaudit checks NAME` and
    # kept in report.json as the finding's ``detail``)
    message: str = ""
    # plain words for a finding this rule raises: what was found, naming the attribute /
    # modality / layer; ``{0}``, ``{1}`` ... are the parts of the metric name the ``*`` of
    # ``metric`` matched, ``{metric}`` the whole name
    found: str = ""
    # the effect in its own units, appended to the judged number's evidence (same
    # placeholders; ``{m[KEY]}`` is the check's metric KEY with its CI, ``$0`` in KEY the
    # first matched part): "erasing site moves predictions by {m[erasure.dp.$0]}"
    evidence: str = ""
    # what to do about it (same placeholders)
    next_step: str = ""
    # the name of the check's figure that shows it (same placeholders), when one does
    figure: str = ""


class Finding(BaseModel):
    """A judged statement about the audited model, written for the person who acts on it.

    ``message`` says what was found in plain words (the attribute / modality / region /
    layer by name); ``evidence`` the numbers behind it (the metric with its CI and corrected
    p, and the limit); ``next_step`` what to do. ``rule`` and ``metric`` stay as the code
    tag that ties it to report.json and the YAML thresholds; ``detail`` is the rule's own
    technical definition. ``figure`` names the check's figure that shows it.
    """

    check: str
    rule: str
    severity: Severity
    message: str
    evidence: str = ""
    next_step: str = ""
    detail: str = ""
    figure: str | None = None
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None


class Requirements(BaseModel):
    """What a check needs to run; a missing need gives ``skipped`` with the reason."""

    any_modality: list[str] = []
    all_modalities: list[str] = []
    min_modalities: int = 0
    layers: list[str] = []
    hooks: bool = False
    roi_mask: bool = False


@dataclass
class CheckOutput:
    """What a check computed: flat dotted metrics, tables, figures, own findings, notes, and
    what its verdict rests on.

    ``judged`` counts the statistical tests / comparisons the check's thresholds judge (a
    probe with its permutation p, a subgroup gap, an off-ROI excess ...). 0 means nothing
    could be tested on this data: the runner then reports the check ``skipped`` with
    ``skip_reason`` (which should name the counts that fell short), never ``pass``, because
    a gate that goes green on an audit that tested nothing is worse than no gate. None
    means the check does not say (third-party checks); every built-in check sets it.
    ``rows_used`` is how many audited rows those tests rest on. ``coverage`` holds the
    partial-coverage notes with counts ("20 of 40 image rows have a non-empty ROI mask"):
    every view shows them, unlike the other notes, so a verdict on part of the data never
    reads as a verdict on all of it.
    """

    metrics: dict[str, MetricValue] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    per_sample: pd.DataFrame | None = None
    # per-sample arrays in dataset order (e.g. low-resolution saliency maps, N x h x w), saved
    # compactly so that `mmaudit diff` can compare two audits sample by sample
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # names of figures / tables / arrays that show raw patient data (thumbnails, report text,
    # ids; "arrays" for every array): left out of the report folder under --redact
    private: set[str] = field(default_factory=set)
    judged: int | None = None
    rows_used: int | None = None
    skip_reason: str | None = None
    coverage: list[str] = field(default_factory=list)
    # default rules that cannot apply to this model (rule name -> why, in plain words): the
    # runner does not judge them and reports the reason as a note, not a warning (EMAP's
    # "no interaction" on a model whose fusion cannot express one)
    exempt_rules: dict[str, str] = field(default_factory=dict)
    # what to do about an exempted rule, when the rule's own next step (advice for a raised
    # finding, e.g. "find where 'portable' comes from") would read wrong on a "not judged" note
    exempt_next_steps: dict[str, str] = field(default_factory=dict)

    def extend(self, part: CheckOutput) -> None:
        """Append what one stage computed: ``part``'s metrics, tables, figures and arrays
        after the ones here (a name already here keeps its place and takes the new value),
        its findings, notes and coverage after these, its private names joined, and its
        per-sample frame, when it has one, in place of this one. A check built of stages
        assembles its output this way, so the report keeps the order of the stages."""
        self.metrics.update(part.metrics)
        self.tables.update(part.tables)
        self.figures.update(part.figures)
        self.findings.extend(part.findings)
        self.notes.extend(part.notes)
        self.arrays.update(part.arrays)
        self.private |= part.private
        self.coverage.extend(part.coverage)
        self.exempt_rules.update(part.exempt_rules)
        self.exempt_next_steps.update(part.exempt_next_steps)
        if part.per_sample is not None:
            self.per_sample = part.per_sample


@dataclass
class AuditContext:
    """Everything a check may use; the cache is the only way to run the model."""

    config: AuditConfig
    dataset: AuditDataset
    adapter: ModelAdapter
    cache: InferenceCache
    seed: int = 0
    redact: bool = False

    @property
    def target(self) -> np.ndarray:
        return self.dataset.target

    @property
    def groups(self) -> np.ndarray | None:
        """Patient ids for resampling, or None (rows resampled)."""
        return self.dataset.patients

    @property
    def memory_budget_mb(self) -> float:
        """``runtime.memory_budget_mb`` in MB: the configured number, or for ``auto`` what the
        cache resolved for the model's device when the audit began (once: free device
        memory changes as the audit runs)."""
        from mmaudit.methods.memory_budget import resolve_budget_mb

        value = self.config.runtime.memory_budget_mb
        if value == "auto" and self.cache.memory is not None:
            return self.cache.memory.budget_mb
        budget = resolve_budget_mb(value, self.adapter.device)
        assert budget is not None
        return budget

    def rng(self, salt: str) -> np.random.Generator:
        """A generator seeded from the run seed and a per-use salt (stable across runs)."""
        import zlib

        return np.random.default_rng([self.seed, zlib.crc32(salt.encode())])


class Check:
    """Base class. Subclasses set ``name``, ``Params``, ``default_thresholds``, ``requires``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    default_thresholds: ClassVar[dict[str, ThresholdRule]] = {}
    requires: ClassVar[Requirements] = Requirements()
    layers_wanted: ClassVar[list[str]] = []
    # the figures that show the check's result at a glance, in the order the report page
    # leads with them (``fnmatch`` patterns over the check's figure names); the others follow
    # on demand
    key_figures: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def missing_requirements(self, ctx: AuditContext) -> str | None:
        """Why this check cannot run on this model/data, or None."""
        r = self.requires
        mods = set(ctx.dataset.modalities)
        if r.any_modality and not mods & set(r.any_modality):
            return f"needs one of the modalities {r.any_modality}; the config has {sorted(mods)}"
        lacking = [m for m in r.all_modalities if m not in mods]
        if lacking:
            return f"needs the modalities {lacking}, which the config does not have"
        if len(mods) < r.min_modalities:
            return f"needs at least {r.min_modalities} modalities; the config has {sorted(mods)}"
        if (r.hooks or r.layers) and not ctx.adapter.supports_hooks:
            return "needs layer hooks, which a TorchScript model does not allow"
        lacking = [ly for ly in r.layers if ly not in ctx.adapter.layers]
        if lacking:
            return f"needs model.layers {lacking} (not configured and not detected)"
        if r.roi_mask and not ctx.dataset.mask_paths:
            return "needs data.image.roi_mask"
        return None

    def run(self, ctx: AuditContext) -> CheckOutput:  # pragma: no cover - abstract
        raise NotImplementedError


REGISTRY: dict[str, type[Check]] = {}


def register(cls: type[Check]) -> type[Check]:
    """Class decorator: add a check to the registry under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise TypeError(f"two checks named {cls.name!r}")
    REGISTRY[cls.name] = cls
    return cls


def config_place(locate: Callable[[str], str] | None, key: str) -> str:
    """``FILE:LINE: `` before a message about the dotted config ``key``, when the config's
    file is known (``locate`` gives its place), else nothing."""
    return f"{locate(key)}: " if locate is not None else ""


def _did_you_mean(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"


def _key_text(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as written in messages: ``methods[0]``, ``a.b``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f"{'.' if text else ''}{part}"
    return text


def _param_hint(model: type[BaseModel], loc: tuple[Any, ...], what: str) -> str:
    """What the parameter at ``loc`` is and its default, from the model's field, so the
    fix can be read off the message; ``what`` where the field is not found."""
    field_info = model.model_fields.get(str(loc[0])) if loc else None
    if field_info is None:
        return what
    parts = [field_info.description] if field_info.description else []
    default = (
        None if field_info.is_required() else field_info.get_default(call_default_factory=True)
    )
    if default is not None:  # None: the description says what leaving it out does
        parts.append(f"the default is {default!r}")
    return f"{loc[0]}: {'; '.join(parts)}; {what}" if parts else what


def build_params(
    cls: type[Check],
    raw: dict[str, Any],
    where: str,
    locate: Callable[[str], str] | None = None,
) -> BaseModel:
    """Validate a check's YAML params; CheckError naming the file, line and key otherwise,
    worded as config errors are (``must be >= 1 (got 0)``, not pydantic's sentence)."""
    try:
        return cls.Params.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        err = errors[0]
        loc = tuple(err["loc"])
        key = _key_text(loc)
        at = config_place(locate, f"{where}.params.{'.'.join(str(p) for p in loc)}")
        more = f" [+{len(errors) - 1} more]" if len(errors) > 1 else ""
        if err["type"] == "extra_forbidden":
            hint = _did_you_mean(key, list(cls.Params.model_fields))
            raise CheckError(f"{at}{where}.params: unknown key '{key}'{more}", hint=hint) from exc
        hint = _param_hint(cls.Params, loc, "`mmaudit checks` lists every parameter")
        raise CheckError(
            f"{at}{where}.params.{key}: {describe_error(err)}{more}", hint=hint
        ) from exc


def inverted_limits(limits: dict[str, Any]) -> str | None:
    """Why a rule's warn / fail limits are the wrong way round (a fail_below above
    warn_below, a fail_above below warn_above: fail would fire on values that do not even
    warn), or None."""
    warn, fail = limits.get("warn_below"), limits.get("fail_below")
    if warn is not None and fail is not None and fail > warn:
        return (
            f"fail_below {cell_text(fail)} is above warn_below {cell_text(warn)};"
            " fail must be the stricter limit"
        )
    warn, fail = limits.get("warn_above"), limits.get("fail_above")
    if warn is not None and fail is not None and fail < warn:
        return (
            f"fail_above {cell_text(fail)} is below warn_above {cell_text(warn)};"
            " fail must be the stricter limit"
        )
    return None


def merged_thresholds(
    cls: type[Check],
    overrides: dict[str, dict[str, Any]],
    where: str,
    locate: Callable[[str], str] | None = None,
) -> dict[str, ThresholdRule]:
    """Default thresholds updated by the YAML ones (a new rule needs a ``metric``);
    CheckError naming the file, line and key otherwise."""
    rules = {k: v.model_copy() for k, v in cls.default_thresholds.items()}
    for name, change in overrides.items():
        if name not in rules and "metric" not in change:
            close = difflib.get_close_matches(name, list(rules), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "a new rule needs a 'metric' key"
            at = config_place(locate, f"{where}.thresholds.{name}")
            raise CheckError(f"{at}{where}.thresholds: unknown rule '{name}'", hint=hint)
        base = rules[name].model_dump() if name in rules else {}
        try:
            rules[name] = ThresholdRule.model_validate({**base, **change})
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            at = config_place(locate, f"{where}.thresholds.{name}.{key}")
            if err["type"] == "extra_forbidden":
                hint = _did_you_mean(key, list(ThresholdRule.model_fields))
                raise CheckError(
                    f"{at}{where}.thresholds.{name}: unknown key '{key}'", hint=hint
                ) from exc
            hint = "`mmaudit checks` lists each check's default thresholds"
            raise CheckError(
                f"{at}{where}.thresholds.{name}.{key}: {describe_error(err)}", hint=hint
            ) from exc
        # only the limits written together: raising a default's fail floor alone is fine
        # (fail wins over warn), writing both the wrong way round is a mistake
        problem = inverted_limits(change)
        if problem is not None:
            key = _inverted_key(change, problem)
            at = config_place(locate, f"{where}.thresholds.{name}.{key}")
            raise CheckError(
                f"{at}{where}.thresholds.{name}.{key}: {problem}",
                hint="set fail_below <= warn_below, fail_above >= warn_above",
            )
    return rules


def _inverted_key(change: dict[str, Any], message: str) -> str:
    """The limit key the user wrote in a rule whose warn / fail limits are inverted (the
    error is the rule's, not one key's): the pair's fail key when given, else its warn key."""
    side = "above" if "fail_above" in message else "below"
    return (
        f"fail_{side}"
        if f"fail_{side}" in change or f"warn_{side}" not in change
        else f"warn_{side}"
    )


def figure_dir(out: Path, check: str) -> Path:
    return out / "figures" / check
