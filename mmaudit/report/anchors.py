"""Anchors into index.html, one scheme for every view: the HTML page sets these ids, and
summary.md, junit.xml and ``mmaudit diff`` link to ``index.html#<anchor>``."""

from __future__ import annotations

import re

from mmaudit.checks.contract import Finding

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _slug(*parts: str | None) -> str:
    return "--".join(_UNSAFE.sub("-", p).strip("-") for p in parts if p)


def check_anchor(check: str) -> str:
    """The id of a check's section."""
    return _slug("check", check)


def finding_anchor(finding: Finding) -> str:
    """The id of one finding: its check, rule and metric (unique within a report, because
    the judge raises one finding per rule and metric)."""
    return _slug("finding", finding.check, finding.rule, finding.metric)


def metric_anchor(check: str, metric: str) -> str:
    """The id of one metric's row in its check's metric table."""
    return _slug("metric", check, metric)


def figure_anchor(check: str, figure: str) -> str:
    """The id of one figure."""
    return _slug("figure", check, figure)


def page_link(anchor: str, page: str = "index.html") -> str:
    """A relative link from a file beside index.html (summary.md, junit.xml) to ``anchor``."""
    return f"{page}#{anchor}"
