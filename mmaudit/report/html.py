"""index.html: the self-contained HTML page of a report.

Derived from the ``Report`` and the figure and table files inside the report folder; every
string from data or config is escaped (jinja2 autoescape). The page's template is the
package file ``templates/report.html``.
"""

from __future__ import annotations

import base64
import functools
import re
from importlib import resources
from pathlib import Path
from typing import Any

from mmaudit.checks.findings import SEVERITY_ORDER
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
from mmaudit.report.document import Report
from mmaudit.report.glossary import GLOSSARY


@functools.cache
def html_template() -> str:
    """The jinja2 source of index.html, read once from the package's templates folder."""
    return (
        resources.files("mmaudit.report")
        .joinpath("templates/report.html")
        .read_text(encoding="utf-8")
    )


def _figure_data(folder: Path, rel: str) -> str | None:
    """A figure file as base64 for an inline ``data:`` image (the page stands alone); None
    when it is gone or lies outside the report folder."""
    path = (folder / rel).resolve()
    if folder.resolve() not in path.parents or not path.is_file():
        return None
    return base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(folder: Path, report: Report) -> str:
    """index.html of the report in ``folder``: a summary table, each check's verdict,
    findings, metrics, table previews and figures (inlined), the glossary, provenance."""
    import jinja2

    env = jinja2.Environment(autoescape=True)
    checks = []
    for c in report.checks.values():
        figures = [
            {"name": name, "data": data}
            for name, rel in c.figures.items()
            if (data := _figure_data(folder, rel)) is not None
        ]
        worst = ""
        if c.status in NO_RESULT and c.reason:
            worst = c.reason
        elif c.findings:
            worst = max(c.findings, key=lambda f: SEVERITY_ORDER.get(f.severity, 0)).message
        checks.append(
            {
                "name": c.name,
                "status": c.status,
                "reason": c.reason,
                "tested": judged_cell(c),
                "coverage": c.coverage,
                "findings": c.findings,
                "notes": c.notes,
                "metrics": metric_rows(c.metrics),
                "key": key_metrics(c.metrics, c.findings),
                "worst": worst,
                "figures": figures,
                "tables": [t for rel in c.tables.values() if (t := _table_preview(folder, rel))],
            }
        )
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
    return env.from_string(html_template()).render(
        report=report,
        checks=checks,
        provenance=provenance,
        narrowed=narrowed_line(report),
        not_run=sorted(report.checks_not_run.items()),
        glossary=[(term, meaning) for term, _, meaning in GLOSSARY],
    )


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
