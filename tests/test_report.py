"""The report folder for people and CI: escaped HTML, summary, JUnit, show, redaction, errors."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import byo_model_config, tiny_config

from mmaudit.cli import main
from mmaudit.errors import ReportError
from mmaudit.report import load_report
from mmaudit.runner import Overrides, run_audit

PAYLOAD = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def hostile_manifest(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny data with script payloads in an id, a column name and the report text."""
    folder = tmp_path_factory.mktemp("hostile")
    shutil.copytree(tiny_manifest.parent, folder, dirs_exist_ok=True)
    df = pd.read_csv(folder / "manifest.csv")
    df.loc[0, "id"] = f"<img src=x onerror=alert(1)>{PAYLOAD}"
    df["report"] = [f"secret report {i} {PAYLOAD} mentions the patient" for i in range(len(df))]
    df = df.rename(columns={"site": f"site{PAYLOAD}"})
    df.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


@pytest.fixture(scope="module")
def hostile_report(hostile_manifest: Path, tiny_weights: Path, tmp_path_factory) -> Path:
    import yaml

    folder = tmp_path_factory.mktemp("hostile_report")
    cfg = tiny_config(hostile_manifest, byo_model_config(tiny_weights / "tiny.safetensors"))
    cfg["data"]["attributes"] = {"site": {"column": f"site{PAYLOAD}"}, "sex": {}}
    cfg["checks"]["performance"]["params"]["n_confident_errors"] = 48
    path = folder / "audit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_audit(path, folder / "report", Overrides(checks=["performance"]))
    return folder / "report"


def test_html_is_self_contained_and_escaped(hostile_report: Path) -> None:
    html = (hostile_report / "index.html").read_text()
    assert "<script" not in html.lower()
    assert "<img src=x" not in html  # the id is shown, but only escaped
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "site&lt;script&gt;" in html  # the column name, escaped
    assert 'id="summary"' in html
    for needle in ("http://", "https://", 'src="//', "@import"):
        assert needle not in html


def test_summary_md_and_junit(hostile_report: Path) -> None:
    md = (hostile_report / "summary.md").read_text()
    assert md.startswith("## mmaudit:") and "| performance |" in md
    assert len(md.splitlines()) < 40
    root = ET.parse(hostile_report / "junit.xml").getroot()
    suite = root.find("testsuite")
    assert suite is not None and int(suite.get("tests", "0")) >= 1
    assert suite.find("testcase[@name='performance']") is not None


def test_show_prints_summary_from_report_json(hostile_report: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        main(["show", str(hostile_report)])
    assert exc.value.code == 0
    assert "performance" in capsys.readouterr().out


def test_redact_leaves_no_text_or_ids(
    hostile_manifest: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    import yaml

    cfg = tiny_config(hostile_manifest, byo_model_config(tiny_weights / "tiny.safetensors"))
    cfg["data"]["attributes"] = {"sex": {}}
    cfg["checks"]["performance"]["params"]["n_confident_errors"] = 48
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "report"
    run_audit(path, out, Overrides(checks=["performance"], redact=True))
    manifest = pd.read_csv(hostile_manifest)
    ids = [str(i) for i in manifest["id"]]
    texts = [str(t) for t in manifest["report"]]
    for file in out.rglob("*"):
        if not file.is_file():
            continue
        data = file.read_bytes()
        if file.suffix == ".npz":
            with np.load(file) as arrays:
                data = b" ".join(str(arrays[k].tolist()).encode() for k in arrays.files)
        for needle in ids + texts:
            assert needle.encode() not in data, f"{needle!r} leaked into {file}"
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["redacted"] is True
    preds = pd.read_parquet(out / "samples" / "predictions.parquet")
    assert preds["id"].str.startswith("h").all()


def test_bad_report_folders(tmp_path: Path, hostile_report: Path) -> None:
    with pytest.raises(ReportError, match="not an mmaudit report"):
        load_report(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(hostile_report, broken)
    text = (broken / "report.json").read_text()
    (broken / "report.json").write_text(text[: len(text) // 2])
    with pytest.raises(ReportError, match="not valid JSON"):
        load_report(broken)
    data = json.loads(text)
    data["schema_version"] = 0
    (broken / "report.json").write_text(json.dumps(data))
    with pytest.raises(ReportError, match="schema_version 0"):
        load_report(broken)
    data["schema_version"] = 1
    data["checks"]["performance"]["figures"] = {"evil": "../../etc/passwd"}
    (broken / "report.json").write_text(json.dumps(data))
    with pytest.raises(ReportError, match="outside the report folder"):
        load_report(broken)
    data["checks"]["performance"]["figures"] = {}
    del data["model"]
    (broken / "report.json").write_text(json.dumps(data))
    with pytest.raises(ReportError, match="malformed"):
        load_report(broken)
