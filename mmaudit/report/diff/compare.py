"""``mmaudit diff``: compare two report folders (no model, no GPU).

Metrics are aligned by check and name. A move is *significant* when a paired
bootstrap says so, or else when the two CIs do not overlap (or, for numbers without a
CI, when the move exceeds the tolerance). Paired bootstraps resample whole patients
(when either report saved a patient column) and need both reports to have saved
per-sample values for the same ids: performance metrics are recomputed from
``samples/predictions.parquet``; a metric that is the mean of a column of a check's
``samples/<check>.parquet`` (``PER_SAMPLE_MEANS``, or a check's own ``per_sample_means``)
is paired on that column. Either way the recomputed value must reproduce the stored
one, or the metric falls back to CI overlap.

The *direction* of a metric (higher / lower is better, or neutral) comes from, in
order: the check class's ``metric_directions``, the table ``METRIC_DIRECTIONS`` here,
and the check's threshold rules (``*_below`` limits mean higher is better, ``*_above``
lower). A *regression* is a worse check status (``error`` ranks worst; a check that
judged something in the base audit, pass included, and was skipped, having tested
nothing, in the new one), a check that the base report ran but the new one lacks (unless
ignored with ``ignore_checks``, the CLI's ``--ignore-check``), a new (or more severe)
warn / fail finding, or a significant move in the bad direction beyond the tolerance (an
unpaired one only when the new value crosses its rule; see ``_diff_metric``). Findings of
a check that errored or was skipped in the new audit are not counted as resolved:
nothing re-checked them. Representation comparison (linear CKA per layer, prediction
churn, rank correlation of per-sample maps) uses the compact arrays saved in ``samples/``.

Both folders are read through ``load_report``, which refuses one whose report.json or
per-sample files no longer match the digests recorded when it was written (a hand-edited
AUROC would otherwise be compared as if measured); a report from before digests is
compared with a note that it could not be verified.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import json
import math
import re
import zipfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from mmaudit.engine.errors import ReportError
from mmaudit.report.render import markdown_cell
from mmaudit.report.writer import CheckReport, Report, load_report

# skipped ranks with pass: it holds no evidence either way, but skipped -> fail is worse
# (and pass / warn / fail -> skipped is a regression of its own: see ``_diff_status``).
# error ranks above fail: a check that crashed shows nothing, so fail -> error is not
# "no worse" (the failure it had found may still be there, and the check is now broken).
STATUS_RANK = {"pass": 0, "skipped": 0, "warn": 1, "fail": 2, "error": 3}
# new-report statuses whose (missing) findings say nothing about the base report's ones
NO_EVIDENCE = ("error", "skipped")
Direction = Literal["higher", "lower", "neutral"]

# Per check, metric glob -> direction, first match wins. Only quality scores of the audited
# model itself: the same name elsewhere can mean the opposite (a probe's AUROC for a
# protected attribute is better low; an ablated model's AUROC is neither).
_QUALITY: dict[str, Direction] = {
    "auroc": "higher",
    "auroc.*": "higher",
    "auroc_macro": "higher",
    "auprc": "higher",
    "accuracy": "higher",
    "balanced_accuracy": "higher",
    "f1*": "higher",
    "r2": "higher",
    "ece": "lower",
    "log_loss": "lower",
    "brier": "lower",
}
METRIC_DIRECTIONS: dict[str, dict[str, Direction]] = {
    "performance": _QUALITY,
    "ablation": {f"full.{k}": v for k, v in _QUALITY.items()},
    "subgroups": {
        "gap.*": "lower",
        "eod.*": "lower",
        "group.*.auroc": "higher",
        "group.*.tpr": "higher",
        "group.*.ece": "lower",
        "group.*.fpr": "lower",
    },
}

# Per check, metric regex -> per-sample column template (re.Match.expand): the metric is
# the mean of that column over the rows where it is finite.
PER_SAMPLE_MEANS: dict[str, dict[str, str]] = {
    "saliency": {r"(off_roi|border|pointing|rank_acc)\.(\w+)": r"\2.\1"},
    "ablation": {r"logit_share\.(\w+)": r"share.\1"},
    "attribution": {r"shares\.(\w+)": r"share.\1"},
}


class MetricDelta(BaseModel):
    check: str
    metric: str
    base: float | None
    new: float | None
    delta: float | None
    direction: Direction = "neutral"
    significant: bool = False
    method: str = "none"
    p: float | None = None
    tolerance: float = 0.0
    regression: bool = False
    improvement: bool = False
    # a significant move for the worse that stays inside the rule's limits (not a regression)
    worse_within_limits: bool = False

    @property
    def verdict(self) -> str:
        """One word for people: regression, improved, worse (within limits), moved, or ''."""
        if self.regression:
            return "regression"
        if self.improvement:
            return "improved"
        if self.worse_within_limits:
            return "worse (within limits)"
        return "moved" if self.significant else ""


class FindingChange(BaseModel):
    check: str
    rule: str
    metric: str | None
    severity: str
    message: str
    # for a finding whose severity changed: the severity in the base report
    was: str | None = None


class DiffResult(BaseModel):
    base: str
    new: str
    comparable: bool
    not_comparable_reasons: list[str] = Field(default_factory=list)
    status_changes: list[dict[str, Any]] = Field(default_factory=list)
    metrics: list[MetricDelta] = Field(default_factory=list)
    new_findings: list[FindingChange] = Field(default_factory=list)
    resolved_findings: list[FindingChange] = Field(default_factory=list)
    # the same finding at a lower severity (fail -> warn): an improvement
    improved_findings: list[FindingChange] = Field(default_factory=list)
    representation: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    prediction_churn: float | None = None
    shared_samples: int = 0
    array_rank_correlation: dict[str, float | None] = Field(default_factory=dict)
    # checks the base report ran that the new one lacks (each also a regression)
    missing_checks: list[str] = Field(default_factory=list)
    # checks left out of the comparison on request (``ignore_checks``)
    ignored_checks: list[str] = Field(default_factory=list)
    regressions: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def to_json(self) -> str:
        """Strict JSON (NaN / inf as null)."""
        from mmaudit.report.writer import json_safe

        return json.dumps(json_safe(self.model_dump(mode="python")), indent=2, allow_nan=False)


def parse_tolerances(values: list[str] | None, default: float = 0.01) -> dict[str, float]:
    """``["0.02", "performance.auroc=0.1", "saliency.*=0.05"]`` -> {pattern: tolerance}."""
    out: dict[str, float] = {"*": default}
    for raw in values or []:
        pattern, sep, number = raw.rpartition("=")
        try:
            value = float(number)
        except ValueError as exc:
            raise ReportError(f"--tolerance {raw!r}: expected NUMBER or PATTERN=NUMBER") from exc
        if not math.isfinite(value) or value < 0:
            raise ReportError(f"--tolerance {raw!r}: the tolerance must be a finite number >= 0")
        out[pattern if sep else "*"] = value
    return out


def tolerance_for(name: str, tolerances: dict[str, float]) -> float:
    """The most specific (longest) matching pattern wins."""
    matches = [p for p in tolerances if fnmatch.fnmatchcase(name, p)]
    return tolerances[max(matches, key=len)] if matches else 0.0


def _declared(check: str, attribute: str) -> dict[str, Any]:
    """A check class's own table (``metric_directions`` / ``per_sample_means``), if any."""
    return dict(_declared_tables(check, attribute))


