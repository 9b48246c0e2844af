"""The cells every view of a report shares: numbers and p-values as shown, the metric
rows, the key metrics of a check, what its verdict rests on, and the line that says a run
was narrowed.

One module, so that the HTML page, summary.md, the JUnit file and the CLI's table show a
check in the same words.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from mmaudit.checks.contract import Finding
from mmaudit.checks.findings import SEVERITY_ORDER
from mmaudit.report.document import CheckReport, Report

STATUS_ICON = {"pass": "✅", "warn": "⚠️", "fail": "❌", "error": "💥", "skipped": "⏭️"}
# check statuses whose reason says what happened (the others are judged by findings)
NO_RESULT = ("error", "skipped")
# p-values below this are shown as "< 0.001": a permutation test with B shuffles resolves
# p only down to 1 / (B + 1), and smaller values (normal-tail extrapolations) stay in
# report.json
P_FLOOR = 0.001
# how a check that did not run is shown (its reason: report.checks_not_run)
NOT_RUN = "not run"


def fmt(value: Any) -> str:
    """A short human form of a number; a missing one (None, NaN) is a dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


def fmt_p(value: Any) -> str:
    """A p-value as shown to readers: three decimals, ``< 0.001`` below that.

    Why: a permutation p is resolved only to 1 / (B + 1); checks extrapolate smaller ones
    (a normal tail) so that Holm over many tests can reach alpha, and those digits are not
    evidence (report.json keeps them)."""
    if isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value < P_FLOOR:
        return f"< {P_FLOOR:g}"
    return fmt(value)


def is_p_column(name: str) -> bool:
    """Whether a table column or metric field holds p-values (``p``, ``p_adj``,
    ``loo_drop_p_adj``, ``null_p``, ``excess_p_holm`` ...)."""
    return "p" in re.split(r"[_.\s]", name.lower())


def metric_rows(metrics: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for name, m in metrics.items():
        if isinstance(m, dict):
            lo, hi = m.get("ci_low"), m.get("ci_high")
            ci = f"[{fmt(lo)}, {fmt(hi)}]" if lo is not None else ""
            rows.append(
                {
                    "name": name,
                    "value": fmt(m.get("value")),
                    "ci": ci,
                    "n": fmt(m.get("n")) if m.get("n") else "",
                    "p": fmt_p(m.get("null_p")) if m.get("null_p") is not None else "",
                }
            )
        else:
            rows.append({"name": name, "value": fmt(m), "ci": "", "n": "", "p": ""})
    return rows


def key_metrics(metrics: dict[str, Any], findings: Sequence[Finding] = (), limit: int = 3) -> str:
    """A few metrics as one line: first those the check's warn / fail / error findings
    judged (worst first), so the metric behind the verdict is in view, then the first
    metrics with CIs."""
    judged = sorted(
        (f for f in findings if f.severity in ("warn", "fail", "error") and f.metric),
        key=lambda f: -SEVERITY_ORDER.get(f.severity, 0),
    )
    rows = {row["name"]: row for row in metric_rows(metrics)}
    names = [f.metric for f in judged if f.metric in rows]
    names += [name for name, row in rows.items() if row["ci"]]
    parts = []
    for name in dict.fromkeys(names):
        row = rows[name]
        parts.append(" ".join(x for x in (name, row["value"], row["ci"]) if x))
        if len(parts) == limit:
            break
    return "; ".join(parts)


def judged_cell(check: CheckReport) -> str:
    """What a check's verdict rests on, in a few words: "12 tests on 40/48 rows", "none";
    '' when the check did not say (or crashed)."""
    if check.judged is None:
        return ""
    if check.judged == 0:
        return "none"
    text = f"{check.judged} test{'s' if check.judged != 1 else ''}"
    if check.rows_used is not None and check.rows_total is not None:
        text += f" on {check.rows_used}/{check.rows_total} rows"
    return text


def summary_cell(check: CheckReport) -> str:
    """The summary tables' last cell: the reason of a check that has no result (skipped,
    crashed), else its key metrics (the reason when it has none)."""
    key = key_metrics(check.metrics, check.findings)
    if check.status in NO_RESULT:
        return check.reason or key
    return key or check.reason or ""


def narrowed_line(report: Report) -> str:
    """One sentence saying that registered checks did not run ('' when all ran)."""
    if not report.checks_not_run:
        return ""
    total = len(report.checks) + len(report.checks_not_run)
    how = f" (--checks {','.join(report.checks_requested)})" if report.checks_requested else ""
    return (
        f"Partial audit: {len(report.checks)} of {total} checks ran{how};"
        f" not run: {', '.join(sorted(report.checks_not_run))}. Their absence from this"
        " report is not a pass."
    )
