"""junit.xml: a report as JUnit XML, one testcase per check and per finding, so CI shows
the audit's verdict beside its tests.

Every string from data or config is escaped (xml.sax.saxutils).
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from mmaudit.checks.contract import Finding
from mmaudit.report.anchors import finding_anchor, page_link
from mmaudit.report.cells import NO_RESULT, NOT_RUN
from mmaudit.report.document import FAILING_STATUSES, Report
from mmaudit.report.finding_text import code_tag


def render_junit(report: Report) -> str:
    """One testcase per check and per finding. What fails follows the run's ``--fail-on``
    level (``report.fail_on``, recorded as a testsuite property), so CI reads the same
    verdict as the exit code: at 'fail' (the default) fail checks and findings are failures
    and errored ones errors; at 'warn' warnings are failures too; at 'never' nothing fails.
    A verdict that does not fail the gate is kept as the testcase's system-out. With
    ``report.fail_on_skipped`` a skipped check (planned, but it tested nothing) is a failure
    too; checks not run (``--checks``, ``enabled: false``) stay skipped: they were not
    planned."""
    failing = FAILING_STATUSES[report.fail_on]
    counts = {"failure": 0, "error": 0, "skipped": 0}

    def body(status: str, message: str, details: str = "") -> str:
        if status == "skipped" and report.fail_on_skipped:
            counts["failure"] += 1
            text = f"skipped (fails --fail-on-skipped): {message}"
            return f"<failure message={quoteattr(text)}/>"
        if status == "skipped":
            counts["skipped"] += 1
            return f"<skipped message={quoteattr(message)}/>"
        if status in failing:
            tag = "error" if status == "error" else "failure"
            counts[tag] += 1
            if details:
                return f"<{tag} message={quoteattr(message)}>{_xml_text(details)}</{tag}>"
            return f"<{tag} message={quoteattr(message)}/>"
        if status in ("warn", "fail", "error"):
            text = f"{status}: {message}" + (f"\n{details}" if details else "")
            return f"<system-out>{_xml_text(text)}</system-out>"
        return ""

    cases = []
    for c in report.checks.values():
        message = (c.reason or c.status) if c.status in NO_RESULT else f"check status {c.status}"
        cases.append(
            f'<testcase classname="mmaudit" name={quoteattr(c.name)} time="{c.seconds:.3f}">'
            f"{body(c.status, message)}</testcase>"
        )
        for k, f in enumerate(c.findings):
            # a finding is never "skipped": only its check can be
            fbody = body(f.severity, f.message, _details(f)) if f.severity != "skipped" else ""
            name = quoteattr(f"{c.name}.{f.rule}.{f.metric or k}")
            cases.append(f'<testcase classname="mmaudit.{c.name}" name={name}>{fbody}</testcase>')
    for name, why in sorted(report.checks_not_run.items()):
        counts["skipped"] += 1
        cases.append(
            f'<testcase classname="mmaudit" name={quoteattr(name)} time="0.000">'
            f"<skipped message={quoteattr(f'{NOT_RUN}: {why}')}/></testcase>"
        )
    properties = {
        "fail_on": report.fail_on,
        "fail_on_skipped": str(report.fail_on_skipped).lower(),
        "status": report.status,
        "mmaudit": report.tool_version,
        "checks_requested": ",".join(report.checks_requested or []) or "all not disabled",
    }
    props = "".join(
        f"<property name={quoteattr(k)} value={quoteattr(str(v))}/>" for k, v in properties.items()
    )
    head = (
        f'<testsuite name="mmaudit" tests="{len(cases)}" failures="{counts["failure"]}"'
        f' errors="{counts["error"]}" skipped="{counts["skipped"]}">'
        f"<properties>{props}</properties>"
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<testsuites>'
        + head
        + "".join(cases)
        + "</testsuite></testsuites>\n"
    )


def _details(finding: Finding) -> str:
    """A finding's body under its plain sentence: the evidence, the next step, the code tag
    (check.rule · metric) and the link to its place in index.html, one per line."""
    lines = [f"evidence: {finding.evidence}"] if finding.evidence else []
    lines += [f"next: {finding.next_step}"] if finding.next_step else []
    lines += [code_tag(finding), f"details: {page_link(finding_anchor(finding))}"]
    return "\n".join(lines)


def _xml_text(text: str) -> str:
    from xml.sax.saxutils import escape

    return escape(text)
