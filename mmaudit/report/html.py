"""Views of a report: self-contained HTML, a short Markdown summary, JUnit XML.

Everything here is derived from the ``Report`` (and the figure files inside the
report folder); every string from data or config is escaped (jinja2 autoescape,
xml.sax.saxutils for JUnit).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from mmaudit.checks.contract import Finding
from mmaudit.checks.findings import SEVERITY_ORDER
from mmaudit.report.writer import FAILING_STATUSES, CheckReport, Report

STATUS_ICON = {"pass": "✅", "warn": "⚠️", "fail": "❌", "error": "💥", "skipped": "⏭️"}
# check statuses whose reason says what happened (the others are judged by findings)
NO_RESULT = ("error", "skipped")
# findings listed in summary.md before "… and K more"
SUMMARY_FINDINGS = 10
# p-values below this are shown as "< 0.001": a permutation test with B shuffles resolves
# p only down to 1 / (B + 1), and smaller values (normal-tail extrapolations) stay in
# report.json
P_FLOOR = 0.001
# how a check that did not run is shown (its reason: report.checks_not_run)
NOT_RUN = "not run"

# (term, words that bring it into summary.md, one-line meaning): the jargon the views use;
# index.html lists them all
GLOSSARY: list[tuple[str, tuple[str, ...], str]] = [
    (
        "AUROC / AUPRC",
        ("auroc", "auprc"),
        "area under the ROC / precision-recall curve; 0.5 AUROC is chance.",
    ),
    (
        "ECE",
        ("ece",),
        "expected calibration error: mean |predicted probability - observed rate| over"
        " probability bins, weighted by bin size; 0 is perfectly calibrated.",
    ),
    (
        "EOD",
        ("eod",),
        "equalised-odds difference: the larger of the TPR gap and the FPR gap between the"
        " best and worst group at one global threshold.",
    ),
    (
        "loo / koi",
        ("loo", "koi"),
        "leave-one-out (that modality removed, the others kept) / keep-one-in (that"
        " modality alone, the others removed); removed means shuffled across patients by"
        " default (ablation's removal parameter).",
    ),
    (
        "EMAP",
        ("emap",),
        "empirical multimodally-additive projection (Hessel & Lee 2020): the best model"
        " with no cross-modal interaction; emap.gap = full model minus EMAP, 0 means no"
        " interaction is used.",
    ),
    (
        "MM-SHAP",
        ("mm-shap", "mmshap"),
        "per-sample Shapley shares of the logit across modalities (Parcalabescu & Frank"
        " 2023): how much each modality moves each prediction, right or wrong.",
    ),
    (
        "Shapley share",
        ("share", "shares", "shapley"),
        "a modality's Shapley value as a share of the total: averaged over every order of"
        " adding modalities, what adding it changes.",
    ),
    (
        "IG",
        ("ig",),
        "Integrated Gradients: gradients summed along a path from a baseline input to the"
        " real one; attributions add up to the logit change.",
    ),
    (
        "Grad-CAM / HiResCAM / LayerCAM",
        ("gradcam", "hirescam", "layercam"),
        "class activation maps from a convolutional layer: channels weighted by their mean"
        " gradient (Grad-CAM), gradient x activation per location (HiResCAM), positive"
        " gradients per location (LayerCAM, finer maps).",
    ),
    (
        "SpRAy",
        ("spray",),
        "spectral relevance analysis (Lapuschkin et al. 2019): saliency maps clustered to"
        " find groups of cases explained by the same pattern, such as a marker.",
    ),
    (
        "off-ROI / hotspot",
        ("roi", "offroi", "hotspot"),
        "attribution outside the region of interest (lung mask) against its area share;"
        " a hotspot is a box off the ROI whose in-painting is tested for changed decisions.",
    ),
    (
        "probe",
        ("probe",),
        "a linear model trained on a layer's output to predict an attribute (cross-"
        "validated); decodable means encoded, not necessarily used. For a binary /"
        " multiclass target the judged score is within target classes (beyond what the label"
        " explains); probe_auroc_marginal is the plain score.",
    ),
    (
        "LEACE",
        ("leace", "erasure"),
        "least-squares concept erasure (Belrose et al. 2023): the smallest linear change"
        " that makes an attribute linearly undecodable; if the predictions then move more"
        " than for a random subspace, the model uses it.",
    ),
    (
        "kNN lift",
        ("knn",),
        "how often a row's nearest neighbours (other patients) share its label or"
        " attribute, divided by chance agreement (the sum of squared level shares); 1 is"
        " chance.",
    ),
    (
        "identity margin",
        ("identity",),
        "chance-corrected neighbour agreement on a nuisance attribute (site) minus that on"
        " the label: above 0, the space is organised by site more than by disease.",
    ),
    (
        "CKA",
        ("cka",),
        "centred kernel alignment (linear): similarity of two representations of the same"
        " samples, 1 = identical up to rotation and scale (mmaudit diff).",
    ),
    (
        "p / CI",
        (),
        "p: permutation p-value, corrected for multiple tests (Holm) where a family is"
        " tested; shown as < 0.001 below that; CI: 95% bootstrap interval, resampled by"
        " patient.",
    ),
]

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
dt{font-weight:600}dd{margin:0 0 .4em 1.5em}
</style></head><body>
<h1>mmaudit report: <span class="{{ report.status }}">{{ report.status }}</span></h1>
<p>Model <code>{{ report.model.source }}</code> on {{ report.data.n }} samples of
<code>{{ report.data.manifest }}</code>.</p>
{% if narrowed %}<p id="narrowed" class="warn"><strong>{{ narrowed }}</strong></p>{% endif %}
<table id="summary"><tr><th>check</th><th>status</th><th>tested</th><th>worst finding</th>
<th>key metrics</th></tr>
{% for c in checks %}<tr><td><a href="#check-{{ c.name }}">{{ c.name }}</a></td>
<td class="{{ c.status }}">{{ c.status }}</td><td>{{ c.tested }}</td><td>{{ c.worst }}</td>
<td>{{ c.key }}</td></tr>
{% endfor %}{% for name, why in not_run %}<tr class="not-run"><td>{{ name }}</td>
<td class="skipped">not run</td><td></td><td>{{ why }}</td><td></td></tr>
{% endfor %}</table>
{% if report.cross_checks %}<section id="across-checks"><h2>Across checks</h2><ul>
{% for cc in report.cross_checks %}<li>{{ cc.message }}</li>{% endfor %}</ul></section>{% endif %}
{% for c in checks %}<section id="check-{{ c.name }}"><h2>{{ c.name }}:
<span class="{{ c.status }}">{{ c.status }}</span></h2>
{% if c.reason %}<p>{{ c.reason }}</p>{% endif %}
{% if c.tested %}<p class="tested">Tested: {{ c.tested }}</p>{% endif %}
{% if c.coverage %}<ul class="coverage">{% for n in c.coverage %}<li class="warn">coverage:
{{ n }}</li>{% endfor %}</ul>{% endif %}
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
<section id="glossary"><h2>Terms</h2><dl>
{% for term, meaning in glossary %}<dt>{{ term }}</dt><dd>{{ meaning }}</dd>{% endfor %}
</dl></section>
<h2>Provenance</h2><table>
{% for k, v in provenance %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}
</table></body></html>
"""


