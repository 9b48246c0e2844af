"""summary.md: a short Markdown summary of a report, fit for a pull-request comment.

Every string from data or config goes through ``markdown_cell``, so a report cannot bring
links, images, tags or table breaks into the comment.
"""

from __future__ import annotations

import re

from mmaudit.checks.contract import Finding
from mmaudit.report.anchors import finding_anchor, page_link
from mmaudit.report.cells import (
    NOT_RUN,
    STATUS_ICON,
    judged_cell,
    narrowed_line,
    summary_cell,
)
from mmaudit.report.document import Report
from mmaudit.report.finding_text import code_tag
from mmaudit.report.glossary import GLOSSARY

# findings listed in summary.md before "… and K more"
SUMMARY_FINDINGS = 6


def render_markdown(report: Report) -> str:
    """A short summary fit for a pull-request comment."""
    lines = [f"## mmaudit: {STATUS_ICON.get(report.status, '')} {report.status}", ""]
    if report.checks_not_run:
        lines += [f"**{narrowed_line(report)}**", ""]
    lines += ["| check | status | key metrics | tested |", "|---|---|---|---|"]
    for c in report.checks.values():
        icon = STATUS_ICON.get(c.status, "")
        lines.append(
            f"| {c.name} | {icon} {c.status} | {markdown_cell(summary_cell(c))} |"
            f" {judged_cell(c)} |"
        )
    for name, why in sorted(report.checks_not_run.items()):
        lines.append(f"| {name} | {STATUS_ICON['skipped']} {NOT_RUN} | {markdown_cell(why)} | |")
    coverage = [(c.name, n) for c in report.checks.values() for n in c.coverage]
    if coverage:
        lines += ["", "**Coverage** (what part of the data a verdict rests on)", ""]
        lines += [f"- `{name}`: {markdown_cell(n)}" for name, n in coverage]
    worst = [f for f in report.worst_findings(None) if f.severity in ("fail", "warn", "error")]
    if worst:
        lines += ["", "**Findings**", ""]
        for f in worst[:SUMMARY_FINDINGS]:
            lines += finding_lines(f)
        if len(worst) > SUMMARY_FINDINGS:
            lines.append(
                f"- … and {len(worst) - SUMMARY_FINDINGS} more warn / fail findings"
                " (see index.html or report.json)"
            )
    if report.cross_checks:
        lines += ["", "**Across checks**", ""]
        lines += [f"- {markdown_cell(cc.message)}" for cc in report.cross_checks]
    with_figures = [c for c in report.checks.values() if c.figures]
    if with_figures:
        lines += ["", "**Figures**", ""]
        lines += [
            f"- {c.name}: " + ", ".join(f"[{k}]({v})" for k, v in c.figures.items())
            for c in with_figures
        ]
    terms = summary_terms("\n".join(lines))
    if terms:  # folded, so the pull-request comment stays short
        lines += ["", "<details><summary>Terms used above (all: index.html, Terms)</summary>", ""]
        lines += [f"- **{term}**: {markdown_cell(meaning)}" for term, meaning in terms]
        lines += ["", "</details>"]
    lines += [
        "",
        f"_model `{markdown_cell(str(report.model.get('source')))}`,"
        f" {report.data.get('n')} samples,"
        f" seed {report.seed}_",
        "",
    ]
    return "\n".join(lines)


def finding_lines(finding: Finding) -> list[str]:
    """One finding as a list item: severity, check and the plain sentence linked to its
    place in index.html, then the evidence, the next step and the code tag (check.rule ·
    metric, the names in report.json and the YAML thresholds) as one sub-item."""
    link = page_link(finding_anchor(finding))
    lines = [
        f"- **{finding.severity}** `{finding.check}`: {markdown_cell(finding.message)}"
        f" ([details]({link}))"
    ]
    # one sub-item, so a pull-request comment stays short
    parts = [f"evidence: {markdown_cell(finding.evidence)}"] if finding.evidence else []
    if finding.next_step:
        parts.append(f"next: {markdown_cell(finding.next_step)}")
    parts.append(f"`{code_tag(finding).replace('`', '')}`")
    lines.append("  - " + " — ".join(parts))
    return lines


def summary_terms(text: str) -> list[tuple[str, str]]:
    """The glossary entries whose words occur in ``text`` (words, or the parts of metric
    names between dots and underscores), so summary.md explains its own jargon and stays
    short."""
    words = set(re.findall(r"[a-z0-9\-]+", text.lower()))
    return [(term, meaning) for term, keys, meaning in GLOSSARY if words & set(keys)]


def markdown_cell(text: str) -> str:
    """Text safe inside a Markdown table cell or list item: no pipes, tags, newlines, or
    links and images (``[x](url)`` / ``![](url)`` from data stay literal text)."""
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")
