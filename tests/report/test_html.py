"""index.html as people read it: the verdict and the findings that decide it first (with a
thumbnail of the figure that shows each), each check's key figures before its findings and
its numbers folded, links that land, the one script the CSP allows, the baseline comparison
of ``mmaudit run --baseline``, and figures saved at the size the page shows them."""

from __future__ import annotations

import base64
import hashlib
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmaudit.checks.contract import Finding
from mmaudit.engine.errors import ReportError
from mmaudit.report.anchors import check_anchor, figure_anchor, finding_anchor, metric_anchor
from mmaudit.report.document import (
    BaselineComparison,
    CheckReport,
    Report,
    load_report,
    select_key_figures,
)
from mmaudit.report.html import THUMB_PX, page_script, render_html


def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (600, 300)) -> str:
    """A one-colour PNG (its colour tells which figure a thumbnail was made from)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path.name


COLOURS = {"a_hist": (200, 0, 0), "b_overlay": (0, 150, 0), "c_map": (0, 0, 200)}


def _report(folder: Path, **check: Any) -> Report:
    """A report with one failing check ``sal`` (three figures, a metric, two findings) and a
    passing check ``perf``; ``check`` overrides fields of ``sal``."""
    figures = {}
    for name, colour in COLOURS.items():
        _png(folder / "figures" / "sal" / f"{name}.png", colour)
        figures[name] = f"figures/sal/{name}.png"
    findings = [
        Finding(
            check="sal", rule="hotspot", severity="fail", metric="flip.excess",
            message="the corner box changes decisions", evidence="flip excess 0.16 [0.1, 0.2]",
            next_step="crop the marker and retrain", detail="flip_excess above 0.05",
        ),
        Finding(check="sal", rule="cluster", severity="note", message="a quiet note"),
    ]  # fmt: skip
    fields: dict[str, Any] = {
        "name": "sal",
        "status": "fail",
        "metrics": {"flip.excess": {"value": 0.16, "ci_low": 0.1, "ci_high": 0.2}},
        "findings": findings,
        "figures": figures,
        "notes": ["a long note"],
        "params": {"n_boot": 100},
        "judged": 3,
        "key_figures": ["b_overlay", "c_map"],
    } | check
    checks = {
        "sal": CheckReport(**fields),
        "perf": CheckReport(
            name="perf", status="pass", judged=2, metrics={"auroc": 0.9}, rows_used=5
        ),
    }
    return Report(
        tool_version="t", created="c", config={}, config_path="", model={"source": "m"},
        data={"n": 5, "manifest": "x.csv"}, environment={}, seed=0, checks=checks,
        status="fail",
    )  # fmt: skip


def _section(html: str, check: str) -> str:
    start = html.index(f'<section id="{check_anchor(check)}"')
    return html[start : html.index("</section>", start)]


def _thumb_colours(html: str) -> list[tuple[int, int, int]]:
    """The colour and width of every thumbnail at the top of the page."""
    from PIL import Image

    out = []
    for data in re.findall(r'class="thumb"[^>]*src="data:image/png;base64,([^"]+)"', html):
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.width <= THUMB_PX
            out.append(image.convert("RGB").getpixel((5, 5)))
    return out


def test_sections_lead_with_key_figures_then_findings_then_folded_numbers(
    tmp_path: Path,
) -> None:
    html = render_html(tmp_path, _report(tmp_path))
    sal = _section(html, "sal")
    pos = {
        "summary": sal.index('class="summary"'),
        "b": sal.index(f'id="{figure_anchor("sal", "b_overlay")}"'),
        "c": sal.index(f'id="{figure_anchor("sal", "c_map")}"'),
        "finding": sal.index('<ul class="findings">'),
        "first details": sal.index("<details"),
        "a": sal.index(f'id="{figure_anchor("sal", "a_hist")}"'),
        "metrics": sal.index('<details class="metrics">'),
        "table": sal.index("<table"),
    }
    assert pos["summary"] < pos["b"] < pos["c"] < pos["finding"] < pos["first details"]
    assert pos["first details"] < pos["a"]  # the other figure is folded, after the findings
    assert pos["first details"] < pos["table"] and pos["metrics"] < pos["table"]
    # every table and note of a section sits inside a <details>
    unfolded = re.sub(r"<details.*?</details>", "", sal, flags=re.S)
    assert "<table" not in unfolded and "a long note" not in unfolded
    # the summary sentence is the worst finding, not the note
    assert re.search(r'class="summary">the corner box changes decisions', sal)


def test_an_old_report_without_key_figures_leads_with_its_first_figure(tmp_path: Path) -> None:
    sal = _section(render_html(tmp_path, _report(tmp_path, key_figures=[])), "sal")
    first = sal.index("<figure")
    assert sal[first:].startswith(f'<figure id="{figure_anchor("sal", "a_hist")}"')
    assert first < sal.index('<ul class="findings">')


def test_findings_show_message_evidence_next_step_and_code_tag(tmp_path: Path) -> None:
    sal = _section(render_html(tmp_path, _report(tmp_path)), "sal")
    found = sal.split(f'id="{finding_anchor(_report(tmp_path).checks["sal"].findings[0])}"')[1]
    found = found.split("</li>")[0]
    assert '<div class="evidence">flip excess 0.16 [0.1, 0.2]</div>' in found
    assert "<b>Next step:</b> crop the marker and retrain" in found
    assert "sal.hotspot · flip.excess</code>" in found
    assert f'href="#{metric_anchor("sal", "flip.excess")}"' in found  # the tag links the row
    assert 'title="flip_excess above 0.05"' in found
    # a finding without evidence or next step (an older report) renders neither
    note = sal.split("a quiet note")[1].split("</li>")[0]
    assert "evidence" not in note and "Next step" not in note
    # `backticks` become code; everything else stays text
    report = _report(tmp_path)
    report.checks["sal"].findings[0].next_step = "run `mmaudit diff` <b>now</b>"
    html = render_html(tmp_path, report)
    assert "run <code>mmaudit diff</code> &lt;b&gt;now&lt;/b&gt;" in html and "<b>now" not in html


def test_top_of_page_shows_the_deciding_findings_with_their_figure(tmp_path: Path) -> None:
    report = _report(tmp_path)
    html = render_html(tmp_path, report)
    top = html.split("<h2>All checks</h2>")[0]
    assert "What decides the verdict" in top
    assert "the corner box changes decisions" in top and "a quiet note" not in top
    assert f'href="#{finding_anchor(report.checks["sal"].findings[0])}"' in top
    assert "crop the marker and retrain" in top
    assert _thumb_colours(top) == [COLOURS["b_overlay"]]  # no figure named: first key figure
    assert 'id="' + check_anchor("perf") + '"' not in top  # a passing check does not decide
    # a finding that names its figure gets that figure's thumbnail
    report.checks["sal"].findings[0].figure = "a_hist"
    assert _thumb_colours(render_html(tmp_path, report))[:1] == [COLOURS["a_hist"]]
    # clean counterpart: nothing warns or fails, nothing is listed
    report.checks["sal"].status = "pass"
    report.checks["sal"].findings = []
    html = render_html(tmp_path, report)
    assert "No check warns, fails or crashed." in html and _thumb_colours(html) == []


def test_a_withheld_figure_never_becomes_a_thumbnail(tmp_path: Path) -> None:
    """Under --redact the overlays of patient images are left out of ``figures``; a finding
    naming one (and a key figure recorded before it was withheld) falls back to a figure the
    report does list, or to none."""
    report = _report(tmp_path)
    sal = report.checks["sal"]
    sal.findings[0].figure = "b_overlay"
    del sal.figures["b_overlay"]  # withheld: its file is not the report's
    assert _thumb_colours(render_html(tmp_path, report)) == [COLOURS["c_map"]]
    sal.figures = {}
    html = render_html(tmp_path, report)
    assert _thumb_colours(html) == [] and "data:image/png" not in html


def test_key_figures_are_picked_in_pattern_order_from_the_figures_drawn() -> None:
    names = ["mean_maps", "overlays_b", "overlays_a", "histograms"]
    assert select_key_figures(("overlays_*", "mean_maps"), names) == [
        "overlays_b",
        "overlays_a",
        "mean_maps",
    ]
    assert select_key_figures(("overlays_*",), ["mean_maps"]) == []  # withheld: none
    assert select_key_figures((), names) == []


def test_every_link_lands_on_one_element(tmp_path: Path) -> None:
    report = _report(tmp_path)
    # the same rule and metric twice: the second finding gets its own id
    report.checks["sal"].findings.append(report.checks["sal"].findings[0].model_copy())
    report.baseline = BaselineComparison(folder="/old", regressions=["sal.flip: 0.1 -> 0.2"])
    report.checks_not_run = {"attention": "not requested (--checks)"}
    html = render_html(tmp_path, report)
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    links = set(re.findall(r'href="#([^"]*)"', html))
    assert links and links <= set(ids), links - set(ids)
    for anchor in (check_anchor("perf"), metric_anchor("sal", "flip.excess"), "baseline"):
        assert anchor in links
    assert metric_anchor("perf", "auroc") in ids and figure_anchor("sal", "a_hist") in ids


def test_the_one_script_is_the_package_script_allowed_by_its_hash(tmp_path: Path) -> None:
    html = render_html(tmp_path, _report(tmp_path))
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert scripts == [page_script()] and html.lower().count("<script") == 1
    digest = base64.b64encode(hashlib.sha256(page_script().encode()).digest()).decode()
    csp = re.search(r'Content-Security-Policy"\s+content="([^"]+)"', html)
    assert csp is not None
    assert f"script-src 'sha256-{digest}'" in csp.group(1)
    assert "unsafe-inline" not in csp.group(1).split("script-src")[1]
    assert "@media print" in html


def test_baseline_section_says_what_changed_or_why_it_could_not(tmp_path: Path) -> None:
    report = _report(tmp_path)
    assert 'id="baseline"' not in render_html(tmp_path, report)
    report.baseline = BaselineComparison(
        folder="/reports/before",
        regressions=["sal.flip.excess: 0.05 -> 0.16 (paired bootstrap, lower is better)"],
        status_changes=["sal: pass -> fail"],
        moved=["sal.flip.excess: 0.05 -> 0.16 (regression)"],
        n_moved=12,
        representation=["Prediction churn: 3.0% of 5 shared samples"],
    )
    part = render_html(tmp_path, report).split('id="baseline"')[1].split("</section>")[0]
    assert "/reports/before" in part and "<strong>1 regression(s)</strong>" in part
    assert "sal: pass -&gt; fail" in part and "Significant moves (first 1 of 12)" in part
    assert "Prediction churn: 3.0% of 5 shared samples" in part
    report.baseline = BaselineComparison(
        folder="/reports/before", comparable=False, error="not comparable: other data"
    )
    part = render_html(tmp_path, report).split('id="baseline"')[1].split("</section>")[0]
    assert "Not compared: not comparable: other data" in part and "regression" not in part


def _gated(tmp_path: Path, n_warn: int) -> Report:
    report = _report(tmp_path / "drawn")  # a report without figures
    report.checks["sal"].figures = {}
    report.checks["sal"].findings = [
        Finding(check="sal", rule="r", severity="warn", message=f"w{k}", metric=f"m{k}")
        for k in range(n_warn)
    ]
    report.checks["sal"].status = "warn" if n_warn else "pass"
    return report


def test_writer_compares_with_the_baseline_inside_the_sealed_folder(tmp_path: Path) -> None:
    from mmaudit.report.diff import diff_reports
    from mmaudit.report.writer import ReportWriter

    base = ReportWriter(tmp_path / "base").finish(_gated(tmp_path, 0), "{}\n")
    new = ReportWriter(tmp_path / "new", baseline=base).finish(_gated(tmp_path, 1), "{}\n")
    report = load_report(new)  # sealed with diff.json, diff.md and the new index.html
    assert report.baseline is not None and report.baseline.error is None
    assert report.baseline.folder == str(base)
    assert report.baseline.new_findings == ["warn sal: w0"]
    assert report.baseline.status_changes == ["sal: pass -> warn"]
    assert report.baseline.regressions
    assert {"diff.json", "diff.md", "index.html"} <= set(report.integrity["files"])  # type: ignore[index]
    assert str(new) in (new / "diff.md").read_text()  # names where the report lives
    assert "Since the baseline" in (new / "index.html").read_text()
    # what it stored is what `mmaudit diff` says
    assert diff_reports(base, new).regressions == report.baseline.regressions
    # clean counterpart: the same report again has nothing new
    same = ReportWriter(tmp_path / "same", baseline=base).finish(_gated(tmp_path, 0), "{}\n")
    again = load_report(same).baseline
    assert again is not None and again.regressions == [] and again.new_findings == []
    # another config: the audit stands, the page and report.json say why nothing compared
    other = _gated(tmp_path, 1)
    other.seed = 1
    moved = ReportWriter(tmp_path / "other", baseline=base).finish(other, "{}\n")
    said = load_report(moved).baseline
    assert said is not None and not said.comparable and said.regressions == []
    assert said.error is not None and "not comparable" in said.error
    assert ".partial" not in said.error and str(moved) in said.error  # where it lives
    assert not (moved / "diff.json").exists()
    assert "Not compared: not comparable" in (moved / "index.html").read_text()


def test_bad_baseline_is_one_line_before_any_model_work(tmp_path: Path) -> None:
    from mmaudit.report.views import check_baseline

    with pytest.raises(ReportError, match="report folder not found"):
        check_baseline(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "notes").mkdir()
    with pytest.raises(ReportError, match="is not an mmaudit report"):
        check_baseline(tmp_path / "notes", tmp_path / "out")
    from mmaudit.report.writer import ReportWriter

    base = ReportWriter(tmp_path / "base").finish(_gated(tmp_path, 0), "{}\n")
    with pytest.raises(ReportError, match="is the output folder -o"):
        check_baseline(base, base)
    check_baseline(base, tmp_path / "out")  # a report folder elsewhere is fine


def test_cli_run_refuses_a_bad_baseline_with_exit_2(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from mmaudit.cli import main

    root = Path(__file__).resolve().parents[2]
    with pytest.raises(SystemExit) as exc:
        main(["run", str(root / "configs" / "sample.yaml"), "-o", str(tmp_path / "r"),
              "--baseline", str(tmp_path / "nope")])  # fmt: skip
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "report folder not found" in err[0], err
    assert not (tmp_path / "r").exists()  # stopped before the output was touched


def test_figures_are_saved_as_palette_png_no_wider_than_shown(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from mmaudit.report.writer import FIGURE_MAX_PX, save_figure

    fig, ax = plt.subplots(figsize=(20, 4))
    ax.imshow(np.random.default_rng(0).random((40, 200)), cmap="viridis")
    ax.set_title("a wide figure")
    save_figure(fig, tmp_path / "wide.png")
    full = io.BytesIO()
    fig.savefig(full, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    with Image.open(tmp_path / "wide.png") as image:
        assert image.mode == "P" and image.width <= FIGURE_MAX_PX + 20  # tight bbox margin
    assert (tmp_path / "wide.png").stat().st_size < full.tell() / 2
    # a small figure keeps its size at 100 dpi, and its few colours exactly
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar([0, 1], [1, 2], color=["#c0262d", "#17803d"])
    save_figure(fig, tmp_path / "bars.png")
    plt.close(fig)
    with Image.open(tmp_path / "bars.png") as image:
        assert 300 <= image.width <= 420
        colours = {c for _, c in image.convert("RGB").getcolors(1 << 16) or []}
    assert {(192, 38, 45), (23, 128, 61)} <= colours


def test_a_redacted_run_keeps_the_baselines_ids_out_of_the_comparison(tmp_path: Path) -> None:
    """The baseline may be an unredacted report: under --redact the messages the comparison
    quotes from it are redacted like the new report's own."""
    from mmaudit.report.writer import Redactor, ReportWriter

    plain = _gated(tmp_path, 1)
    plain.checks["sal"].findings[0].message = "row study0042 is off"
    base = ReportWriter(tmp_path / "base").finish(plain, "{}\n")
    writer = ReportWriter(
        tmp_path / "new", redactor=Redactor(["study0042"], [], salt="s"), baseline=base
    )
    new = writer.finish(_gated(tmp_path, 0), "{}\n")
    said = load_report(new).baseline
    assert said is not None and len(said.resolved_findings) == 1
    for text in (said.resolved_findings[0], (new / "diff.md").read_text(),
                 (new / "diff.json").read_text(), (new / "index.html").read_text()):  # fmt: skip
        assert "study0042" not in text
    # clean counterpart: without --redact the message is quoted as it was
    same = ReportWriter(tmp_path / "same", baseline=base).finish(_gated(tmp_path, 0), "{}\n")
    assert "study0042" in (same / "diff.md").read_text()


def test_provenance_shows_an_encoder_reuse_note_only_when_there_is_one(tmp_path: Path) -> None:
    plain = render_html(tmp_path, _report(tmp_path))
    assert "encoder reuse" not in plain
    report = _report(tmp_path)
    note = "model.layers.image = image_proj: image_encoder still reads the image"
    report.model["encoder_reuse_notes"] = [note]
    provenance = render_html(tmp_path, report).split('id="provenance"', 1)[1]
    assert "<th>encoder reuse</th>" in provenance and note in provenance
