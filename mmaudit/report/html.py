"""index.html: the self-contained HTML page of a report, laid out for the person who reads it.

The top of the page says the verdict, the findings that decide it (each with a thumbnail of
the figure that shows it and a link to it), the cross-check lines and what changed since a
baseline. Each check's section then leads with its status, one sentence, its key figures and
its findings; the other figures, notes, parameters and every table sit in collapsed
``<details>`` (sortable and filterable by a few lines of inline script, allowed by its hash
in the page's CSP). Ids come from ``mmaudit.report.anchors``, so summary.md, junit.xml and
``diff`` can link into the page.

Derived from the ``Report`` and the figure and table files inside the report folder; every
string from data or config is escaped (jinja2 autoescape). The template, style sheet and
script are the package files ``templates/report.{html,css,js}``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from mmaudit.checks.contract import Finding
from mmaudit.checks.findings import SEVERITY_ORDER
from mmaudit.report.anchors import check_anchor, figure_anchor, finding_anchor, metric_anchor
from mmaudit.report.cells import (
    NO_RESULT,
    fmt,
    fmt_p,
    is_p_column,
    judged_cell,
    key_metrics,
    metric_rows,
    narrowed_line,
)
from mmaudit.report.document import CheckReport, Report
from mmaudit.report.finding_text import code_tag
from mmaudit.report.glossary import GLOSSARY

# the statuses and severities that decide a verdict against the model
DECIDING = ("warn", "fail", "error")
# the width of a thumbnail at the top of the page (px) and how many a check shows there
THUMB_PX = 320
THUMBS_PER_CHECK = 2


@functools.cache
def _template_file(name: str) -> str:
    return resources.files("mmaudit.report").joinpath(f"templates/{name}").read_text("utf-8")


def html_template() -> str:
    """The jinja2 source of index.html, read once from the package's templates folder."""
    return _template_file("report.html")


def page_script() -> str:
    """The page's one inline script (filter, sort, open the target of a link, open every
    ``<details>`` for printing): package code, never data."""
    return _template_file("report.js")


def script_hash() -> str:
    """The CSP source that allows exactly ``page_script()`` and no other script."""
    digest = hashlib.sha256(page_script().encode("utf-8")).digest()
    return "sha256-" + base64.b64encode(digest).decode("ascii")


def _figure_path(folder: Path, rel: str) -> Path | None:
    """A figure file inside the report folder; None when it is gone or lies outside."""
    path = (folder / rel).resolve()
    if folder.resolve() not in path.parents or not path.is_file():
        return None
    return path


def _figure_data(folder: Path, rel: str) -> str | None:
    """A figure file as base64 for an inline ``data:`` image (the page stands alone); None
    when it is gone or lies outside the report folder."""
    path = _figure_path(folder, rel)
    return None if path is None else base64.b64encode(path.read_bytes()).decode("ascii")


