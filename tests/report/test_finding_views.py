"""A finding in every view but the HTML page: the plain sentence, the evidence, the next
step and the code tag (check.rule · metric), with a link to its place in index.html; and a
glossary entry for every term those texts use."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from rich.console import Console

from mmaudit.checks.contract import Finding
from mmaudit.checks.findings import metric_label
from mmaudit.checks.registry import load_builtin_checks
from mmaudit.report.document import CheckReport, Report, load_report
from mmaudit.report.junit import render_junit
from mmaudit.report.markdown import render_markdown, summary_terms
from mmaudit.report.terminal import print_summary

FOUND = Finding(
    check="probing",
    rule="used",
    severity="fail",
    message="The model's predictions use the patient's site",
    evidence="encoded and used (site) = 1.00; fail above 0.5",
    next_step="in-paint the corner marker in the training images, retrain and re-audit",
    detail="attribute encoded in the fused embedding and used by the head",
    figure="erasure",
    metric="encoded_and_used.site",
    value=1.0,
    threshold=0.5,
)
TAG = "probing.used · encoded_and_used.site"
LINK = "index.html#finding--probing--used--encoded_and_used.site"

# the jargon a finding's words may use: each needs a glossary entry (summary_terms finds it)
JARGON = (
    "AUROC", "CI", "Holm", "corrected", "permutation", "probe", "LEACE", "erasing", "EMAP",
    "Shapley", "IG", "Integrated Gradients", "off-ROI", "region of interest", "hotspot",
    "control box", "border", "equalised-odds", "true-positive", "false alarms", "ECE",
    "calibrated", "Platt", "isotonic", "decision threshold", "kNN", "neighbours",
    "identity margin", "saliency", "randomised", "SSIM", "Spearman", "in-paint", "crop",
    "dropped", "dropout", "redundant", "leave-one-out", "keep-one-in", "stop list",
    "prediction head", "fused embedding", "layer", "projection", "cluster", "exemplar",
    "modality", "mmaudit diff", "re-audit",
)  # fmt: skip


def _report(*findings: Finding, fail_on: str = "fail") -> Report:
    checks = {"probing": CheckReport(name="probing", status="fail", findings=list(findings))}
    return Report(
        tool_version="t", created="c", config={}, config_path="", model={}, data={},
        environment={}, seed=0, checks=checks, status="fail", fail_on=fail_on,
    )  # fmt: skip


def test_summary_md_gives_message_evidence_next_step_tag_and_link() -> None:
    md = render_markdown(_report(FOUND)).splitlines()
    at = md.index(f"- **fail** `probing`: {FOUND.message} ([details]({LINK}))")
    assert md[at + 1] == f"  - evidence: {FOUND.evidence} — next: {FOUND.next_step} — `{TAG}`"
    assert "attribute encoded in the fused" not in "\n".join(md)  # the detail stays in json


def test_junit_failure_is_the_sentence_and_its_body_the_rest() -> None:
    suite = ET.fromstring(render_junit(_report(FOUND))).find("testsuite")
    assert suite is not None
    case = next(
        c
        for c in suite.findall("testcase")
        if c.get("name") == "probing.used." + ("encoded_and_used.site")
    )
    failure = case.find("failure")
    assert failure is not None and failure.get("message") == FOUND.message
    assert (failure.text or "").splitlines() == [
        f"evidence: {FOUND.evidence}",
        f"next: {FOUND.next_step}",
        TAG,
        f"details: {LINK}",
    ]
    # below the gate the same parts are the system-out
    quiet = ET.fromstring(render_junit(_report(FOUND, fail_on="never"))).find("testsuite")
    assert quiet is not None
    out = [c.findtext("system-out") or "" for c in quiet.findall("testcase")]
    assert any(o.startswith(f"fail: {FOUND.message}\nevidence: ") and LINK in o for o in out)


def test_console_prints_the_sentence_then_indented_evidence_next_step_and_tag() -> None:
    console = Console(width=80, force_terminal=False, highlight=False, record=True)
    with console.capture() as captured:
        print_summary(console, _report(FOUND))
    lines = captured.get().splitlines()
    at = next(k for k, ln in enumerate(lines) if ln.startswith("  FAIL probing  The model's"))
    tag = next(k for k, ln in enumerate(lines) if TAG in ln)
    body = lines[at + 1 : tag + 1]
    assert body[0].startswith("      evidence: encoded and used (site) = 1.00")
    assert any(ln.startswith("      next: in-paint") for ln in body)
    # every wrapped line keeps its indent, and no line ends in padding
    assert all(ln.startswith("      ") and ln == ln.rstrip() for ln in body), body
    assert " ".join(ln.strip() for ln in body[1:-1]) == f"next: {FOUND.next_step}"
    assert all(len(ln) <= 80 for ln in lines)


def test_console_lists_fails_before_warns_as_summary_md_does() -> None:
    warn = FOUND.model_copy(update={"severity": "warn", "rule": "encoded", "message": "W"})
    console = Console(width=80, force_terminal=False, highlight=False, record=True)
    with console.capture() as captured:
        print_summary(console, _report(warn, FOUND))
    text = captured.get()
    assert text.index("  FAIL probing") < text.index("  WARN probing  W")


def _rule_texts() -> list[str]:
    texts = []
    for cls in load_builtin_checks().values():
        for rule in cls.default_thresholds.values():
            example = rule.metric.replace("*", "x")
            texts += [rule.found, rule.next_step, metric_label(rule.metric, example)]
    return texts


def _uncovered(texts: list[str]) -> list[str]:
    """The jargon words ``texts`` use that no glossary entry explains."""
    joined = "\n".join(texts).lower()
    used = [j for j in JARGON if re.search(rf"(?<![a-z]){re.escape(j.lower())}", joined)]
    assert used, "the texts use none of the jargon: the test would prove nothing"
    return [j for j in used if not summary_terms(j)]


def test_glossary_explains_every_term_the_rules_wording_uses() -> None:
    assert _uncovered(_rule_texts()) == []


def test_glossary_explains_every_term_the_sample_audits_findings_use(
    audits: dict[str, Path],
) -> None:
    texts = []
    for name in ("shortcut", "clean"):
        for check in load_report(audits[name]).checks.values():
            for f in check.findings:
                texts += [f.message, f.evidence, f.next_step]
    assert _uncovered(texts) == []


def test_the_sample_marker_finding_says_where_the_box_is(audits: dict[str, Path]) -> None:
    """The saliency fail on the shortcut checkpoint names the tested box by its place on
    the film (the planted marker sits in the top-left corner) and the figure that shows it."""
    saliency = load_report(audits["shortcut"]).checks["saliency"]
    (hotspot,) = [f for f in saliency.findings if f.rule == "hotspot_used"]
    assert hotspot.severity == "fail"
    assert "top-left corner" in hotspot.message and "rows 0-" in hotspot.message
    assert "{" not in hotspot.message and "(not measured)" not in hotspot.message
    assert hotspot.figure in saliency.figures
