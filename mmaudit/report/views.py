"""The views written into every report folder: index.html, summary.md, junit.xml, and, when
the run was given a baseline, the comparison with it (diff.json, diff.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mmaudit.engine.errors import MmauditError, ReportError
from mmaudit.report.document import BaselineComparison, Report, load_report
from mmaudit.report.html import render_html
from mmaudit.report.junit import render_junit
from mmaudit.report.markdown import render_markdown

# how many metric moves report.json's summary keeps (diff.json keeps every one)
BASELINE_MOVES = 10


def write_views(folder: Path, report: Report) -> None:
    """index.html, summary.md and junit.xml into ``folder``."""
    (folder / "index.html").write_text(render_html(folder, report), encoding="utf-8")
    (folder / "summary.md").write_text(render_markdown(report), encoding="utf-8")
    (folder / "junit.xml").write_text(render_junit(report), encoding="utf-8")


def check_baseline(baseline: Path, out: Path) -> None:
    """Refuse a ``--baseline`` that cannot be compared with at the end, before any model
    work: a folder that is not a readable mmaudit report, or the output folder itself (the
    new report replaces it before the comparison runs)."""
    load_report(baseline)
    if Path(baseline).resolve() == Path(out).resolve():
        raise ReportError(
            f"--baseline {baseline} is the output folder -o: the new report replaces it",
            hint="copy the earlier report elsewhere, or write the new one to another -o",
        )


def write_baseline_diff(
    baseline: Path, folder: Path, shown_as: Path, scrub: Callable[[str], str] | None = None
) -> BaselineComparison:
    """Compare the finished (sealed) report in ``folder`` with ``baseline`` as ``mmaudit
    diff BASELINE NEW`` does, write diff.json and diff.md into ``folder`` (naming the new
    report ``shown_as``, where it will live), and return the summary report.json keeps.

    A comparison that cannot be made (other data or config, a baseline edited or removed
    since the run started) is not fatal: the audit stands, and the summary says why.
    ``scrub`` (the redactor's ``prose`` under --redact) cleans the finding messages and
    notes, which come from the baseline report too: it may not have been redacted."""
    from mmaudit.report.diff import (
        diff_markdown,
        diff_reports,
        moved_metrics,
        representation_lines,
    )

    try:
        result = diff_reports(baseline, folder)
    except MmauditError as exc:
        why = str(exc).replace(str(folder), str(shown_as))
        return BaselineComparison(
            folder=str(baseline),
            comparable=False,
            error=f"{why} (to compare anyway: mmaudit diff --force {baseline} {shown_as})",
        )
    result.new = str(shown_as)
    if scrub is not None:
        for change in [*result.new_findings, *result.resolved_findings, *result.improved_findings]:
            change.message = scrub(change.message)
        result.notes = [scrub(n) for n in result.notes]
    (folder / "diff.json").write_text(result.to_json(), encoding="utf-8")
    (folder / "diff.md").write_text(diff_markdown(result), encoding="utf-8")
    moved = moved_metrics(result)
    return BaselineComparison(
        folder=str(baseline),
        comparable=result.comparable,
        not_comparable_reasons=result.not_comparable_reasons,
        regressions=result.regressions,
        status_changes=[f"{s['check']}: {s['base']} -> {s['new']}" for s in result.status_changes],
        new_findings=[f"{f.severity} {f.check}: {f.message}" for f in result.new_findings],
        resolved_findings=[
            f"{f.severity} {f.check}: {f.message}" for f in result.resolved_findings
        ],
        improved_findings=[
            f"{f.severity} (was {f.was}) {f.check}: {f.message}" for f in result.improved_findings
        ],
        moved=[
            f"{m.check}.{m.metric}: {m.base:.4g} -> {m.new:.4g} ({m.verdict})"
            for m in moved[:BASELINE_MOVES]
        ],
        n_moved=len(moved),
        representation=representation_lines(result),
        notes=result.notes,
    )
