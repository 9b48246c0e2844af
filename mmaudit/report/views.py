"""The three views written into every report folder: index.html, summary.md, junit.xml."""

from __future__ import annotations

from pathlib import Path

from mmaudit.report.document import Report
from mmaudit.report.html import render_html
from mmaudit.report.junit import render_junit
from mmaudit.report.markdown import render_markdown


def write_views(folder: Path, report: Report) -> None:
    """index.html, summary.md and junit.xml into ``folder``."""
    (folder / "index.html").write_text(render_html(folder, report), encoding="utf-8")
    (folder / "summary.md").write_text(render_markdown(report), encoding="utf-8")
    (folder / "junit.xml").write_text(render_junit(report), encoding="utf-8")
