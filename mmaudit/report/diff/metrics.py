"""One metric of a check as ``diff`` reads it: its stored value, which direction is
better, whether a value crosses the check's rules, and the tolerance a move must exceed.
"""

from __future__ import annotations

import fnmatch
import functools
import math
from typing import Any

from mmaudit.engine.errors import ReportError
from mmaudit.report.diff.result import Direction
from mmaudit.report.document import CheckReport

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


def declared_table(check: str, attribute: str) -> dict[str, Any]:
    """A check class's own table (``metric_directions`` / ``per_sample_means``), if any."""
    return dict(_declared_tables(check, attribute))


@functools.cache
def _declared_tables(check: str, attribute: str) -> tuple[tuple[str, Any], ...]:
    """``declared_table`` looked up once per check and attribute: finding the check classes
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
    tables = (
        declared_table(check.name, "metric_directions"),
        METRIC_DIRECTIONS.get(check.name, {}),
    )
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


def crosses_rule(name: str, metric: str, check: CheckReport) -> bool:
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


def stored_value(m: Any, where: str = "metric") -> tuple[float | None, float | None, float | None]:
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