def _thumbnail(folder: Path, rel: str, width: int = THUMB_PX) -> str | None:
    """A small copy of a figure (``width`` px, 256-colour PNG) as base64, for the top of the
    page; None when the figure is gone or cannot be decoded. Only figures the report lists
    are shown, so a figure withheld under --redact never becomes a thumbnail."""
    from PIL import Image, UnidentifiedImageError

    path = _figure_path(folder, rel)
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, UnidentifiedImageError):
        return None
    if rgb.width > width:
        height = max(1, round(rgb.height * width / rgb.width))
        rgb = rgb.resize((width, height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    rgb.quantize(256, method=Image.Quantize.FASTOCTREE).save(buffer, "PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class _Ids:
    """Element ids, each used once: a repeated anchor (two findings of one rule and metric)
    gets a numbered suffix, so every link lands on one element."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, anchor: str) -> str:
        unique, k = anchor, 1
        while unique in self.seen:
            k += 1
            unique = f"{anchor}-{k}"
        self.seen.add(unique)
        return unique


def _by_severity(findings: Iterable[Finding]) -> list[Finding]:
    """Findings worst first, in the check's order within a severity."""
    return sorted(findings, key=lambda f: -SEVERITY_ORDER.get(f.severity, 0))


def _summary_sentence(c: CheckReport) -> str:
    """What the check found, in one sentence: its reason when it has no result, else its
    worst finding, else that no rule flagged anything."""
    if c.status in NO_RESULT:
        prefix = "The check failed to run: " if c.status == "error" else ""
        return prefix + (c.reason or "no reason recorded")
    flagged = [f for f in c.findings if f.severity in DECIDING]
    if flagged:
        worst = _by_severity(flagged)[0].message
        more = len(flagged) - 1
        return worst + (f" (and {more} more finding{'s' if more > 1 else ''})" if more else "")
    return "No rule flagged anything."


def _key_figure_names(c: CheckReport) -> list[str]:
    """The figures a section leads with: the recorded key figures still listed, else (a
    report written before they were recorded) the check's first figure."""
    names = [n for n in c.key_figures if n in c.figures]
    return names or list(c.figures)[:1]


def _memory_line(report: Report) -> str:
    """The no-gradient sweeps' memory plan in one line: the cache's note (report.json's
    ``environment.memory_plan``) when the budget split a batch, else the budget alone; with
    how ``auto`` chose the budget when it did."""
    chosen = str(report.environment.get("memory_budget_chosen", ""))
    why = f" ({chosen})" if chosen.startswith("auto") else ""
    plan = report.environment.get("memory_plan")
    if plan:
        return str(plan.get("note")) + why
    budget = report.timings.get("memory_budget_mb")
    if budget is None:
        return "no runtime.memory_budget_mb: whole batches per forward"
    return f"no sweep split: whole batches fit runtime.memory_budget_mb = {budget:g} MB{why}"


def _verdict_line(report: Report) -> str:
    """The overall verdict in words: how many checks end in each status."""
    counts: dict[str, int] = {}
    for c in report.checks.values():
        counts[c.status] = counts.get(c.status, 0) + 1
    order = ("fail", "error", "warn", "pass", "skipped")
    parts = [f"{counts[s]} {s}" for s in order if counts.get(s)]
    n = len(report.checks)
    return (
        f"{n} check{'s' if n != 1 else ''} ran" + (": " + ", ".join(parts) if parts else "") + "."
    )


def render_html(folder: Path, report: Report) -> str:
    """index.html of the report in ``folder``: the verdict and what decides it, the
    cross-check lines, the changes since a baseline, a summary table, each check's section
    (figures and findings first, the numbers folded), the glossary, provenance."""
    import jinja2

    env = jinja2.Environment(autoescape=True)
    env.filters["ticks"] = _ticks
    ids = _Ids()
    checks = [_check_view(folder, c, ids) for c in report.checks.values()]
    deciding = _deciding(folder, checks)
    provenance = [
        ("tool version", report.tool_version),
        ("created", report.created),
        ("config", report.config_path),
        ("checkpoint sha256", report.model.get("sha256")),
        ("manifest sha256", report.data.get("sha256")),
        ("seed", report.seed),
        ("device", report.environment.get("device")),
        ("torch", report.environment.get("torch")),
        ("layers", report.model.get("layers")),
        ("detected", report.model.get("detected")),
        ("timings (s)", {k: round(v, 2) for k, v in report.timings.items()}),
        ("memory plan", _memory_line(report)),
        ("checks requested (--checks)", report.checks_requested or "all not disabled"),
        ("manifest", report.data.get("manifest")),
        ("data columns", _data_columns(report.config.get("data", {}))),
        (
            "attributes",
            {
                name: (a or {}).get("column") or name
                for name, a in (report.config.get("data", {}).get("attributes") or {}).items()
            },
        ),
    ]
    reuse = report.model.get("encoder_reuse_notes")
    if reuse:  # a named encoder that leaves its backbone running (engine.partial_encoders)
        provenance.insert(12, ("encoder reuse", "; ".join(reuse)))
    return env.from_string(html_template()).render(
        report=report,
        verdict=_verdict_line(report),
        checks=checks,
        deciding=deciding,
        baseline=report.baseline,
        provenance=provenance,
        narrowed=narrowed_line(report),
        not_run=sorted(report.checks_not_run.items()),
        glossary=[(term, meaning) for term, _, meaning in GLOSSARY],
        css=_template_file("report.css"),
        script=page_script(),
        script_hash=script_hash(),
    )


_TICKS = re.compile(r"`([^`\n]+)`")


def _ticks(text: str | None) -> Any:
    """Finding text (written for Markdown too) with its `backtick` spans as ``<code>``; the
    text is escaped first, so nothing in it becomes markup."""
    from markupsafe import Markup, escape

    return Markup(_TICKS.sub(r"<code>\1</code>", str(escape(text or ""))))


def _check_view(folder: Path, c: CheckReport, ids: _Ids) -> dict[str, Any]:
    """What the template shows of one check, with the ids of its section, findings,
    figures and metric rows."""
    figures = {}
    for name, rel in c.figures.items():
        data = _figure_data(folder, rel)
        if data is not None:
            figures[name] = {
                "name": name,
                "rel": rel,
                "data": data,
                "id": ids(figure_anchor(c.name, name)),
            }
    key_names = [n for n in _key_figure_names(c) if n in figures]
    rows = metric_rows(c.metrics)
    metric_ids = {r["name"]: ids(metric_anchor(c.name, r["name"])) for r in rows}
    findings = [
        {
            "id": ids(finding_anchor(f)),
            "severity": f.severity,
            "message": f.message,
            "evidence": f.evidence,
            "next_step": f.next_step,
            "tag": code_tag(f),
            "detail": f.detail,
            "metric_id": metric_ids.get(f.metric or ""),
            "figure": f.figure if f.figure in figures else None,
        }
        for f in _by_severity(c.findings)
    ]
    worst = ""
    if c.status in NO_RESULT and c.reason:
        worst = c.reason
    elif c.findings:
        worst = _by_severity(c.findings)[0].message
    return {
        "name": c.name,
        "id": ids(check_anchor(c.name)),
        "status": c.status,
        "reason": c.reason,
        "summary": _summary_sentence(c),
        "tested": judged_cell(c),
        "coverage": c.coverage,
        "findings": findings,
        "notes": c.notes,
        "traceback": c.traceback,
        "settings": _settings(c),
        "metrics": [r | {"id": metric_ids[r["name"]]} for r in rows],
        "key": key_metrics(c.metrics, c.findings),
        "worst": worst,
        "key_figures": [figures[n] for n in key_names],
        "other_figures": [f for n, f in figures.items() if n not in key_names],
        "figures": figures,
        "tables": [t for rel in c.tables.values() if (t := _table_preview(folder, rel))],
    }


def _settings(c: CheckReport) -> list[tuple[str, str]]:
    """The check's parameters and threshold rules as (name, JSON) rows."""
    rows = [(f"params.{k}", json.dumps(v, default=str)) for k, v in c.params.items()]
    rows += [(f"thresholds.{k}", json.dumps(v, default=str)) for k, v in c.thresholds.items()]
    return rows


def _deciding(folder: Path, checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checks that decide the verdict (warn, fail, error), worst first, each with its
    deciding findings and thumbnails of the figures that show them: the figure a finding
    names when the report has it, else the check's first key figure."""
    groups = []
    for c in checks:
        if c["status"] not in DECIDING:
            continue
        found = [f for f in c["findings"] if f["severity"] in DECIDING]
        names = [f["figure"] for f in found if f["figure"]]
        if c["key_figures"]:
            names.append(c["key_figures"][0]["name"])
        thumbs = []
        for name in list(dict.fromkeys(names))[:THUMBS_PER_CHECK]:
            fig = c["figures"][name]
            data = _thumbnail(folder, fig["rel"])
            if data is not None:
                thumbs.append({"name": name, "id": fig["id"], "data": data})
        groups.append(c | {"deciding_findings": found, "thumbs": thumbs})
    groups.sort(key=lambda g: -SEVERITY_ORDER.get(g["status"], 0))
    return groups


def _data_columns(data: dict[str, Any]) -> dict[str, Any]:
    """The manifest columns the audit read, by role."""
    cols: dict[str, Any] = {"id": data.get("id"), "patient": data.get("patient")}
    for role in ("image", "text"):
        if data.get(role):
            cols[role] = data[role].get("column")
    if data.get("tabular"):
        cols["tabular"] = data["tabular"].get("columns")
    return cols


#: a number as pandas writes one to CSV (no sign but minus, no leading zeros, no blanks):
#: a column of only such cells is shown as numbers; any other cell keeps the column text
_CSV_NUMBER = re.compile(r"-?(?:(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?|inf)")
_CSV_INT = re.compile(r"-?(?:0|[1-9]\d*)")


def _preview_column(cells: Any, limit: int) -> list[Any]:
    """The first ``limit`` cells of a CSV column read as text (a pandas string Series, NA:
    blank) as shown: numbers when every cell of the column is one as pandas writes numbers
    (ints when all are whole, else floats, so they format alike), else the text as written
    (an id ``000123`` or a level ``NA`` stays itself)."""
    present = cells.dropna()
    head = cells.head(limit).to_numpy(dtype=object, na_value=None).tolist()
    # vectorised (pyarrow's regex kernel): a per-sample table has millions of cells
    if present.empty or not present.str.fullmatch(_CSV_NUMBER.pattern).all():
        return head
    kind = int if present.str.fullmatch(_CSV_INT.pattern).all() else float
    return [None if c is None else kind(c) for c in head]


def _table_preview(folder: Path, rel: str, limit: int = 15) -> dict[str, Any] | None:
    """The first rows of a CSV table for the HTML page (values escaped by the template).

    Cells are read as text (only a blank cell is missing) and a column becomes numbers
    only when all its cells are numbers as pandas writes them: type inference would show
    the id ``000123`` as ``123`` and a level ``NA`` or ``None`` as missing."""
    import pandas as pd

    path = (folder / rel).resolve()
    if not rel.endswith(".csv") or folder.resolve() not in path.parents or not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype="string[pyarrow]", keep_default_na=False, na_values=[""])
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return None  # an empty or malformed table is left out of the page, not fatal
    columns = [_preview_column(frame.iloc[:, j], limit) for j in range(frame.shape[1])]
    shown = [fmt_p if is_p_column(str(c)) else fmt for c in frame.columns]
    rows = [[f(v) for f, v in zip(shown, row, strict=True)] for row in zip(*columns, strict=True)]
    return {
        "name": Path(rel).stem,
        "n": len(frame),
        "header": [str(c) for c in frame.columns],
        "rows": rows,
    }