def fmt(value: Any) -> str:
    """A short human form of a number; a missing one (None, NaN) is a dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


def fmt_p(value: Any) -> str:
    """A p-value as shown to readers: three decimals, ``< 0.001`` below that.

    Why: a permutation p is resolved only to 1 / (B + 1); checks extrapolate smaller ones
    (a normal tail) so that Holm over many tests can reach alpha, and those digits are not
    evidence (report.json keeps them)."""
    if isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value < P_FLOOR:
        return f"< {P_FLOOR:g}"
    return fmt(value)


def is_p_column(name: str) -> bool:
    """Whether a table column or metric field holds p-values (``p``, ``p_adj``,
    ``loo_drop_p_adj``, ``null_p``, ``excess_p_holm`` ...)."""
    return "p" in re.split(r"[_.\s]", name.lower())


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
                    "p": fmt_p(m.get("null_p")) if m.get("null_p") is not None else "",
                }
            )
        else:
            rows.append({"name": name, "value": fmt(m), "ci": "", "n": "", "p": ""})
    return rows


def key_metrics(metrics: dict[str, Any], findings: Sequence[Finding] = (), limit: int = 3) -> str:
    """A few metrics as one line: first those the check's warn / fail / error findings
    judged (worst first), so the metric behind the verdict is in view, then the first
    metrics with CIs."""
    judged = sorted(
        (f for f in findings if f.severity in ("warn", "fail", "error") and f.metric),
        key=lambda f: -SEVERITY_ORDER.get(f.severity, 0),
    )
    rows = {row["name"]: row for row in metric_rows(metrics)}
    names = [f.metric for f in judged if f.metric in rows]
    names += [name for name, row in rows.items() if row["ci"]]
    parts = []
    for name in dict.fromkeys(names):
        row = rows[name]
        parts.append(" ".join(x for x in (name, row["value"], row["ci"]) if x))
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
    return env.from_string(HTML_TEMPLATE).render(
        report=report,
        checks=checks,
        provenance=provenance,
        narrowed=narrowed_line(report),
        not_run=sorted(report.checks_not_run.items()),
        glossary=[(term, meaning) for term, _, meaning in GLOSSARY],
    )


def judged_cell(check: CheckReport) -> str:
    """What a check's verdict rests on, in a few words: "12 tests on 40/48 rows", "none";
    '' when the check did not say (or crashed)."""
    if check.judged is None:
        return ""
    if check.judged == 0:
        return "none"
    text = f"{check.judged} test{'s' if check.judged != 1 else ''}"
    if check.rows_used is not None and check.rows_total is not None:
        text += f" on {check.rows_used}/{check.rows_total} rows"
    return text


def summary_cell(check: CheckReport) -> str:
    """The summary tables' last cell: the reason of a check that has no result (skipped,
    crashed), else its key metrics (the reason when it has none)."""
    key = key_metrics(check.metrics, check.findings)
    if check.status in NO_RESULT:
        return check.reason or key
    return key or check.reason or ""


def narrowed_line(report: Report) -> str:
    """One sentence saying that registered checks did not run ('' when all ran)."""
    if not report.checks_not_run:
        return ""
    total = len(report.checks) + len(report.checks_not_run)
    how = f" (--checks {','.join(report.checks_requested)})" if report.checks_requested else ""
    return (
        f"Partial audit: {len(report.checks)} of {total} checks ran{how};"
        f" not run: {', '.join(sorted(report.checks_not_run))}. Their absence from this"
        " report is not a pass."
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


def render_junit(report: Report) -> str:
    """One testcase per check and per finding. What fails follows the run's ``--fail-on``
    level (``report.fail_on``, recorded as a testsuite property), so CI reads the same
    verdict as the exit code: at 'fail' (the default) fail checks and findings are failures
    and errored ones errors; at 'warn' warnings are failures too; at 'never' nothing fails.
    A verdict that does not fail the gate is kept as the testcase's system-out. With
    ``report.fail_on_skipped`` a skipped check (planned, but it tested nothing) is a failure
    too; checks not run (``--checks``, ``enabled: false``) stay skipped: they were not
    planned."""
    failing = FAILING_STATUSES[report.fail_on]
    counts = {"failure": 0, "error": 0, "skipped": 0}

    def body(status: str, message: str) -> str:
        if status == "skipped" and report.fail_on_skipped:
            counts["failure"] += 1
            text = f"skipped (fails --fail-on-skipped): {message}"
            return f"<failure message={quoteattr(text)}/>"
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
    for name, why in sorted(report.checks_not_run.items()):
        counts["skipped"] += 1
        cases.append(
            f'<testcase classname="mmaudit" name={quoteattr(name)} time="0.000">'
            f"<skipped message={quoteattr(f'{NOT_RUN}: {why}')}/></testcase>"
        )
    properties = {
        "fail_on": report.fail_on,
        "fail_on_skipped": str(report.fail_on_skipped).lower(),
        "status": report.status,
        "mmaudit": report.tool_version,
        "checks_requested": ",".join(report.checks_requested or []) or "all not disabled",
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