@functools.cache
def _declared_tables(check: str, attribute: str) -> tuple[tuple[str, Any], ...]:
    """``_declared`` looked up once per check and attribute: finding the check classes
    imports every check module (and torch), seconds that a diff should pay only once."""
    from mmaudit.checks.registry import load_builtin_checks

    try:
        cls = load_builtin_checks().get(check)
    except Exception:  # a check module that fails to import must not break a diff
        return ()
    return tuple((getattr(cls, attribute, None) or {}).items())


def metric_direction(metric: str, check: CheckReport) -> Direction:
    """Higher / lower is better: declared by the check, else ``METRIC_DIRECTIONS``, else the
    check's threshold rules; neutral when none of them speaks."""
    tables = (_declared(check.name, "metric_directions"), METRIC_DIRECTIONS.get(check.name, {}))
    for table in tables:
        for pattern, direction in table.items():
            if fnmatch.fnmatchcase(metric, pattern):
                return direction
    for rule in check.thresholds.values():
        if not fnmatch.fnmatchcase(metric, str(rule.get("metric", ""))):
            continue
        below = rule.get("warn_below") is not None or rule.get("fail_below") is not None
        above = rule.get("warn_above") is not None or rule.get("fail_above") is not None
        if below and not above:
            return "higher"
        if above and not below:
            return "lower"
    return "neutral"


def _flagged(name: str, metric: str, check: CheckReport) -> bool:
    """Whether ``metric``'s value in ``check`` crosses one of its rules (limit and p)."""
    from mmaudit.checks.contract import ThresholdRule
    from mmaudit.checks.findings import judge
    from mmaudit.methods.stats import Estimate

    raw = check.metrics[metric]
    value = Estimate.from_dict(raw) if isinstance(raw, dict) else raw
    try:
        rules = {
            k: ThresholdRule.model_validate(r)
            for k, r in check.thresholds.items()
            if fnmatch.fnmatchcase(metric, str(r.get("metric", "")))
        }
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ReportError(
            f"{name}: a threshold rule for {metric} is malformed (hand-edited report.json?)"
        ) from exc
    return bool(judge(name, {metric: value}, rules))


def _value(m: Any, where: str = "metric") -> tuple[float | None, float | None, float | None]:
    """(value, ci_low, ci_high) of a stored metric. A plain string is a label (no delta);
    an estimate whose numbers are not numbers was edited by hand: ReportError."""
    if isinstance(m, dict):
        out = []
        for key in ("value", "ci_low", "ci_high"):
            x = m.get(key)
            if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float))):
                raise ReportError(
                    f"{where}: {key} is {x!r}, not a number (hand-edited report.json?)"
                )
            out.append(None if x is None else float(x))
        return out[0], out[1], out[2]
    if isinstance(m, bool) or not isinstance(m, (int, float)):
        return None, None, None
    return float(m), None, None


