"""scripts/compare_reports.py: the same audit twice is "identical"; any change of a metric,
a finding, a figure or a view's text (beyond timings and paths) is a difference, exit 1."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_reports.py"


@pytest.fixture(scope="module")
def compare_reports():
    spec = importlib.util.spec_from_file_location("compare_reports", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(folder: Path, seconds: float, auroc: float, created: str) -> Path:
    (folder / "figures" / "performance").mkdir(parents=True)
    (folder / "figures" / "performance" / "roc.png").write_bytes(b"\x89PNG fixed")
    report = {
        "created": created,
        "config_path": str(folder / "audit.yaml"),
        "timings": {"sweep": seconds / 2, "total": seconds, "model_calls": 3.0},
        "integrity": {"files": {"index.html": created}},
        "checks": {
            "performance": {
                "status": "pass",
                "seconds": seconds,
                "metrics": {"auroc": {"value": auroc, "ci_low": 0.7}},
                "findings": [],
            }
        },
    }
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "junit.xml").write_text(
        f'<testcase name="performance" time="{seconds:.3f}">auroc {auroc:.3f}</testcase>\n'
    )
    (folder / "summary.md").write_text(
        f"written to {folder} at {created}\n| performance | pass | {seconds:.1f} s |\n"
    )
    return folder


def test_two_runs_of_one_audit_are_identical(tmp_path: Path, compare_reports) -> None:
    a = _report(tmp_path / "a", 12.3456, 0.9, "2026-12-07T01:00:00+00:00")
    b = _report(tmp_path / "b", 7.5, 0.9, "2026-12-08T02:00:00+00:00")
    assert compare_reports.compare(a, b) == []
    assert compare_reports.main([str(a), str(b)]) == 0


@pytest.mark.parametrize("change", ["metric", "figure", "view", "model_calls", "missing_file"])
def test_any_other_change_is_a_difference(tmp_path: Path, compare_reports, change: str) -> None:
    a = _report(tmp_path / "a", 12.3456, 0.9, "2026-12-07T01:00:00+00:00")
    b = _report(tmp_path / "b", 12.3456, 0.9, "2026-12-07T01:00:00+00:00")
    if change == "metric":
        report = json.loads((b / "report.json").read_text())
        report["checks"]["performance"]["metrics"]["auroc"]["ci_low"] = 0.71
        (b / "report.json").write_text(json.dumps(report))
    elif change == "figure":
        (b / "figures" / "performance" / "roc.png").write_bytes(b"\x89PNG other")
    elif change == "view":
        (b / "junit.xml").write_text('<testcase name="performance" time="12.346">auroc 0.901')
    elif change == "model_calls":
        report = json.loads((b / "report.json").read_text())
        report["timings"]["model_calls"] = 4.0
        (b / "report.json").write_text(json.dumps(report))
    else:
        shutil.rmtree(b / "figures")
    found = compare_reports.compare(a, b)
    assert len(found) == 1, found
    assert compare_reports.main([str(a), str(b)]) == 1


def test_a_folder_without_report_is_refused(tmp_path: Path, compare_reports) -> None:
    with pytest.raises(SystemExit) as stop:
        compare_reports.main([str(tmp_path), str(tmp_path)])
    assert stop.value.code == 2


def test_a_duration_in_a_note_is_a_timing(tmp_path: Path, compare_reports) -> None:
    a = _report(tmp_path / "a", 12.3456, 0.9, "2026-12-07T01:00:00+00:00")
    b = _report(tmp_path / "b", 12.3456, 0.9, "2026-12-07T01:00:00+00:00")
    for folder, seconds in ((a, "0.02"), (b, "0.31")):
        report = json.loads((folder / "report.json").read_text())
        report["checks"]["performance"]["notes"] = [f"8 coalitions in {seconds} s (3 passes)"]
        (folder / "report.json").write_text(json.dumps(report))
    assert compare_reports.compare(a, b) == []
    report = json.loads((b / "report.json").read_text())
    report["checks"]["performance"]["notes"] = ["8 coalitions in 0.31 s (4 passes)"]
    (b / "report.json").write_text(json.dumps(report))
    assert len(compare_reports.compare(a, b)) == 1
