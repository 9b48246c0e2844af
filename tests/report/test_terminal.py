"""The terminal tables of `run` / `show` and `diff`: at 80 columns (CI logs) and 120, with and
without a terminal, no word is split across lines and no line is wider than the console."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console

from mmaudit.report.diff import diff_reports, moved_metrics
from mmaudit.report.document import load_report
from mmaudit.report.terminal import print_diff, print_summary

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _render(width: int, tty: bool, draw) -> str:  # type: ignore[no-untyped-def]
    console = Console(width=width, force_terminal=tty, highlight=False, record=True)
    with console.capture() as captured:
        draw(console)
    return ANSI.sub("", captured.get())


def _split(tokens: list[str], out: str) -> list[str]:
    """The tokens that no line of ``out`` holds whole."""
    lines = out.splitlines()
    return [t for t in tokens if not any(t in line for line in lines)]


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("tty", [False, True])
def test_diff_keeps_check_metric_and_numbers_whole(
    audits: dict[str, Path], width: int, tty: bool
) -> None:
    result = diff_reports(audits["clean"], audits["shortcut"])
    moved = moved_metrics(result)
    assert moved, "the sample pair must move some metric"
    out = _render(width, tty, lambda c: print_diff(c, result, limit=None))
    names = [f"{m.check}.{m.metric}" for m in moved]
    numbers = [f"{m.new:.4g}" for m in moved] + [f"{m.delta:+.4g}" for m in moved]
    assert _split(names + numbers, out) == []
    assert max(len(line) for line in out.splitlines()) <= width
    assert "…" not in out  # nothing abbreviated with an ellipsis


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("tty", [False, True])
def test_summary_splits_no_word(audits: dict[str, Path], width: int, tty: bool) -> None:
    report = load_report(audits["shortcut"])
    out = _render(width, tty, lambda c: print_summary(c, report))
    words = list(report.checks) + [c.status for c in report.checks.values()]
    for c in report.checks.values():
        for f in c.findings:
            if f.severity in ("warn", "fail", "error"):
                words += f.message.split()
        words += (c.reason or "").split()
    assert _split(words, out) == []
    assert max(len(line) for line in out.splitlines()) <= width
    if width < 110:
        assert " s " not in out.splitlines()[2]  # the seconds column is the first to go
