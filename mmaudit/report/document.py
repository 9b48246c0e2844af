"""The report document: the ``Report`` model, how its values become JSON, how it is read.

``report.json`` is the versioned contract that ``diff``, ``show`` and every view read. It
lives apart from the writer (which stages and seals a folder) and from the views (HTML,
Markdown, JUnit), so that both can depend on it without depending on each other.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from mmaudit.checks.contract import Finding
from mmaudit.engine.errors import ReportError
from mmaudit.methods.stats import Estimate
from mmaudit.report.agreement import CrossCheck
from mmaudit.report.seal import verify_files, verify_report_json

SCHEMA_VERSION = 1
# The check / finding statuses that fail each ``--fail-on`` level of ``mmaudit run`` (an
# errored check fails a 'fail' gate too); junit.xml marks exactly these as failing.
FAILING_STATUSES: dict[str, frozenset[str]] = {
    "fail": frozenset({"fail", "error"}),
    "warn": frozenset({"warn", "fail", "error"}),
    "never": frozenset(),
}


class CheckReport(BaseModel):
    """One check's result in the report.

    ``judged`` is how many tests / comparisons the verdict rests on (0: nothing could be
    tested, so the check is ``skipped`` with the reason; None: the check did not say, or
    it crashed), ``rows_used`` of ``rows_total`` audited rows the rows they rest on, and
    ``coverage`` the notes saying which part of the data the verdict covers, with counts.
    """

    name: str
    status: str
    reason: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    findings: list[Finding] = Field(default_factory=list)
    figures: dict[str, str] = Field(default_factory=dict)
    tables: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    thresholds: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0
    traceback: str | None = None
    judged: int | None = None
    rows_used: int | None = None
    rows_total: int | None = None
    coverage: list[str] = Field(default_factory=list)
    # the figures that show the result at a glance, in the order the page leads with them
    # (the check's ``key_figures`` patterns resolved against ``figures``; empty in reports
    # written before mmaudit recorded them: the page then leads with the first figure)
    key_figures: list[str] = Field(default_factory=list)


def select_key_figures(patterns: tuple[str, ...] | list[str], names: list[str]) -> list[str]:
    """The figure ``names`` that match the ``fnmatch`` ``patterns``, in pattern order (then
    in the order the check drew them), each once: a check's key figures as the page leads
    with them. A figure left out of the report (under --redact) is not in ``names``, so it
    is never a key figure."""
    from fnmatch import fnmatchcase

    picked = [n for pattern in patterns for n in names if fnmatchcase(n, pattern)]
    return list(dict.fromkeys(picked))


class BaselineComparison(BaseModel):
    """What changed since the baseline report given to ``mmaudit run --baseline``: the
    summary of the comparison ``mmaudit diff BASELINE NEW`` makes (diff.json and diff.md in
    the report folder hold all of it)."""

    folder: str
    comparable: bool = True
    # why the comparison could not be made (not comparable, a file changed): nothing else set
    error: str | None = None
    not_comparable_reasons: list[str] = Field(default_factory=list)
    regressions: list[str] = Field(default_factory=list)
    # "check: base -> new"
    status_changes: list[str] = Field(default_factory=list)
    new_findings: list[str] = Field(default_factory=list)
    resolved_findings: list[str] = Field(default_factory=list)
    improved_findings: list[str] = Field(default_factory=list)
    # the significant metric moves, regressions first ("check.metric: 0.8 -> 0.7 (verdict)")
    moved: list[str] = Field(default_factory=list)
    n_moved: int = 0
    # linear CKA per layer, prediction churn, map rank correlation, as lines
    representation: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class Report(BaseModel):
    """Everything an audit produced, with provenance."""

    schema_version: int = SCHEMA_VERSION
    tool_version: str
    created: str
    config: dict[str, Any]
    config_path: str
    model: dict[str, Any]
    data: dict[str, Any]
    environment: dict[str, Any]
    seed: int
    timings: dict[str, float] = Field(default_factory=dict)
    checks: dict[str, CheckReport] = Field(default_factory=dict)
    # per attribute: which checks flag it and which do not, in words (mmaudit.report.agreement)
    cross_checks: list[CrossCheck] = Field(default_factory=list)
    status: str = "pass"
    # the --fail-on level the run was gated with; junit.xml's failures follow it
    fail_on: Literal["fail", "warn", "never"] = "fail"
    # --fail-on-skipped / runtime.fail_on_skipped: a planned check that was skipped fails the
    # gate (exit 1) and is a failure in junit.xml
    fail_on_skipped: bool = False
    # the checks named with --checks (None: the run was not narrowed on the command line)
    checks_requested: list[str] | None = None
    # registered checks that did not run, with why: "not requested (--checks)" or
    # "disabled in config"; every view lists them, so a narrowed run never reads as a
    # full audit
    checks_not_run: dict[str, str] = Field(default_factory=dict)
    # sha256 of report.json's own content and of every other file the run wrote (see
    # ``seal_payload``); None in reports written before mmaudit recorded them (unverified)
    integrity: dict[str, Any] | None = None
    # what changed since the report given with ``mmaudit run --baseline`` (None: none given)
    baseline: BaselineComparison | None = None

    def skipped_checks(self) -> list[str]:
        """The planned checks that were skipped (nothing they could test, or a requirement
        unmet); checks left out by ``--checks`` or ``enabled: false`` were not planned and
        are ``checks_not_run`` instead."""
        return [c.name for c in self.checks.values() if c.status == "skipped"]

    def worst_findings(self, limit: int | None = 5) -> list[Finding]:
        """Findings, most severe first (stable within a severity); all when ``limit`` is
        None."""
        from mmaudit.checks.findings import SEVERITY_ORDER

        all_findings = [f for c in self.checks.values() for f in c.findings]
        all_findings.sort(key=lambda f: -SEVERITY_ORDER.get(f.severity, 0))
        return all_findings if limit is None else all_findings[:limit]


def json_safe(value: Any) -> Any:
    """Estimates to dicts, numpy scalars to Python, NaN / inf to None."""
    if isinstance(value, Estimate):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def load_report(folder: str | Path) -> Report:
    """Read a report folder's report.json; ReportError with one clear line otherwise.

    A report that records digests (``integrity``) must match them: report.json's own
    content, and every file it lists, which must all still be there (a deleted file is
    refused, naming it); a file under samples/ that it does not list is refused too, since
    ``diff`` would read it. A report without digests (written before mmaudit recorded them)
    is read unverified: its ``integrity`` is None, and a per-sample file missing from it is
    left to the reader, which notes it.
    """
    folder = Path(folder)
    path = folder / "report.json"
    if not folder.is_dir():
        raise ReportError(f"report folder not found: {folder}")
    if not path.is_file():
        raise ReportError(f"{folder} is not an mmaudit report (no report.json)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise ReportError(f"{path}: not valid JSON (truncated or edited?): {exc}") from exc
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise ReportError(
            f"{path}: schema_version {version!r}; this mmaudit reads version {SCHEMA_VERSION}",
            hint="re-run the audit with this version of mmaudit",
        )
    verify_report_json(folder, path, raw)
    try:
        report = Report.model_validate(raw)
    except Exception as exc:
        first = str(exc).splitlines()
        detail = " ".join(first[:2]) if first else type(exc).__name__
        raise ReportError(f"{path}: malformed report.json (hand-edited?): {detail}") from exc
    root = folder.resolve()
    for check in report.checks.values():
        for rel in [*check.figures.values(), *check.tables.values()]:
            target = (root / rel).resolve()
            if root not in target.parents:
                raise ReportError(
                    f"{path}: check '{check.name}' points outside the report folder: {rel}",
                    hint="the report was edited or is not from mmaudit; refusing to read it",
                )
    if report.integrity is not None:
        verify_files(folder, path, report.integrity["files"])
    return report
