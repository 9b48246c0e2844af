"""Views of a report: self-contained HTML, a short Markdown summary, JUnit XML.

Everything here is derived from the ``Report`` (and the figure files inside the
report folder); every string from data or config is escaped (jinja2 autoescape,
xml.sax.saxutils for JUnit).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from mmaudit.report import FAILING_STATUSES, Report

STATUS_ICON = {"pass": "✅", "warn": "⚠️", "fail": "❌", "error": "💥", "skipped": "⏭️"}
# check statuses whose reason says what happened (the others are judged by findings)
NO_RESULT = ("error", "skipped")
# findings listed in summary.md before "… and K more"
SUMMARY_FINDINGS = 10

HTML_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>mmaudit report</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
.pass{color:#17803d}.warn{color:#b26b00}.fail{color:#c0262d}.error{color:#7a1fa2}.skipped{color:#777}
img{max-width:100%;border:1px solid #eee}code{background:#f4f4f4;padding:1px 4px}
</style></head><body>
<h1>mmaudit report: <span class="{{ report.status }}">{{ report.status }}</span></h1>
<p>Model <code>{{ report.model.source }}</code> on {{ report.data.n }} samples of
<code>{{ report.data.manifest }}</code>.</p>
<table id="summary"><tr><th>check</th><th>status</th><th>worst finding</th><th>key metrics</th></tr>
{% for c in checks %}<tr><td><a href="#check-{{ c.name }}">{{ c.name }}</a></td>
<td class="{{ c.status }}">{{ c.status }}</td><td>{{ c.worst }}</td><td>{{ c.key }}</td></tr>
{% endfor %}</table>
{% if report.cross_checks %}<section id="across-checks"><h2>Across checks</h2><ul>
{% for cc in report.cross_checks %}<li>{{ cc.message }}</li>{% endfor %}</ul></section>{% endif %}
{% for c in checks %}<section id="check-{{ c.name }}"><h2>{{ c.name }}:
<span class="{{ c.status }}">{{ c.status }}</span></h2>
{% if c.reason %}<p>{{ c.reason }}</p>{% endif %}
{% if c.findings %}<ul>{% for f in c.findings %}<li class="{{ f.severity }}">{{ f.severity }}:
{{ f.message }}</li>{% endfor %}</ul>{% endif %}
{% for n in c.notes %}<p><em>{{ n }}</em></p>{% endfor %}
{% if c.metrics %}<table><tr><th>metric</th><th>value</th><th>95% CI</th><th>n</th><th>p</th></tr>
{% for m in c.metrics %}<tr><td>{{ m.name }}</td><td>{{ m.value }}</td><td>{{ m.ci }}</td>
<td>{{ m.n }}</td><td>{{ m.p }}</td></tr>{% endfor %}</table>{% endif %}
{% for t in c.tables %}<details><summary>table {{ t.name }} ({{ t.n }} rows)</summary>
<table><tr>{% for h in t.header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in t.rows %}<tr>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}
</table></details>{% endfor %}
{% for f in c.figures %}<figure><img alt="{{ f.name }}" src="data:image/png;base64,{{ f.data }}">
<figcaption>{{ f.name }}</figcaption></figure>{% endfor %}
</section>{% endfor %}
<h2>Provenance</h2><table>
{% for k, v in provenance %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}
</table></body></html>
"""


