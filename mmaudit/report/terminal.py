"""The report and the diff in a terminal: the tables ``mmaudit run`` / ``show`` and
``mmaudit diff`` print.

They are read in 80-column CI logs as often as in wide terminals, so no word is ever split
across lines: names (check, check.metric, status, verdict) never wrap, prose wraps between
words, and on a narrow console the columns that matter least are dropped or abbreviated
before anything wraps (``WIDE`` columns and up keep them all).
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

#: consoles at least this wide get every column
WIDE = 110

STATUS_COLOURS = {
    "pass": "green",
    "warn": "yellow",
    "fail": "red",
    "error": "magenta",
    "skipped": "dim",
}
VERDICT_COLOURS = {"regression": "red", "improved": "green", "worse (within limits)": "yellow"}
#: the diff's verdicts in a narrow console
SHORT_VERDICTS = {"worse (within limits)": "worse, ok", "regression": "regressed"}


def gate_failed(status: str, fail_on: str) -> bool:
    """Whether an audit status fails ``--fail-on`` (an errored check fails a 'fail' gate too)."""
    from mmaudit.report.document import FAILING_STATUSES

    return status in FAILING_STATUSES[fail_on]


def summary_title(report: Any) -> str:
    """The terminal table's header: the audit status, and the gates the run recorded
    (``report.fail_on``, ``report.fail_on_skipped``) that it fails, so the header never
    reads "pass" above an exit code of 1."""
    title = f"mmaudit: {report.status}"
    failed = gate_failed(report.status, report.fail_on)
    if failed and report.fail_on != "fail":  # a failing status under the default gate says so
        title += f" (fails --fail-on {report.fail_on})"
    skipped = report.skipped_checks()
    if report.fail_on_skipped and skipped:
        joint = "and" if failed else "but"
        title += f", {joint} {len(skipped)} check(s) skipped (fails --fail-on-skipped)"
    return title


def _table(console: Console, title: str) -> Table:
    """A table that keeps its borders on a wide console and only a header rule on a narrow
    one (the vertical bars cost a column each)."""
    wide = console.width >= WIDE
    return Table(
        title=title,
        box=box.HEAVY_HEAD if wide else box.SIMPLE_HEAD,
        pad_edge=wide,
        collapse_padding=not wide,
    )


def print_summary(console: Console, report: Any) -> None:
    """The report in the terminal: one row per check (status, what it tested, key metrics or
    the reason it has none), then its coverage notes, findings and cross-check lines."""
    from mmaudit.report.cells import NO_RESULT, judged_cell, key_metrics

    wide = console.width >= WIDE
    # every string from the report goes through escape(): a subgroup level such as "[/x]"
    # in a metric name is data, not rich markup
    table = _table(console, escape(summary_title(report)))
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    if wide:
        table.add_column("tested", no_wrap=True)
    # prose and "metric value [ci]" parts wrap between words; a token longer than the whole
    # column is cut with an ellipsis rather than split
    table.add_column("key metrics / reason", overflow="ellipsis", ratio=1)
    if wide:
        table.add_column("s", no_wrap=True, justify="right")
    for c in report.checks.values():
        colour = STATUS_COLOURS.get(c.status, "white")
        key = key_metrics(c.metrics, c.findings)
        cells = [escape(c.name), f"[{colour}]{escape(c.status)}[/{colour}]"]
        if wide:
            cells.append(escape(judged_cell(c)))
        cells.append(
            escape((c.reason or key) if c.status in NO_RESULT else (key or c.reason or ""))
        )
        if wide:
            cells.append(f"{c.seconds:.1f}")
        table.add_row(*cells)
    for name, why in sorted(report.checks_not_run.items()):
        table.add_row(escape(name), "[dim]not run[/dim]", *([""] if wide else []), escape(why))
    console.print(table)
    for c in report.checks.values():
        for line in c.coverage:
            console.print(f"  [yellow]coverage[/yellow] {escape(c.name)}: {escape(line)}")
    others = sum(len(c.notes) for c in report.checks.values())
    if others:
        console.print(f"  [dim]{others} more note(s) in index.html, under each check[/dim]")
    # the worst first, as in summary.md
    for f in report.worst_findings(None):
        if f.severity in ("warn", "fail", "error"):
            print_finding(console, f)
    for cc in getattr(report, "cross_checks", []):
        console.print(f"  [bold]across checks[/bold]: {escape(cc.message)}", markup=True)


def print_finding(console: Console, finding: Any) -> None:
    """One finding as the person who acts on it reads it: "FAIL probing  <what was found>",
    then, indented, the evidence, the next step and the dim code tag (check.rule · metric)
    that ties it to report.json and the YAML thresholds. Every part wraps between words
    under its own indent, with no padding at the end of a line (CI logs)."""
    import textwrap

    from rich.text import Text

    from mmaudit.report.finding_text import code_tag

    def lines(text: str, indent: int) -> list[str]:
        width = max(20, console.width - indent)
        wrapped = textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)
        return [" " * indent + line for line in wrapped]

    severity = finding.severity.upper()
    head = lines(f"{severity} {finding.check}  {finding.message}", 2)
    for k, line in enumerate(head):
        text = Text(line)
        if k == 0:
            text.stylize(STATUS_COLOURS.get(finding.severity, "white"), 2, 2 + len(severity))
        console.print(text)
    for label, part in (("evidence: ", finding.evidence), ("next: ", finding.next_step)):
        for line in lines(label + part, 6) if part else []:
            console.print(Text(line))
    for line in lines(code_tag(finding), 6):
        console.print(Text(line, style="dim"))


def _moves_table(console: Console, shown: list[Any]) -> Table:
    """The metric moves. ``check.metric`` never wraps and numbers are never cut: when base,
    new, delta, test and verdict do not all fit beside the longest name, each row becomes
    the shortened verdict beside two lines, the name and "base → new (delta)", and the test
    is dropped."""
    title = "mmaudit diff: significant metric moves"
    rows = [
        (
            f"{m.check}.{m.metric}",
            [f"{m.base:.4g}", f"{m.new:.4g}", f"{m.delta:+.4g}", m.method],
            m.verdict,
            VERDICT_COLOURS.get(m.verdict, "dim"),
        )
        for m in shown
    ]
    headers = ("check.metric", "base", "new", "delta", "test", "verdict")
    widths = [
        max([len(h)] + [len(cell) for cell in cells])
        for h, cells in zip(
            headers,
            zip(*[(name, *nums, verdict) for name, nums, verdict, _ in rows], strict=True),
            strict=False,
        )
    ] or [len(h) for h in headers]
    if sum(widths) + 3 * len(headers) + 1 <= console.width:
        table = Table(title=title, box=box.HEAVY_HEAD)
        for h in headers:
            table.add_column(h, no_wrap=True)
        for name, nums, verdict, colour in rows:
            table.add_row(escape(name), *nums, f"[{colour}]{escape(verdict)}[/{colour}]")
        return table
    table = _table(console, title)
    table.add_column("verdict", no_wrap=True)
    table.add_column("check.metric / base → new (delta)", ratio=1)
    for name, nums, verdict, colour in rows:
        short = SHORT_VERDICTS.get(verdict, verdict)
        table.add_row(
            f"[{colour}]{escape(short)}[/{colour}]",
            f"{escape(name)}\n  {nums[0]} → {nums[1]} ({nums[2]})",
        )
    return table


def print_diff(console: Console, result: Any, limit: int | None = 10) -> None:
    """The diff in the terminal: regressions, improvements, then the largest other moves
    (``limit`` rows of those; None = all); every string from a report escaped.

    """
    from mmaudit.report.diff import moved_metrics, representation_lines

    if result.not_comparable_reasons:
        console.print(
            f"[yellow]not comparable: {escape('; '.join(result.not_comparable_reasons))}[/yellow]"
        )
    moved = moved_metrics(result)
    key = [m for m in moved if m.regression or m.improvement]
    other = [m for m in moved if not (m.regression or m.improvement)]
    shown = key + (other if limit is None else other[:limit])
    console.print(_moves_table(console, shown))
    if len(shown) < len(moved):
        console.print(f"[dim]{len(moved) - len(shown)} smaller moves not shown (--all)[/dim]")
    for s in result.status_changes:
        colour = "red" if s["worse"] else "green" if s.get("better") else "yellow"
        console.print(
            f"[{colour}]{escape(s['check'])}: {escape(s['base'])} -> {escape(s['new'])}[/{colour}]"
        )
    for name in result.missing_checks:
        console.print(
            f"[red]missing {escape(name)}[/red]: in the base report, not in the new one"
            f" (run it, or pass --ignore-check {escape(name)})"
        )
    for f in result.resolved_findings:
        console.print(f"[green]resolved[/green] {escape(f.check)}: {escape(f.message)}")
    for f in result.improved_findings:
        console.print(
            f"[green]improved {escape(f.was or '')} -> {escape(f.severity)}[/green]"
            f" {escape(f.check)}: {escape(f.message)}"
        )
    for f in result.new_findings:
        console.print(f"[red]new {escape(f.severity)}[/red] {escape(f.check)}: {escape(f.message)}")
    for line in representation_lines(result):
        console.print(escape(line))
    for n in result.notes:
        console.print(f"[dim]{escape(n)}[/dim]")
    console.print(
        f"[red]{len(result.regressions)} regression(s)[/red]"
        if result.regressions
        else "[green]no regressions[/green]"
    )
