"""Thresholds -> pass / warn / fail findings, written for the person who acts on them.

Checks compute; this module judges. A rule names a metric (``*`` patterns allowed),
which statistic of it to compare (the value or a CI bound) and warn / fail limits
above or below; ``max_p`` additionally requires the metric's (corrected) null
p-value to be small, and ``ci_low_above`` its CI lower bound to clear a floor (0: the
CI excludes zero), before anything but ``pass`` is raised.

A finding says what was found in plain words (the rule's ``found`` template, its ``{0}``,
``{1}`` ... filled with what the ``*`` of the rule's metric pattern matched), the evidence
(the metric with its CI and p-value, and the limit it crossed) and the next step; the
rule's technical definition stays as the finding's ``detail``. Rules a check exempts for
this model (``CheckOutput.exempt_rules``) are not judged: :func:`exemption_notes` says why.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Collection, Mapping

from mmaudit.checks.contract import Finding, MetricValue, ThresholdRule
from mmaudit.methods.stats import Estimate

SEVERITY_ORDER = {"pass": 0, "note": 0, "skipped": 0, "warn": 1, "error": 2, "fail": 3}

# metric-name words written as readers know them (the rest: underscores become spaces)
_WORDS = {
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "ece": "ECE",
    "eod": "equalised-odds difference",
    "ig": "IG",
    "roi": "ROI",
    "offroi": "off-ROI",
    "emap": "EMAP",
    "r2": "R²",
    "loo": "leave-one-out",
    "koi": "keep-one-in",
}
# what a rule's ``statistic`` compares, in words
_STATISTIC = {"ci_low": "the CI's lower end", "ci_high": "the CI's upper end"}


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


def count_judged(
    metrics: dict[str, MetricValue],
    rules: dict[str, ThresholdRule],
    exempt: Collection[str] = (),
) -> int:
    """How many metrics at least one of ``rules`` can judge (``judgeable``): the tests a
    check's verdict rests on, when its rules are the judgement (``CheckOutput.judged``).
    Rules named in ``exempt`` (``CheckOutput.exempt_rules``) judge nothing."""
    names = {
        name
        for rule_name, rule in rules.items()
        if rule_name not in exempt
        for name in metrics
        if fnmatch.fnmatchcase(name, rule.metric) and judgeable(metrics[name], rule) is not None
    }
    return len(names)


def matched_parts(pattern: str, name: str) -> tuple[str, ...]:
    """What each ``*`` of the fnmatch ``pattern`` matched in the metric ``name``, in order
    (``probe_auroc.*.*`` on ``probe_auroc.site.image.layer4``: ``site``,
    ``image.layer4``: every ``*`` but the last takes as little as it can, so a layer name
    with dots stays whole). Empty when the name does not match or the pattern has a
    character class (``[...]``), whose parts are not worth the guesswork."""
    if "[" in pattern:
        return ()
    regex = "".join("(.*?)" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    match = re.fullmatch(regex, name, flags=re.DOTALL)
    return match.groups() if match else ()


class _MetricWords(dict):
    """The check's metrics as template words (``{m[offroi_hotspot.where]}``): a string
    metric as it is, a number or estimate's value to 3 significant digits, and "(not
    measured)" for a name the check did not write, so a sentence never shows a brace."""

    def __init__(self, metrics: Mapping[str, MetricValue] | None) -> None:
        super().__init__()
        self.metrics = metrics or {}

    def __missing__(self, key: str) -> str:
        v = self.metrics.get(key)
        if isinstance(v, str):
            return v
        n = _number(v, "value") if v is not None else None
        if n is None:
            return "(not measured)"
        low, high = _number(v, "ci_low"), _number(v, "ci_high")
        if low is None or high is None:
            return f"{n:.3g}"
        return f"{n:.3g} (CI {low:.3g} to {high:.3g})"


def fill(
    template: str, pattern: str, name: str, metrics: Mapping[str, MetricValue] | None = None
) -> str:
    """``template`` with ``{0}``, ``{1}`` ... set to the parts of ``name`` the ``*`` of
    ``pattern`` matched, ``{metric}`` to ``name`` and ``{m[KEY]}`` to the check's metric
    KEY in words (a box's place, say); the template as written when it asks for a part the
    pattern does not have (a user's YAML rule), rather than no text."""
    parts = matched_parts(pattern, name)
    # a metric key may name the parts this finding's metric matched: {m[erasure.dp.$0]}
    for k, part in enumerate(parts):
        template = template.replace(f"${k}", part)
    try:
        return template.format(*parts, metric=name, m=_MetricWords(metrics))
    except (IndexError, KeyError, ValueError, AttributeError):
        return template


def metric_label(pattern: str, name: str) -> str:
    """The metric in words: the fixed parts of the rule's pattern as the statistic
    (``probe_auroc``: "probe AUROC"), the parts its ``*`` matched as the subject, e.g.
    "probe AUROC (site, image)"; the name itself when it does not match."""
    parts = matched_parts(pattern, name)
    if not parts and "*" in pattern:
        return name
    fixed = re.sub(r"[*?]", " ", pattern)
    words = [_WORDS.get(w.lower(), w) for w in re.split(r"[._\s]+", fixed) if w]
    label = " ".join(words) or name
    subject = ", ".join(p.replace(".", ", ") for p in parts if p)
    return f"{label} ({subject})" if subject else label