def fmt(value: Any) -> str:
    """A short human form of a number."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


def metric_rows(metrics: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for name, m in metrics.items():
        if isinstance(m, dict):
            lo, hi = m.get("ci_low"), m.get("ci_high")
            ci = f"[{fmt(lo)}, {fmt(hi)}]" if lo is not None else ""
            rows.append(
                {
                    "name": name,
                    "value": fmt(m.get("value")),
                    "ci": ci,
                    "n": fmt(m.get("n")) if m.get("n") else "",
                    "p": fmt(m.get("null_p")) if m.get("null_p") is not None else "",
                }
            )
        else:
            rows.append({"name": name, "value": fmt(m), "ci": "", "n": "", "p": ""})
    return rows


def key_metrics(metrics: dict[str, Any], limit: int = 3) -> str:
    """The first few metrics with CIs, as one line."""
    parts = []
    for row in metric_rows(metrics):
        if row["ci"]:
            parts.append(f"{row['name']} {row['value']} {row['ci']}")
        if len(parts) == limit:
            break
    return "; ".join(parts)


def _figure_data(folder: Path, rel: str) -> str | None:
    path = (folder / rel).resolve()
    if folder.resolve() not in path.parents or not path.is_file():
        return None
    return base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(folder: Path, report: Report) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True)
    checks = []
    for c in report.checks.values():
        figures = [
            {"name": name, "data": data}
            for name, rel in c.figures.items()
            if (data := _figure_data(folder, rel)) is not None
        ]
        worst = c.findings[0].message if c.findings else ""
        from mmaudit.findings import SEVERITY_ORDER

        if c.findings:
            worst = max(c.findings, key=lambda f: SEVERITY_ORDER.get(f.severity, 0)).message
        checks.append(
            {
                "name": c.name,
                "status": c.status,
                "reason": c.reason,
                "findings": c.findings,
                "notes": c.notes,
                "metrics": metric_rows(c.metrics),
                "key": key_metrics(c.metrics),
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
    return env.from_string(HTML_TEMPLATE).render(
        report=report, checks=checks, provenance=provenance
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


def _table_preview(folder: Path, rel: str, limit: int = 15) -> dict[str, Any] | None:
    """The first rows of a CSV table for the HTML page (values escaped by the template)."""
    import pandas as pd

    path = (folder / rel).resolve()
    if not rel.endswith(".csv") or folder.resolve() not in path.parents or not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return None  # an empty or malformed table is left out of the page, not fatal
    rows = [[fmt(v) for v in row] for row in frame.head(limit).itertuples(index=False)]
    return {
        "name": Path(rel).stem,
        "n": len(frame),
        "header": [str(c) for c in frame.columns],
        "rows": rows,
    }


def render_markdown(report: Report) -> str:
    """A short summary fit for a pull-request comment."""
    lines = [f"## mmaudit: {STATUS_ICON.get(report.status, '')} {report.status}", ""]
    lines += ["| check | status | key metrics |", "|---|---|---|"]
    for c in report.checks.values():
        key = key_metrics(c.metrics) or (c.reason or "")
        icon = STATUS_ICON.get(c.status, "")
        lines.append(f"| {c.name} | {icon} {c.status} | {markdown_cell(key)} |")
    worst = [f for f in report.worst_findings(None) if f.severity in ("fail", "warn", "error")]
    if worst:
        lines += ["", "**Findings**", ""]
        lines += [
            f"- {f.severity} `{f.check}`: {markdown_cell(f.message)}"
            for f in worst[:SUMMARY_FINDINGS]
        ]
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
    lines += [
        "",
        f"_model `{markdown_cell(str(report.model.get('source')))}`,"
        f" {report.data.get('n')} samples,"
        f" seed {report.seed}_",
        "",
    ]
    return "\n".join(lines)


def markdown_cell(text: str) -> str:
    """Text safe inside a Markdown table cell or list item: no pipes, tags, newlines, or
    links and images (``[x](url)`` / ``![](url)`` from data stay literal text)."""
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def render_junit(report: Report) -> str:
    """One testcase per check and per finding. What fails follows the run's ``--fail-on``
    level (``report.fail_on``, recorded as a testsuite property), so CI reads the same
    verdict as the exit code: at 'fail' (the default) fail checks and findings are failures
    and errored ones errors; at 'warn' warnings are failures too; at 'never' nothing fails.
    A verdict that does not fail the gate is kept as the testcase's system-out."""
    failing = FAILING_STATUSES[report.fail_on]
    counts = {"failure": 0, "error": 0, "skipped": 0}

    def body(status: str, message: str) -> str:
        if status == "skipped":
            counts["skipped"] += 1
            return f"<skipped message={quoteattr(message)}/>"
        if status in failing:
            tag = "error" if status == "error" else "failure"
            counts[tag] += 1
            return f"<{tag} message={quoteattr(message)}/>"
        if status in ("warn", "fail", "error"):
            return f"<system-out>{_xml_text(f'{status}: {message}')}</system-out>"
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
            fbody = body(f.severity, f.message) if f.severity != "skipped" else ""
            name = quoteattr(f"{c.name}.{f.rule}.{f.metric or k}")
            cases.append(f'<testcase classname="mmaudit.{c.name}" name={name}>{fbody}</testcase>')
    properties = {
        "fail_on": report.fail_on,
        "status": report.status,
        "mmaudit": report.tool_version,
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


def _xml_text(text: str) -> str:
    from xml.sax.saxutils import escape

    return escape(text)


def write_views(folder: Path, report: Report) -> None:
    """index.html, summary.md and junit.xml into ``folder``."""
    (folder / "index.html").write_text(render_html(folder, report), encoding="utf-8")
    (folder / "summary.md").write_text(render_markdown(report), encoding="utf-8")
    (folder / "junit.xml").write_text(render_junit(report), encoding="utf-8")