# data.* keys that hold where files are, not what they hold: the same data checked out
# elsewhere must stay comparable. Their contents are compared by hash instead (the
# manifest's and the tokenizer folder's sha256 in report.data).
PATH_KEYS = {"manifest": None, "image": "root", "text": "tokenizer"}


def comparability(base: Report, new: Report) -> list[str]:
    """Reasons why two audits are not comparable (empty when they are): different data, or
    a config difference that changes the numbers (data section other than file locations,
    tokenizer contents, seed, params of the checks both ran). Threshold differences change
    verdicts, not numbers: see ``threshold_differences``."""
    reasons = []
    if base.data.get("sha256") != new.data.get("sha256"):
        reasons.append("the manifests differ (sha256)")
    tok_a, tok_b = base.data.get("tokenizer_sha256"), new.data.get("tokenizer_sha256")
    if tok_a is not None and tok_b is not None and tok_a != tok_b:
        reasons.append("the tokenizers differ (sha256)")
    if base.data.get("n") != new.data.get("n"):
        reasons.append(f"different sample counts ({base.data.get('n')} vs {new.data.get('n')})")
    bd, nd = _without_paths(base.config.get("data", {})), _without_paths(new.config.get("data", {}))
    for key in sorted(set(bd) | set(nd)):
        reasons += [f"data.{p}" + " differs" for p in _differences(bd.get(key), nd.get(key), key)]
    if base.seed != new.seed:
        reasons.append(f"seed differs ({base.seed} vs {new.seed})")
    for name in sorted(set(base.checks) & set(new.checks)):
        a, b = base.checks[name], new.checks[name]
        for p in _differences(a.params, b.params, ""):
            reasons.append(f"checks.{name}.params{'.' + p if p else ''} differs")
    return reasons


def threshold_differences(base: Report, new: Report) -> list[str]:
    """Threshold rules that differ between the checks both ran: the same numbers may get
    another verdict, so the diff shows them as a note rather than refusing."""
    out = []
    for name in sorted(set(base.checks) & set(new.checks)):
        a, b = base.checks[name], new.checks[name]
        for p in _differences(a.thresholds, b.thresholds, ""):
            out.append(f"checks.{name}.thresholds{'.' + p if p else ''}")
    return out


def _without_paths(data: Any) -> dict[str, Any]:
    """A copy of the config's data section without the ``PATH_KEYS`` entries."""
    out = dict(data or {})
    for key, sub in PATH_KEYS.items():
        if sub is None:
            out.pop(key, None)
        elif isinstance(out.get(key), dict):
            out[key] = {k: v for k, v in out[key].items() if k != sub}
    return out


def _differences(a: Any, b: Any, path: str) -> list[str]:
    """Dotted paths where two config values differ (at most the first 3 per subtree)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{k}" if path else str(k)
            out += _differences(a.get(k), b.get(k), sub)
        return out[:3]
    return [] if a == b else [path]


@dataclass
class Samples:
    """What one report folder saved per sample (each part None / empty when absent)."""

    folder: Path
    report: Report
    predictions: Any = None  # DataFrame: id, [patient], target*, logit.k, prob.k
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)  # id -> patient
    _tables: dict[str, Any] = field(default_factory=dict)
    # report-relative paths of per-sample files the report names but the folder lacks (only
    # in a report from before digests: load_report refuses a sealed one missing a file)
    missing: list[str] = field(default_factory=list)

    def table(self, check: str) -> Any:
        """The check's ``samples/<check>.parquet`` as a DataFrame with an ``id`` column; None
        when the check saved none, or the file is gone (trimmed artifact; listed in
        ``missing``)."""
        if check not in self._tables:
            rel = (
                self.report.checks[check].tables.get("per_sample")
                if check in self.report.checks
                else None
            )
            if rel and not (self.folder / rel).is_file():
                self.missing.append(rel)
                rel = None
            frame = _read_parquet(self.folder / rel) if rel else None
            if frame is not None and "id" in frame:
                frame["id"] = frame["id"].astype(str)
            self._tables[check] = frame if frame is not None and "id" in frame else None
        return self._tables[check]


def _read_parquet(path: Path) -> Any:
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for truncated / foreign files
        raise ReportError(
            f"{path}: unreadable parquet (truncated or edited?): {type(exc).__name__}"
        ) from exc


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ReportError(
            f"{path}: unreadable npz (truncated or edited?): {type(exc).__name__}"
        ) from exc


def load_samples(folder: Path, report: Report) -> Samples:
    """Predictions, embeddings and the id -> patient map a report saved (ReportError on a
    corrupt file). The patient map comes from predictions.parquet, or else from any
    check's per-sample table that carries one."""
    s = Samples(folder=folder, report=report)
    path = folder / "samples" / "predictions.parquet"
    if path.is_file():
        s.predictions = _read_parquet(path)
        if "id" not in s.predictions:
            raise ReportError(f"{path}: no id column (edited?)")
        s.predictions["id"] = s.predictions["id"].astype(str)
    npz = folder / "samples" / "embeddings.npz"
    if npz.is_file():
        s.embeddings = _read_npz(npz)
    # lazily: the first table with a patient column ends the search
    sources = itertools.chain([s.predictions], (s.table(name) for name in report.checks))
    for frame in sources:
        if frame is not None and "patient" in frame and "id" in frame:
            s.patients = dict(
                zip(frame["id"].astype(str), frame["patient"].astype(str), strict=True)
            )
            break
    return s