def _num(v: float) -> str:
    """A value as a reader compares it: two decimals in the usual range, two significant
    digits for very small or very large ones."""
    if v == 0:
        return "0"
    if 0.01 <= abs(v) < 1000:
        return f"{v:.2f}"
    return f"{v:.2g}"


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def describe_value(name: str, metric: MetricValue, rule: ThresholdRule) -> str:
    """The metric as evidence: "probe AUROC (site, image) = 1.00 (CI 0.98 to 1.00),
    p < 0.001 corrected for multiple tests" (the CI and p when the metric has them; the
    built-in rules that gate on p judge corrected p-values)."""
    label = metric_label(rule.metric, name)
    value = _number(metric, "value")
    text = f"{label} = {_num(value)}" if value is not None else f"{label} undefined"
    low, high = _number(metric, "ci_low"), _number(metric, "ci_high")
    if low is not None and high is not None:
        text += f" (CI {_num(low)} to {_num(high)})"
    p = metric.null_p if isinstance(metric, Estimate) else None
    if p is not None and not math.isnan(p):
        text += f", {_p_text(p)}"
        if rule.max_p is not None:
            text += " corrected for multiple tests"
    return text


def _limit_text(
    rule: ThresholdRule, severity: str, word: str, limit: float, compared: float
) -> str:
    """Which statistic crossed which limit, and the gates that had to hold too."""
    if rule.statistic == "value":
        text = f"{severity} {word} {limit:g}"
    else:
        text = (
            f"{severity} when {_STATISTIC[rule.statistic]} ({_num(compared)}) is {word} {limit:g}"
        )
    gates = []
    if rule.max_p is not None:
        gates.append(f"p < {rule.max_p:g}")
    if rule.ci_low_above is not None:
        gates.append(f"the CI's lower end above {rule.ci_low_above:g}")
    return text + (f" with {' and '.join(gates)}" if gates else "")


def _found_text(
    rule: ThresholdRule,
    name: str,
    word: str,
    severity: str,
    metrics: Mapping[str, MetricValue] | None = None,
) -> str:
    """The plain sentence: the rule's ``found`` template filled in; for a rule without one
    (a user's YAML rule) its ``message`` naming the metric, or the bare comparison."""
    if rule.found:
        return fill(rule.found, rule.metric, name, metrics)
    label = metric_label(rule.metric, name)
    if rule.message:
        return f"{rule.message[:1].upper()}{rule.message[1:]} ({label})"
    return f"{label[:1].upper()}{label[1:]} is {word} its {severity} limit"


def judge(
    check: str,
    metrics: dict[str, MetricValue],
    rules: dict[str, ThresholdRule],
    exempt: Collection[str] = (),
) -> list[Finding]:
    """One finding per (rule, matching metric) whose limits are crossed; none when all
    pass. Rules named in ``exempt`` are not judged (:func:`exemption_notes` says why)."""
    findings: list[Finding] = []
    for rule_name, rule in rules.items():
        if rule_name in exempt:
            continue
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
            if severity == "pass" or limit is None:
                continue
            evidence = (
                f"{describe_value(name, metrics[name], rule)};"
                f" {_limit_text(rule, severity, word, limit, value)}"
            )
            findings.append(
                Finding(
                    check=check,
                    rule=rule_name,
                    severity=severity,  # type: ignore[arg-type]
                    message=_found_text(rule, name, word, severity, metrics),
                    evidence=evidence
                    + (
                        f"; {fill(rule.evidence, rule.metric, name, metrics)}"
                        if rule.evidence
                        else ""
                    ),
                    next_step=fill(rule.next_step, rule.metric, name, metrics),
                    detail=rule.message,
                    figure=fill(rule.figure, rule.metric, name, metrics) or None,
                    metric=name,
                    value=value,
                    threshold=limit,
                )
            )
    return findings


def exemption_notes(
    check: str,
    exempt: Mapping[str, str],
    metrics: dict[str, MetricValue],
    rules: dict[str, ThresholdRule],
    next_steps: Mapping[str, str] | None = None,
) -> list[Finding]:
    """One ``note`` per exempted rule: the check's plain reason as the message, the values
    the rule would have judged as evidence, the check's next step for it (``next_steps``)
    or else the rule's, its name kept, so a reader sees why no verdict was given rather
    than no trace of the rule."""
    notes = []
    for rule_name, reason in exempt.items():
        rule = rules.get(rule_name)
        names = [n for n in metrics if rule is not None and fnmatch.fnmatchcase(n, rule.metric)]
        evidence = "; ".join(describe_value(n, metrics[n], rule) for n in names if rule)
        value = _number(metrics[names[0]], "value") if len(names) == 1 else None
        notes.append(
            Finding(
                check=check,
                rule=rule_name,
                severity="note",
                message=reason,
                evidence=f"{evidence}; not judged" if evidence else "not judged",
                next_step=(next_steps or {}).get(rule_name)
                or (fill(rule.next_step, rule.metric, names[0], metrics) if rule and names else ""),
                detail=rule.message if rule else "",
                figure=(fill(rule.figure, rule.metric, names[0], metrics) or None)
                if rule and names
                else None,
                metric=names[0] if len(names) == 1 else None,
                value=value,
            )
        )
    return notes


def status_of(findings: list[Finding]) -> str:
    """The worst severity among findings ('pass' when there are none)."""
    worst = "pass"
    for f in findings:
        if SEVERITY_ORDER.get(f.severity, 0) > SEVERITY_ORDER[worst]:
            worst = f.severity
    return worst
