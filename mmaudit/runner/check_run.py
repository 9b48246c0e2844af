"""Running one planned check and judging it into a ``CheckReport``: skipped, error (not a
crash), or the status of its findings and threshold rules."""

from __future__ import annotations

import time
import traceback
from typing import Any

from mmaudit.checks.contract import AuditContext
from mmaudit.checks.findings import count_judged, exemption_notes, judge, status_of
from mmaudit.engine.errors import NonFiniteOutputError
from mmaudit.report.document import CheckReport, json_safe, select_key_figures
from mmaudit.report.writer import ReportWriter
from mmaudit.runner.plan import PlannedCheck


def run_one(
    pc: PlannedCheck, ctx: AuditContext, writer: ReportWriter, console: Any = None
) -> CheckReport:
    """Run one check; skipped when its needs are unmet or it could test nothing on this data,
    error (not a crash) when it raises.

    Nothing tested is not ``pass``: a check that reports ``judged == 0`` (and raised no
    warn / fail / error finding of its own) is ``skipped`` with the check's reason, so a
    gate cannot go green on an audit that tested nothing. Rules added in the config (not
    the check's defaults) count the metrics they can judge on top of the check's own count.
    """
    start = time.perf_counter()
    params = pc.check.params.model_dump(mode="json")
    # the limits that judged; the plain wording (found / next_step / figure) is in each
    # finding, and a reworded rule is no threshold change for `mmaudit diff`
    thresholds = {
        k: v.model_dump(exclude_none=True, exclude={"found", "evidence", "next_step", "figure"})
        for k, v in pc.rules.items()
    }
    rows_total = len(ctx.dataset)
    reason = pc.check.missing_requirements(ctx)
    if reason is not None:
        return CheckReport(
            name=pc.name,
            status="skipped",
            reason=reason,
            params=params,
            thresholds=thresholds,
            judged=0,
            rows_used=0,
            rows_total=rows_total,
        )
    try:
        output = pc.check.run(ctx)
    except NonFiniteOutputError:
        raise  # the model's numbers are unusable for every check: the run stops, exit 2
    except Exception as exc:
        if console is not None:
            console.print(f"[red]check {pc.name} raised {type(exc).__name__}: {exc}[/red]")
        return CheckReport(
            name=pc.name,
            status="error",
            reason=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            params=params,
            thresholds=thresholds,
            seconds=time.perf_counter() - start,
        )
    # a rule the check exempts for this model is not judged; a note says why instead
    exempt = output.exempt_rules
    findings = list(output.findings) + judge(pc.name, output.metrics, pc.rules, exempt)
    findings += exemption_notes(pc.name, exempt, output.metrics, pc.rules, output.exempt_next_steps)
    figures, tables = writer.add_check(pc.name, output, ctx.dataset.ids)
    status = status_of(findings)
    if status == "note":
        status = "pass"
    judged = output.judged
    if judged is not None:
        defaults = type(pc.check).default_thresholds
        added = {k: r for k, r in pc.rules.items() if k not in defaults}
        judged += count_judged(output.metrics, added, exempt)
    skip_reason = None
    if judged == 0 and status == "pass":
        status = "skipped"
        skip_reason = output.skip_reason or (
            "nothing could be tested on this data (no test ran; see the notes)"
        )
    return CheckReport(
        name=pc.name,
        status=status,
        reason=skip_reason,
        metrics=json_safe(output.metrics),
        findings=findings,
        figures=figures,
        key_figures=select_key_figures(type(pc.check).key_figures, list(figures)),
        tables=tables,
        notes=output.notes,
        params=params,
        thresholds=thresholds,
        seconds=time.perf_counter() - start,
        judged=judged,
        rows_used=output.rows_used,
        rows_total=rows_total,
        coverage=list(output.coverage),
    )