def _patient_groups(ids: Any, base: Samples, new: Samples) -> np.ndarray | None:
    """Patient of each paired id (from either report), or None when neither saved one."""
    lookup = base.patients or new.patients
    if not lookup:
        return None
    return np.array([lookup.get(str(i), f"id:{i}") for i in ids])


def _performance_stat(
    metric: str, b: CheckReport, kind: str, frame: Any
) -> tuple[Callable[..., float], Callable[[str], tuple[np.ndarray, ...]]] | None:
    """The statistic the performance check used for ``metric`` and a function that picks
    its inputs from a merged predictions frame (suffix ``_a`` / ``_b``); None if unknown."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    from mmaudit.methods.classification import accuracy, auprc, macro_auroc
    from mmaudit.methods.stats import auroc, expected_calibration_error, multiclass_ece

    threshold = float(b.params.get("threshold", 0.5))
    bins = int(b.params.get("ece_bins", 15))
    probs = sorted(
        (c[: -len("_a")] for c in frame.columns if c.startswith("prob.") and c.endswith("_a")),
        key=lambda c: int(c.split(".")[1]) if c.split(".")[1].isdigit() else 0,
    )
    if not probs:
        return None
    if kind == "binary" and "target_a" in frame:
        score = probs[-1]  # P(positive): the one sigmoid output or the second softmax column

        def pick(side: str) -> tuple[np.ndarray, ...]:
            return frame["target_a"].to_numpy().astype(int), frame[f"{score}_{side}"].to_numpy()

        def hard(fn: Callable[..., float]) -> Callable[..., float]:
            return lambda y, s: float(fn(y, (s >= threshold).astype(int)))

        stats: dict[str, Callable[..., float]] = {
            "auroc": auroc,
            "auprc": auprc,
            "accuracy": hard(accuracy),
            "balanced_accuracy": hard(balanced_accuracy_score),
            "f1": hard(lambda y, p: f1_score(y, p, zero_division=0)),
            "ece": lambda y, s: expected_calibration_error(y, s, bins),
        }
        return (stats[metric], pick) if metric in stats else None
    if kind == "multiclass" and "target_a" in frame and len(probs) > 1:

        def pick(side: str) -> tuple[np.ndarray, ...]:
            p = frame[[f"{c}_{side}" for c in probs]].to_numpy()
            return frame["target_a"].to_numpy().astype(int), p

        stats = {
            "accuracy": lambda y, p: accuracy(y, p.argmax(1)),
            "balanced_accuracy": lambda y, p: float(balanced_accuracy_score(y, p.argmax(1))),
            "auroc_macro": macro_auroc,
            "ece": lambda y, p: multiclass_ece(y, p, bins),
        }
        return (stats[metric], pick) if metric in stats else None
    if kind == "multilabel":
        labels = [str(c) for c in b.metrics if str(c).startswith("prevalence.")]
        names = [c[len("prevalence.") :] for c in labels]
        targets = [f"target.{n}_a" for n in names]
        if len(names) != len(probs) or any(t not in frame for t in targets):
            return None
        if metric.startswith("auroc.") and metric[len("auroc.") :] in names:
            k = names.index(metric[len("auroc.") :])

            def pick(side: str) -> tuple[np.ndarray, ...]:
                return frame[targets[k]].to_numpy().astype(int), frame[
                    f"{probs[k]}_{side}"
                ].to_numpy()

            return auroc, pick
        if metric == "auroc_macro":

            def pick(side: str) -> tuple[np.ndarray, ...]:
                y = frame[targets].to_numpy().astype(int)
                return y, frame[[f"{c}_{side}" for c in probs]].to_numpy()

            def macro(y: np.ndarray, p: np.ndarray) -> float:
                return float(np.nanmean([auroc(y[:, k], p[:, k]) for k in range(y.shape[1])]))

            return macro, pick
    return None


def _paired(
    name: str, metric: str, a: CheckReport, b: CheckReport, base: Samples, new: Samples, seed: int
) -> tuple[float, bool, float | None, str] | None:
    """Paired bootstrap (by patient) of ``new - base`` for ``metric`` on the shared ids:
    (delta, significant, p, source), or None when the saved per-sample values cannot
    reproduce both stored values."""
    from mmaudit.methods.stats import paired_bootstrap_diff

    plan = _pairing_plan(name, metric, a, b, base, new)
    if plan is None:
        return None
    stat, arrays_a, arrays_b, ids, source = plan
    for arrays, report in ((arrays_a, a), (arrays_b, b)):
        stored = _value(report.metrics[metric])[0]
        try:
            again = float(stat(*arrays))
        except ValueError:
            return None
        if stored is None or not math.isclose(again, stored, rel_tol=1e-6, abs_tol=1e-9):
            return None  # a subset, other params or another definition: do not pretend
    groups = _patient_groups(ids, base, new)
    est = paired_bootstrap_diff(stat, arrays_a, arrays_b, groups=groups, n_boot=1000, seed=seed)
    if est.ci_low is None or est.ci_high is None:
        return None
    significant = est.ci_low > 0 or est.ci_high < 0
    return est.value, significant, est.null_p, source


def _pairing_plan(
    name: str, metric: str, a: CheckReport, b: CheckReport, base: Samples, new: Samples
) -> tuple[Callable[..., float], tuple[np.ndarray, ...], tuple[np.ndarray, ...], Any, str] | None:
    """How to pair ``metric``: statistic, its inputs on each side, shared ids, source."""
    if name == "performance" and base.predictions is not None and new.predictions is not None:
        merged = base.predictions.merge(new.predictions, on="id", suffixes=("_a", "_b"))
        if len(merged) >= 10:
            kind = str(base.report.data.get("target_kind", "binary"))
            found = _performance_stat(metric, b, kind, merged)
            if found is not None:
                stat, pick = found
                return stat, pick("a"), pick("b"), merged["id"], "paired_bootstrap"
    templates = {**PER_SAMPLE_MEANS.get(name, {}), **_declared(name, "per_sample_means")}
    for pattern, template in templates.items():
        match = re.fullmatch(pattern, metric)
        if match is None:
            continue
        column = match.expand(template)
        ta, tb = base.table(name), new.table(name)
        if ta is None or tb is None or column not in ta or column not in tb:
            return None
        merged = ta[["id", column]].merge(tb[["id", column]], on="id", suffixes=("_a", "_b"))
        if len(merged) < 10:
            return None
        return (
            _nanmean,
            (merged[f"{column}_a"].to_numpy(dtype=float),),
            (merged[f"{column}_b"].to_numpy(dtype=float),),
            merged["id"],
            "paired_bootstrap(per_sample)",
        )
    return None


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def diff_reports(
    base_dir: str | Path,
    new_dir: str | Path,
    tolerances: dict[str, float] | None = None,
    force: bool = False,
    seed: int = 0,
    ignore_checks: Collection[str] = (),
) -> DiffResult:
    """Compare two report folders; ReportError when they cannot be compared (unless forced),
    when a file in them is corrupt, or when ``ignore_checks`` names a check neither ran.

    ``ignore_checks`` are left out of the comparison altogether (status, findings, metrics,
    params): the way to say a check was deliberately not run in the new audit."""
    base_dir, new_dir = Path(base_dir), Path(new_dir)
    base, new = load_report(base_dir), load_report(new_dir)
    ignored = sorted(set(ignore_checks))
    if ignored:
        _check_ignored(ignored, base, new)
        base = base.model_copy(
            update={"checks": {k: v for k, v in base.checks.items() if k not in ignored}}
        )
        new = new.model_copy(
            update={"checks": {k: v for k, v in new.checks.items() if k not in ignored}}
        )
    tolerances = tolerances or parse_tolerances(None)
    reasons = comparability(base, new)
    if reasons and not force:
        raise ReportError(
            f"not comparable: {base_dir} and {new_dir}: " + "; ".join(reasons),
            hint="audit both checkpoints on the same data and config, or pass --force",
        )
    result = DiffResult(
        base=str(base_dir),
        new=str(new_dir),
        comparable=not reasons,
        not_comparable_reasons=reasons,
        ignored_checks=ignored,
    )
    if ignored:
        result.notes.append("left out of the comparison (--ignore-check): " + ", ".join(ignored))
    for side, folder, report in (("base", base_dir, base), ("new", new_dir, new)):
        if report.integrity is None:
            result.notes.append(
                f"the {side} report ({folder}) records no digests (written by an earlier"
                " mmaudit): its files could not be checked for edits"
            )
    if reasons:
        result.notes.append("compared with --force although " + "; ".join(reasons))
    changed_rules = threshold_differences(base, new)
    if changed_rules:
        result.notes.append(
            "threshold rules differ (the same numbers may get another verdict): "
            + ", ".join(changed_rules)
        )
    base_s, new_s = load_samples(base_dir, base), load_samples(new_dir, new)
    for name in sorted(set(base.checks) | set(new.checks)):
        a, b = base.checks.get(name), new.checks.get(name)
        if a is None:
            result.notes.append(f"check '{name}' is only in the new report")
            continue
        if b is None:
            _missing_check(name, a, result, new.checks_not_run.get(name))
            continue
        _diff_status(name, a, b, result)
        _diff_findings(name, a, b, result)
        for metric in a.metrics:
            if metric in b.metrics:
                result.metrics.append(
                    _diff_metric(name, metric, a, b, tolerances, base_s, new_s, seed)
                )
    for d in result.metrics:
        if d.regression:
            result.regressions.append(
                f"{d.check}.{d.metric}: {d.base:.4g} -> {d.new:.4g}"
                f" ({d.method}, {d.direction} is better)"
            )
    _representation(base_s, new_s, result)
    _arrays(base, new, base_dir, new_dir, result)
    for side, samples in (("base", base_s), ("new", new_s)):
        if samples.missing:
            result.notes.append(
                f"per-sample files named in the {side} report are missing (not paired on):"
                f" {', '.join(sorted(set(samples.missing)))}"
            )
    return result


def _diff_status(name: str, a: CheckReport, b: CheckReport, result: DiffResult) -> None:
    """Record a change of check status, and a regression when it is worse: a higher
    ``STATUS_RANK``, or a check that judged something in the base audit (pass, warn, fail)
    and was skipped in the new one. Skipped means it tested nothing, so even pass ->
    skipped loses what the base audit covered, as a missing check does; warn / fail ->
    skipped also leaves the base findings unchecked."""
    if a.status == b.status:
        return
    ra, rb = STATUS_RANK.get(a.status), STATUS_RANK.get(b.status)
    known = ra is not None and rb is not None
    worse, better = known and rb > ra, known and rb < ra  # type: ignore[operator]
    change = {"check": name, "base": a.status, "new": b.status, "worse": worse, "better": better}
    result.status_changes.append(change)
    if worse:
        result.regressions.append(f"{name}: status {a.status} -> {b.status}{_why(b)}")
    elif b.status == "skipped" and a.status in ("pass", "warn", "fail"):
        # neither better nor the same: the new audit tested nothing the base one did
        change.update(worse=True, better=False)
        lost = (
            "it tested nothing this time, so what the base audit covered went unchecked"
            if a.status == "pass"
            else "its base findings were not re-checked"
        )
        result.regressions.append(
            f"{name}: status {a.status} -> skipped{_why(b)}; {lost}: give it what it needs,"
            f" or pass --ignore-check {name}"
        )


def _check_ignored(ignored: list[str], base: Report, new: Report) -> None:
    """ReportError for an ignored name that neither report ran (a typo would otherwise
    ignore nothing), with the closest check names."""
    import difflib

    known = sorted(set(base.checks) | set(new.checks))
    unknown = [n for n in ignored if n not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = (
            f"did you mean '{close[0]}'?" if close else "checks in the reports: " + ", ".join(known)
        )
        raise ReportError(f"--ignore-check {unknown[0]!r}: neither report ran it", hint=hint)


def _missing_check(name: str, a: CheckReport, result: DiffResult, why: str | None) -> None:
    """A check the base report ran and the new one lacks: a regression (its base findings
    went unchecked), unless it was skipped in the base too (nothing is lost). ``why``: the
    new report's reason for not running it, when it recorded one."""
    if a.status == "skipped":
        result.notes.append(f"check '{name}' is only in the base report (skipped there)")
        return
    result.missing_checks.append(name)
    result.regressions.append(
        f"{name}: in the base report ({a.status}) but not in the new one"
        f"{f' ({why})' if why else ''}; run it in the new"
        f" audit, or pass --ignore-check {name} if it was left out on purpose"
    )


