"""Thresholds -> pass / warn / fail findings.

Checks compute; this module judges. A rule names a metric (``*`` patterns allowed),
which statistic of it to compare (the value or a CI bound) and warn / fail limits
above or below; ``max_p`` additionally requires the metric's (corrected) null
p-value to be small, and ``ci_low_above`` its CI lower bound to clear a floor (0: the
CI excludes zero), before anything but ``pass`` is raised.
"""

from __future__ import annotations

import fnmatch
import math

from mmaudit.checks.contract import Finding, MetricValue, ThresholdRule
from mmaudit.methods.stats import Estimate

SEVERITY_ORDER = {"pass": 0, "note": 0, "skipped": 0, "warn": 1, "error": 2, "fail": 3}


def _number(metric: MetricValue, statistic: str) -> float | None:
    if isinstance(metric, Estimate):
        v = getattr(metric, statistic)
    elif isinstance(metric, (int, float)) and not isinstance(metric, bool):
        v = metric if statistic == "value" else None
    else:
        v = None
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def judgeable(metric: MetricValue, rule: ThresholdRule) -> float | None:
    """The number ``rule`` compares for ``metric``, or None when the rule cannot judge it:
    the statistic is missing, or a gate needs a p-value / CI bound the metric lacks. A
    metric that a gate lets pass (p above ``max_p``) was judged; one without the p-value
    was not."""
    value = _number(metric, rule.statistic)
    if value is None:
        return None
    if rule.max_p is not None and (not isinstance(metric, Estimate) or metric.null_p is None):
        return None
    if rule.ci_low_above is not None and _number(metric, "ci_low") is None:
        return None
    return value


def count_judged(metrics: dict[str, MetricValue], rules: dict[str, ThresholdRule]) -> int:
    """How many metrics at least one of ``rules`` can judge (``judgeable``): the tests a
    check's verdict rests on, when its rules are the judgement (``CheckOutput.judged``)."""
    names = {
        name
        for rule in rules.values()
        for name in metrics
        if fnmatch.fnmatchcase(name, rule.metric) and judgeable(metrics[name], rule) is not None
    }
    return len(names)


def judge(
    check: str, metrics: dict[str, MetricValue], rules: dict[str, ThresholdRule]
) -> list[Finding]:
    """One finding per (rule, matching metric) whose limits are crossed; none when all pass."""
    findings: list[Finding] = []
    for rule_name, rule in rules.items():
        names = [n for n in metrics if fnmatch.fnmatchcase(n, rule.metric)]
        for name in names:
            value = judgeable(metrics[name], rule)
            if value is None:
                continue
            p = metrics[name].null_p if isinstance(metrics[name], Estimate) else None
            if rule.max_p is not None and p is not None and p > rule.max_p:
                continue
            if rule.ci_low_above is not None:
                low = _number(metrics[name], "ci_low")
                if low is not None and low <= rule.ci_low_above:
                    continue
            severity, limit, word = "pass", None, ""
            for sev, lim, above in (
                ("fail", rule.fail_above, True),
                ("fail", rule.fail_below, False),
                ("warn", rule.warn_above, True),
                ("warn", rule.warn_below, False),
            ):
                if lim is None:
                    continue
                if (above and value > lim) or (not above and value < lim):
                    severity, limit, word = sev, lim, "above" if above else "below"
                    break
            if severity == "pass":
                continue
            stat = "" if rule.statistic == "value" else f" ({rule.statistic})"
            text = (
                rule.message
                or f"{name}{stat} = {value:.3g} is {word} the {severity} limit {limit:g}"
            )
            if rule.message:
                text = f"{rule.message} ({name}{stat} = {value:.3g}, limit {limit:g})"
            findings.append(
                Finding(
                    check=check,
                    rule=rule_name,
                    severity=severity,  # type: ignore[arg-type]
                    message=text,
                    metric=name,
                    value=value,
                    threshold=limit,
                )
            )
    return findings


def status_of(findings: list[Finding]) -> str:
    """The worst severity among findings ('pass' when there are none)."""
    worst = "pass"
    for f in findings:
        if SEVERITY_ORDER.get(f.severity, 0) > SEVERITY_ORDER[worst]:
            worst = f.severity
    return worst
