"""``diff_reports``: two report folders compared check by check (status, findings,
metrics), the verdict on each move, and the regressions they add up to.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

from mmaudit.engine.errors import ReportError
from mmaudit.report.diff.comparability import comparability, threshold_differences
from mmaudit.report.diff.metrics import (
    crosses_rule,
    metric_direction,
    parse_tolerances,
    stored_value,
    tolerance_for,
)
from mmaudit.report.diff.pairing import paired_move
from mmaudit.report.diff.representation import compare_representations, compare_saved_maps
from mmaudit.report.diff.result import DiffResult, FindingChange, MetricDelta
from mmaudit.report.diff.samples import Samples, load_samples
from mmaudit.report.document import CheckReport, Report, load_report

# skipped ranks with pass: it holds no evidence either way, but skipped -> fail is worse
# (and pass / warn / fail -> skipped is a regression of its own: see ``_diff_status``).
# error ranks above fail: a check that crashed shows nothing, so fail -> error is not
# "no worse" (the failure it had found may still be there, and the check is now broken).
STATUS_RANK = {"pass": 0, "skipped": 0, "warn": 1, "fail": 2, "error": 3}
# new-report statuses whose (missing) findings say nothing about the base report's ones
NO_EVIDENCE = ("error", "skipped")


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
    compare_representations(base_s, new_s, result)
    compare_saved_maps(base, new, base_dir, new_dir, result)
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
    va, la, ha = stored_value(a.metrics[metric], f"base report: {name}.{metric}")
    vb, lb, hb = stored_value(b.metrics[metric], f"new report: {name}.{metric}")
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
        paired = paired_move(name, metric, a, b, base, new, seed)
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
        if bad and paired is None and not crosses_rule(name, metric, b):
            d.regression, d.worse_within_limits = False, True
    return d