def _why(b: CheckReport) -> str:
    """`` (reason)`` for a check that errored or was skipped in the new audit: the first
    line of its reason, shortened."""
    if b.status not in NO_EVIDENCE or not b.reason:
        return ""
    first = b.reason.strip().splitlines()[0] if b.reason.strip() else ""
    first = first if len(first) <= 160 else first[:157] + "..."
    return f" ({'crashed' if b.status == 'error' else 'skipped'}: {first})" if first else ""


def _diff_findings(name: str, a: CheckReport, b: CheckReport, result: DiffResult) -> None:
    def key(f: Any) -> tuple[str, str | None]:
        return (f.rule, f.metric)

    def change(f: Any, was: str | None = None) -> FindingChange:
        return FindingChange(
            check=name,
            rule=f.rule,
            metric=f.metric,
            severity=f.severity,
            message=f.message,
            was=was,
        )

    serious = ("warn", "fail", "error")
    old = {key(f): f for f in a.findings if f.severity in serious}
    now = {key(f): f for f in b.findings if f.severity in serious}
    for k, f in now.items():
        before = old.get(k)
        rank_now, rank_before = (
            STATUS_RANK.get(f.severity, 0),
            STATUS_RANK.get(before.severity if before else "pass", 0),
        )
        if before is None or rank_now > rank_before:
            result.new_findings.append(change(f, before.severity if before else None))
            result.regressions.append(f"{name}: new {f.severity} finding: {f.message}")
        elif rank_now < rank_before:
            result.improved_findings.append(change(f, before.severity))
    gone = [f for k, f in old.items() if k not in now]
    if gone and b.status in NO_EVIDENCE:
        result.notes.append(
            f"{name}: {len(gone)} warn / fail finding(s) of the base report not re-checked"
            f" (the check {'errored' if b.status == 'error' else 'was skipped'} in the new audit)"
        )
        return
    result.resolved_findings += [change(f) for f in gone]


def _diff_metric(
    name: str,
    metric: str,
    a: CheckReport,
    b: CheckReport,
    tolerances: dict[str, float],
    base: Samples | None = None,
    new: Samples | None = None,
    seed: int = 0,
) -> MetricDelta:
    va, la, ha = _value(a.metrics[metric], f"base report: {name}.{metric}")
    vb, lb, hb = _value(b.metrics[metric], f"new report: {name}.{metric}")
    direction = metric_direction(metric, b)
    tol = tolerance_for(f"{name}.{metric}", tolerances)
    d = MetricDelta(
        check=name, metric=metric, base=va, new=vb, delta=None, direction=direction, tolerance=tol
    )
    if va is None or vb is None or not (math.isfinite(va) and math.isfinite(vb)):
        return d
    d.delta = vb - va
    paired = None
    if base is not None and new is not None and d.delta != 0:
        paired = _paired(name, metric, a, b, base, new, seed)
    if paired is not None:
        d.method, d.significant, d.p = paired[3], paired[1], paired[2]
    elif None not in (la, ha, lb, hb):
        d.method = "ci_overlap"
        d.significant = bool(hb < la or lb > ha)  # type: ignore[operator]
    else:
        d.method = "tolerance"
        d.significant = abs(d.delta) > tol
    if direction != "neutral" and d.significant and abs(d.delta) > tol:
        bad = d.delta < 0 if direction == "higher" else d.delta > 0
        d.regression, d.improvement = bad, not bad
        # Non-paired tests compare two bootstrap CIs of the same data, which say nothing of
        # how much a retrained model moves anyway (two training seeds of one recipe move
        # saliency and attribution statistics beyond their CIs). A worse move that stays
        # inside the rule's limits (value and p) is reported, not counted as a regression;
        # crossing them raises a finding, which is.
        if bad and paired is None and not _flagged(name, metric, b):
            d.regression, d.worse_within_limits = False, True
    return d


def _representation(base: Samples, new: Samples, result: DiffResult) -> None:
    from mmaudit.methods.cka import linear_cka

    unsaved = [
        side
        for side, s in (("base", base), ("new", new))
        if not (s.report.data.get("saved") or {}).get("predictions", True)
    ]
    if unsaved:
        result.notes.append(
            f"predictions not saved in the {' and '.join(unsaved)} report"
            " (report.save_predictions: false): no prediction churn, and performance moves"
            " are judged by CI overlap, not paired by sample"
        )
    if base.predictions is not None and new.predictions is not None:
        merged = base.predictions.merge(new.predictions, on="id", suffixes=("_a", "_b"))
        result.shared_samples = len(merged)
        probs = [c[:-2] for c in merged.columns if c.startswith("prob.") and c.endswith("_a")]
        if probs and len(merged):
            kind = str(base.report.data.get("target_kind", "binary"))
            pa = merged[[f"{c}_a" for c in probs]].to_numpy()
            pb = merged[[f"{c}_b" for c in probs]].to_numpy()
            if kind == "multilabel" or len(probs) == 1:
                # one decision per output at 0.5; churn = share of (sample, output) changed
                result.prediction_churn = float(np.mean((pa >= 0.5) != (pb >= 0.5)))
            else:
                result.prediction_churn = float(np.mean(pa.argmax(1) != pb.argmax(1)))
        if not len(merged):
            result.notes.append(_no_shared_ids_note(base, new, "no predictions to pair"))
    if "__ids__" not in base.embeddings or "__ids__" not in new.embeddings:
        if not base.embeddings or not new.embeddings:
            result.notes.append("no embeddings saved in one of the reports: no CKA")
        return
    ids_a = {str(i): k for k, i in enumerate(base.embeddings["__ids__"])}
    pairs = [(ids_a[str(i)], k) for k, i in enumerate(new.embeddings["__ids__"]) if str(i) in ids_a]
    if len(pairs) < 4:
        result.notes.append(_no_shared_ids_note(base, new, "fewer than 4 shared samples: no CKA"))
        return
    ia, ib = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    for layer in sorted(set(base.embeddings) & set(new.embeddings) - {"__ids__"}):
        xa = base.embeddings[layer][ia].astype(np.float64)
        xb = new.embeddings[layer][ib].astype(np.float64)
        result.representation[layer] = {
            "cka": _finite(linear_cka(xa, xb)),
            "cka_debiased": _finite(linear_cka(xa, xb, debiased=True)),
            "n": float(len(pairs)),
        }


def _no_shared_ids_note(base: Samples, new: Samples, what: str) -> str:
    """Why two reports share no ids, when redaction explains it."""
    hashes = {base.report.data.get("id_hash"), new.report.data.get("id_hash")}
    redacted = [bool(s.report.data.get("redacted")) for s in (base, new)]
    if any(redacted) and not all(redacted):
        return f"{what}: one report is redacted (hashed ids), the other is not"
    if all(redacted) and "random salt" in hashes:
        return (
            f"{what}: redacted reports hash ids with a random salt per report; set the same"
            " MMAUDIT_REDACT_SALT for both audits to pair them"
        )
    return what


def _arrays(base: Report, new: Report, base_dir: Path, new_dir: Path, result: DiffResult) -> None:
    """Mean per-sample Spearman correlation of saved per-sample maps (e.g. saliency)."""
    from scipy.stats import spearmanr

    for name in sorted(set(base.checks) & set(new.checks)):
        pa, pb = base.checks[name].tables.get("arrays"), new.checks[name].tables.get("arrays")
        if not pa or not pb:
            continue
        gone = [str(d / p) for d, p in ((base_dir, pa), (new_dir, pb)) if not (d / p).is_file()]
        if gone:
            result.notes.append(f"{name}: per-sample maps missing, no rank correlation: {gone}")
            continue
        da, db = _read_npz(base_dir / pa), _read_npz(new_dir / pb)
        if "__ids__" not in da or "__ids__" not in db:
            continue
        ids_a = {str(i): k for k, i in enumerate(da["__ids__"])}
        pairs = [(ids_a[str(i)], k) for k, i in enumerate(db["__ids__"]) if str(i) in ids_a]
        for key in sorted(set(da) & set(db) - {"__ids__"}):
            xa, xb = da[key], db[key]
            if xa.ndim < 2 or xa.shape[1:] != xb.shape[1:] or not pairs:
                continue
            rhos = []
            for i, j in pairs:
                a, b = xa[i].ravel().astype(float), xb[j].ravel().astype(float)
                if np.ptp(a) > 0 and np.ptp(b) > 0:
                    rhos.append(spearmanr(a, b).statistic)
            result.array_rank_correlation[f"{name}.{key}"] = (
                _finite(float(np.mean(rhos))) if rhos else None
            )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def moved_metrics(d: DiffResult) -> list[MetricDelta]:
    """Significant moves, regressions first, then improvements, then by size of the move."""
    moved = [m for m in d.metrics if m.significant and m.delta is not None]
    order = {"regression": 0, "improved": 1, "worse (within limits)": 2, "moved": 3}
    return sorted(moved, key=lambda m: (order.get(m.verdict, 4), -abs(m.delta or 0)))


def diff_markdown(d: DiffResult, limit: int = 25) -> str:
    """diff.md: fit for a pull-request comment (every string from a report escaped)."""
    verdict = "❌ regressed" if d.regressions else "✅ no regressions"
    esc = markdown_cell
    lines = [f"## mmaudit diff: {verdict}", "", f"`{esc(d.base)}` → `{esc(d.new)}`", ""]
    if d.not_comparable_reasons:
        lines += [f"> ⚠️ not comparable: {esc('; '.join(d.not_comparable_reasons))}", ""]
    if d.regressions:
        lines += ["**Regressions**", ""] + [f"- {esc(r)}" for r in d.regressions] + [""]
    for title, items in (
        ("Resolved findings", d.resolved_findings),
        ("Findings now less severe", d.improved_findings),
    ):
        if items:
            lines += [f"**{title}**", ""]
            for f in items:
                was = f" (was {f.was})" if f.was else ""
                lines.append(f"- {f.severity}{was} `{esc(f.check)}`: {esc(f.message)}")
            lines.append("")
    if d.status_changes:
        lines += ["| check | base | new |", "|---|---|---|"]
        lines += [f"| {esc(s['check'])} | {s['base']} | {s['new']} |" for s in d.status_changes] + [
            ""
        ]
    moved = moved_metrics(d)
    if moved:
        lines += ["| metric | base | new | Δ | verdict | test |", "|---|---|---|---|---|---|"]
        for m in moved[:limit]:
            lines.append(
                f"| {esc(m.check)}.{esc(m.metric)} | {m.base:.4g} | {m.new:.4g}"
                f" | {m.delta:+.4g} | {m.verdict} | {m.method} |"
            )
        if len(moved) > limit:
            lines.append(f"\n_{len(moved) - limit} more significant moves in diff.json_")
        lines.append("")
    lines += representation_lines(d)
    if d.notes:
        lines += [""] + [f"_{esc(n)}_" for n in d.notes]
    return "\n".join(lines) + "\n"


def representation_lines(d: DiffResult) -> list[str]:
    """CKA per layer, prediction churn and saliency-map rank correlation, as plain lines."""
    lines = []
    if d.representation:
        cka = ", ".join(
            f"{k} {_num(v['cka'])} (debiased {_num(v['cka_debiased'])})"
            for k, v in d.representation.items()
        )
        lines.append(f"Linear CKA per layer: {cka}")
    if d.prediction_churn is not None:
        lines.append(
            f"Prediction churn: {100 * d.prediction_churn:.1f}%"
            f" of {d.shared_samples} shared samples"
        )
    if d.array_rank_correlation:
        rho = ", ".join(f"{k} {_num(v)}" for k, v in d.array_rank_correlation.items())
        lines.append(f"Per-sample map rank correlation (Spearman, mean): {rho}")
    return lines


def write_diff(d: DiffResult, out: Path) -> Path:
    """diff.json + diff.md into ``out`` (refusing a folder that holds something else)."""
    out = Path(out)
    if out.exists() and (
        not out.is_dir() or any(p.name not in ("diff.json", "diff.md") for p in out.iterdir())
    ):
        raise ReportError(
            f"{out} exists and is not a diff folder; refusing to overwrite it",
            hint="choose another -o",
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "diff.json").write_text(d.to_json(), encoding="utf-8")
    (out / "diff.md").write_text(diff_markdown(d), encoding="utf-8")
    return out
