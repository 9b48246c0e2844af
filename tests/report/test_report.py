"""The report folder for people and CI: escaped HTML, summary, JUnit, show, redaction, errors.

The hostile data is the bundled sample (image, report text, labs) with script payloads in a
report text, a sample id and a column name, audited by the checks that show text, ids and
thumbnails (performance, attribution, saliency, embedding), once plainly and once with
--redact. ``build_hostile`` builds it once per pytest session; test_browser.py reuses it.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mmaudit.cli import main
from mmaudit.engine.errors import ReportError
from mmaudit.report.document import load_report
from mmaudit.report.html import page_script
from mmaudit.report.writer import Redactor, hash_id
from mmaudit.runner import Overrides, run_audit

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = "<script>alert('x')</script>"
EVIL_ID = f"<img src=x onerror=alert(1)>{PAYLOAD}"
SITE_COLUMN = f"site{PAYLOAD}"
CHECKS = ["performance", "attribution", "saliency", "embedding"]
N_ROWS = 64


def build_hostile(folder: Path) -> dict[str, Path]:
    """The first 64 test rows of sample_data with payloads in a report text (every one), an
    id and a column name, audited plainly and with --redact. Reuses a finished build in
    ``folder`` (one build per pytest session, shared by test modules)."""
    import yaml

    paths = {
        "manifest": folder / "manifest.csv",
        "plain": folder / "plain",
        "redacted": folder / "redacted",
    }
    if all((paths[k] / "report.json").is_file() for k in ("plain", "redacted")):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    df = pd.read_csv(ROOT / "sample_data" / "manifest.csv")
    df = df[df["split"] == "test"].head(N_ROWS).reset_index(drop=True)
    df.loc[0, "id"] = EVIL_ID
    df["report"] = [
        f"secret report {i} {PAYLOAD} {t}" if isinstance(t, str) else t
        for i, t in enumerate(df["report"])
    ]
    df = df.rename(columns={"site": SITE_COLUMN})
    df.to_csv(paths["manifest"], index=False)
    cfg = yaml.safe_load((ROOT / "configs" / "sample.yaml").read_text())
    cfg["model"]["checkpoint"] = str(ROOT / "sample_data" / "checkpoints" / "shortcut")
    cfg["data"]["manifest"] = str(paths["manifest"])
    cfg["data"]["image"]["root"] = str(ROOT / "sample_data")
    cfg["data"]["text"]["tokenizer"] = str(ROOT / "sample_data" / "tokenizer")
    cfg["data"]["attributes"] = {"site": {"column": SITE_COLUMN}, "sex": {}}
    cfg["runtime"].update({"device": "cpu", "progress": False})
    cfg["checks"] = {
        "performance": {"params": {"n_boot": 100, "n_confident_errors": N_ROWS}},
        "attribution": {"params": {"n_boot": 100, "ig_steps": 8, "max_text_samples": 32}},
        "saliency": {
            "params": {
                "methods": ["gradcam", "ig"],
                "subset_samples": 16,
                "ig_steps": 8,
                "n_boot": 100,
                "n_permutations": 100,
                "hotspot_null": 40,
                "sanity": False,
                "faithfulness_samples": 0,
            }
        },
        "embedding": {
            "params": {
                "n_boot": 100,
                "n_permutations": 50,
                "silhouette_permutations": 50,
                "projections": ["pca"],
                # study ids in the params: copied into config.yaml and report.json
                "exemplar_ids": [str(df.loc[1, "id"]), str(df.loc[2, "id"])],
            }
        },
    }
    config = folder / "audit.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run_audit(config, paths["plain"], Overrides(checks=CHECKS))
    run_audit(config, paths["redacted"], Overrides(checks=CHECKS, redact=True))
    return paths


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_hostile(tmp_path_factory.getbasetemp() / "hostile_shared")


def file_text(file: Path) -> str:
    """A file's content as text: parquet and npz decoded, so compression hides nothing."""
    if file.suffix == ".parquet":
        frame = pd.read_parquet(file)
        return " ".join(map(str, frame.columns)) + "\n" + frame.to_csv()
    if file.suffix == ".npz":
        with np.load(file) as arrays:
            return " ".join(str(arrays[k].tolist()) for k in arrays.files)
    return file.read_bytes().decode("utf-8", errors="replace")


def test_every_check_ran_on_the_text(hostile: dict[str, Path]) -> None:
    report = load_report(hostile["plain"])
    assert {c.name: c.status for c in report.checks.values()}.keys() == set(CHECKS)
    assert all(c.status != "error" for c in report.checks.values()), [
        c.reason for c in report.checks.values()
    ]
    assert "text" in report.data["modalities"]
    # the payload text reached the audit: unredacted, it is shown somewhere
    texts = [file_text(f) for f in hostile["plain"].rglob("*") if f.is_file()]
    assert any("secret report" in t for t in texts)
    assert any(EVIL_ID in t for t in texts)


def test_html_is_self_contained_and_escaped(hostile: dict[str, Path]) -> None:
    for name in ("plain", "redacted"):
        html = (hostile[name] / "index.html").read_text()
        # the one script is the page's own (allowed by its hash in the CSP), none from data
        assert re.findall(r"<script>(.*?)</script>", html, re.S) == [page_script()], name
        assert html.lower().count("<script") == 1, name
        assert "<img src=x" not in html, name
        assert "site&lt;script&gt;" in html, name  # the column name, escaped
        assert 'id="summary"' in html
        for needle in ("http://", "https://", 'src="//', "@import", "<link"):
            assert needle not in html
        assert re.findall(r'src="(?!data:image/png;base64,)', html) == []
    plain = (hostile["plain"] / "index.html").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in plain  # the id is shown, escaped
    assert "secret report" in plain and "&lt;script&gt;alert" in plain  # the text, escaped


def test_redact_leaves_no_text_ids_or_thumbnails(hostile: dict[str, Path]) -> None:
    manifest = pd.read_csv(hostile["manifest"])
    ids = [str(i) for i in manifest["id"]]
    patients = [str(p) for p in manifest["patient_id"]]
    texts = [str(t) for t in manifest["report"].dropna()]
    out = hostile["redacted"]
    for file in out.rglob("*"):
        if not file.is_file():
            continue
        text = file_text(file)
        assert "secret report" not in text, f"report text leaked into {file}"
        for needle in ids + texts:
            assert needle not in text, f"{needle[:40]!r} leaked into {file}"
        for p in patients:
            assert not re.search(rf"\b{p}\b", text), f"patient {p} leaked into {file}"
    report = load_report(out)
    assert report.data["redacted"] is True and report.data["id_hash"] == "random salt"
    # the private figures (thumbnails, text examples) exist unredacted and are withheld here
    plain = load_report(hostile["plain"])
    withheld = [n for c in report.checks.values() for n in c.notes if "--redact" in n]
    assert withheld
    for name, check in plain.checks.items():
        kept = set(report.checks[name].figures)
        assert kept <= set(check.figures)
    assert sum(len(c.figures) for c in report.checks.values()) < sum(
        len(c.figures) for c in plain.checks.values()
    )
    preds = pd.read_parquet(out / "samples" / "predictions.parquet")
    assert preds["id"].str.fullmatch(r"h[0-9a-f]{16}").all()


def test_redaction_salt_is_random_per_report_unless_shared(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("MMAUDIT_REDACT_SALT", raising=False)
    a, b = Redactor(["s1"], []), Redactor(["s1"], [])
    assert a.names(["s1"]) != b.names(["s1"]) and not a.shared_salt
    monkeypatch.setenv("MMAUDIT_REDACT_SALT", "team secret")
    c, d = Redactor(["s1"], []), Redactor(["s1"], [])
    assert c.names(["s1"]) == d.names(["s1"]) == [hash_id("s1", "team secret")]
    assert c.shared_salt
    # a patient column is hashed even when its values were not given as ids
    frame = c.frame(pd.DataFrame({"id": ["s1"], "patient": ["p9"], "x": [1.0]}))
    assert frame.loc[0, "patient"] == hash_id("p9", "team secret")


def test_redaction_reaches_notes_findings_reasons_and_tracebacks() -> None:
    from mmaudit.checks.contract import Finding
    from mmaudit.report.document import CheckReport, Report

    text = "Patchy opacity in the right lower lobe."
    red = Redactor(["s001", "s0010"], [text], patients=["p042"], salt="k")
    check = CheckReport(
        name="embedding",
        status="error",
        reason=f"ValueError: could not parse {text!r} in row s0010",
        traceback=f"Traceback ...\nValueError: {text}",
        notes=["NaN in rows s001, s0010 (patient p042)", "unrelated s0011 stays"],
        findings=[Finding(check="embedding", rule="r", severity="warn", message="see s001")],
    )
    report = Report(
        tool_version="t", created="c", config={}, config_path="", model={}, data={}, environment={},
        seed=0, checks={"embedding": check}, status="error",
    )  # fmt: skip
    red.report(report)
    joined = " ".join(
        [check.reason or "", check.traceback or "", *check.notes, check.findings[0].message]
    )
    assert text not in joined and "p042" not in joined
    assert not re.search(r"\bs0010?\b", joined)  # neither id, nor one inside the other
    assert hash_id("s0010", "k") in check.reason and hash_id("s001", "k") in check.notes[0]
    assert "s0011" in check.notes[1]  # not an audited id: left alone


def test_redaction_reaches_config_and_params(tmp_path: Path) -> None:
    """Check params can name studies (embedding.exemplar_ids); under --redact they are
    hashed in config.yaml, report.json's config and the check's params alike."""
    import yaml

    from mmaudit.report.document import CheckReport, Report
    from mmaudit.report.writer import ReportWriter

    ids = ["s0012", "s0877"]
    red = Redactor(ids, [], patients=["p042"], salt="k")
    params = {"exemplar_ids": ids, "note": "see s0877", "k": 5}
    cfg = {"checks": {"embedding": {"params": params}}, "data": {"manifest": "/d/m.csv"}}
    report = Report(
        tool_version="t", created="c", config=cfg, config_path="", model={}, data={},
        environment={}, seed=0, status="pass",
        checks={"embedding": CheckReport(name="embedding", status="pass", params=params)},
    )  # fmt: skip
    out = ReportWriter(tmp_path / "rep", red).finish(report, yaml.safe_dump(cfg))
    for file in out.rglob("*"):
        if file.is_file():
            assert "s0012" not in file_text(file) and "s0877" not in file_text(file), file
    hashed = [hash_id(i, "k") for i in ids]
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["checks"]["embedding"]["params"]["exemplar_ids"] == hashed
    assert written["data"]["manifest"] == "/d/m.csv"  # strings without ids stay
    saved = load_report(out)
    assert saved.checks["embedding"].params == {
        "exemplar_ids": hashed,
        "note": "[redacted]",
        "k": 5,
    }
    assert saved.config["checks"]["embedding"]["params"]["exemplar_ids"] == hashed


def test_redaction_cells_ids_inside_strings_and_text_pieces() -> None:
    text = "Patchy opacity in the right lower lobe."
    red = Redactor(["s001", "ab"], [text], patients=["p042"], salt="k")
    assert red.cell("s001") == hash_id("s001", "k") and red.cell("ab") == hash_id("ab", "k")
    assert red.cell("img/s001.png") == "[redacted]" and red.cell("x-p042") == "[redacted]"
    assert red.cell("label ab") == "label ab"  # ids under MIN_ID: only whole cells
    assert red.cell("opacity in the right") == "[redacted]"  # a piece of a text
    assert red.cell(f"quoted: {text} end") == "[redacted]"  # a text inside a cell
    assert red.cell("site A, portable") == "site A, portable"
    assert red.cell(3.5) == 3.5


def test_redaction_keeps_vocabulary_words_and_params() -> None:
    """Single words are vocabulary, not quotes: a word table keeps a 13-letter clinical word
    that every report contains, and check params keep clinical_words; a multi-word piece of
    a report is still blanked and an id param still hashed."""
    from mmaudit.report.document import CheckReport, Report

    text = "Dense consolidation in the right lower lobe; cardiomediastinal silhouette normal."
    red = Redactor(["s001"], [text], salt="k")
    words = ["consolidation", "cardiomediastinal", "silhouette"]
    table = red.frame(pd.DataFrame({"word": words, "share": [0.5, 0.3, 0.2]}))
    assert list(table["word"]) == words
    assert list(red.frame(pd.DataFrame({"x": [1, 2, 3]}, index=words)).index) == words
    assert red.cell("consolidation in the right") == "[redacted]"  # a piece spanning words
    assert red.cell("cardiomediastinal silhouette") == "[redacted]"
    assert red.cell(text) == "[redacted]"
    params = {"clinical_words": ["consolidation", "right lower lobe"], "exemplar_ids": ["s001"]}
    report = Report(
        tool_version="t", created="c", config={"checks": {"attention": {"params": params}}},
        config_path="", model={}, data={}, environment={}, seed=0, status="pass",
        checks={"attention": CheckReport(name="attention", status="pass", params=params)},
    )  # fmt: skip
    red.report(report)
    expected = {**params, "exemplar_ids": [hash_id("s001", "k")]}
    assert report.checks["attention"].params == expected
    assert report.config["checks"]["attention"]["params"] == expected


def test_a_new_writer_removes_stale_staging_folders_only(tmp_path: Path) -> None:
    """Staging folders left by killed runs (raw data) go when the next writer starts; a
    live run's staging folder (locked), the --resume state and look-alike names stay."""
    from mmaudit.report.writer import ReportWriter

    out = tmp_path / "rep"
    stale = tmp_path / ".rep.partial-ab_12xyz"
    keep = [
        tmp_path / ".rep.work",
        tmp_path / ".rep.partial-notmkdtempname",
        tmp_path / ".rep2.partial-ab_12xyz",
        tmp_path / ".rep.partial-AB_12XYZ",
    ]
    for folder in [stale, *keep]:
        (folder / "samples").mkdir(parents=True)
        (folder / "samples" / "raw.npz").write_bytes(b"raw")
    live = ReportWriter(out)
    assert not stale.exists() and all(f.is_dir() for f in keep)
    second = ReportWriter(out)  # the same -o while the first still runs
    assert live.stage.is_dir() and second.stage.is_dir()
    second.finish(_gated_report(1), "{}\n")
    live.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["rep", *(f.name for f in keep)])


def test_private_arrays_are_left_out_under_redact(tmp_path: Path) -> None:
    """Image-like per-sample maps marked private are not written under --redact: one key,
    or every array with the key "arrays"; without --redact all are kept."""
    from mmaudit.checks.contract import CheckOutput
    from mmaudit.report.writer import ReportWriter

    maps = {"map.ig": np.ones((3, 4, 4)), "score": np.arange(3.0)}
    ids = ["s001", "s002", "s003"]

    def written(private: set[str], redact: bool) -> tuple[set[str], list[str]]:
        out = CheckOutput(arrays=dict(maps), private=set(private))
        writer = ReportWriter(tmp_path / "rep", Redactor(ids, [], salt="k") if redact else None)
        _, tables = writer.add_check("saliency", out, ids)
        keys: set[str] = set()
        if "arrays" in tables:
            with np.load(writer.stage / tables["arrays"]) as npz:
                keys = set(npz.files) - {"__ids__"}
        writer.abort()
        return keys, out.notes

    assert written({"map.ig"}, redact=False) == ({"map.ig", "score"}, [])
    keys, notes = written({"map.ig"}, redact=True)
    assert keys == {"score"} and "map.ig" in notes[0] and "--redact" in notes[0]
    keys, notes = written({"arrays"}, redact=True)
    assert keys == set() and "arrays" in notes[0]


def test_summary_md_and_junit(hostile: dict[str, Path]) -> None:
    from mmaudit.checks.contract import Finding
    from mmaudit.report.junit import render_junit

    folder = hostile["plain"]
    report = load_report(folder)
    md = (folder / "summary.md").read_text()
    assert md.startswith("## mmaudit:") and "| performance |" in md
    folded = md.split("<details>")[0] + md.split("</details>")[-1]  # the glossary is folded
    # short enough for a pull-request comment: each finding is two lines (the sentence; its
    # evidence, next step and code tag), at most SUMMARY_FINDINGS of them
    assert len(folded.splitlines()) < 50 and "<script" not in md
    linked = [rel for c in report.checks.values() for rel in c.figures.values()]
    assert linked and all(f"]({rel})" in md for rel in linked)  # every figure, one line per check

    def check_junit(xml: str) -> int:
        suite = ET.fromstring(xml).find("testsuite")
        assert suite is not None
        cases = suite.findall("testcase")
        findings = [f for c in report.checks.values() for f in c.findings]
        ran = len(report.checks) + len(findings)
        assert int(suite.get("tests", "0")) == len(cases) == ran + len(report.checks_not_run)
        failed = [c.get("name") for c in cases if c.find("failure") is not None]
        expected = [c.name for c in report.checks.values() if c.status == "fail"]
        expected += [f"{f.check}.{f.rule}.{f.metric}" for f in findings if f.severity == "fail"]
        assert sorted(failed) == sorted(expected)
        assert int(suite.get("failures", "-1")) == len(failed)
        return len(failed)

    # the 64-row shortcut audit: whatever fails (saliency's grid scan finds the marker) is a
    # failure of its finding's testcase and of its check's, and nothing else is
    before = check_junit((folder / "junit.xml").read_text())
    # a fail finding (with a payload) is a failure of its own testcase and of its check
    perf = report.checks["performance"]
    assert perf.status == "warn"
    perf.findings.append(
        Finding(check="performance", rule="r", severity="fail", message=PAYLOAD, metric="auroc")
    )
    perf.status = "fail"
    xml = render_junit(report)
    assert check_junit(xml) == before + 2
    assert "<script" not in xml


def test_show_prints_summary_and_escapes_markup(
    hostile: dict[str, Path], tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "markup"
    shutil.copytree(hostile["plain"], folder)
    data = json.loads((folder / "report.json").read_text())
    perf = data["checks"]["performance"]
    perf["metrics"] = {
        "auroc.[/x]": {"value": 0.9, "ci_low": 0.8, "ci_high": 0.95},
        **perf["metrics"],
    }
    perf["findings"].append(
        {"check": "performance", "rule": "r", "severity": "warn", "message": "group [bold] [/x]"}
    )
    perf["reason"] = "[/red]"
    (folder / "report.json").write_text(json.dumps(_resealed(data)))
    with pytest.raises(SystemExit) as exc:
        main(["show", str(folder)])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "auroc.[/x]" in out and "group [bold] [/x]" in out


def test_markdown_cells_keep_data_literal() -> None:
    from mmaudit.report.markdown import markdown_cell

    cell = markdown_cell("a|b [x](http://e.test) ![](http://e.test/i.png) <b>\nz")
    assert "](" not in cell.replace("\\](", "") and "<b>" not in cell and "\n" not in cell
    assert cell.startswith("a\\|b \\[x\\]")


def test_table_preview_tolerates_empty_and_broken_csv(
    hostile: dict[str, Path], tmp_path: Path
) -> None:
    from mmaudit.report.html import _table_preview, render_html

    folder = tmp_path / "r"
    shutil.copytree(hostile["plain"], folder)
    (folder / "tables" / "x").mkdir(parents=True)
    (folder / "tables" / "x" / "empty.csv").write_text("")
    (folder / "tables" / "x" / "broken.csv").write_text('a,b\n1,"2\n3,4,5,6\n')
    assert _table_preview(folder, "tables/x/empty.csv") is None
    assert _table_preview(folder, "tables/x/broken.csv") is None
    report = load_report(folder)
    report.checks["performance"].tables.update(
        {"empty": "tables/x/empty.csv", "broken": "tables/x/broken.csv"}
    )
    assert 'id="summary"' in render_html(folder, report)


def test_table_preview_keeps_ids_and_text_as_written(tmp_path: Path) -> None:
    """Type inference would show the id 000123 as 123, a level NA / None as missing and the
    code 1e5 as 100000.0; the preview keeps text as written and formats only columns of
    numbers as pandas writes them (p-values as p-values, blanks as a dash)."""
    import pandas as pd

    from mmaudit.report.html import _table_preview

    (tmp_path / "tables").mkdir()
    pd.DataFrame(
        {
            "id": ["000123", "7", None],
            "level": ["NA", "None", "A"],
            "code": ["1e5", "+1", "x"],
            "n": [3, 12, None],
            "auroc": [0.8123, 2.0, float("inf")],
            "p_adj": [0.00001, None, 0.5],
        }
    ).to_csv(tmp_path / "tables" / "t.csv", index=False)
    preview = _table_preview(tmp_path, "tables/t.csv")
    assert preview is not None and preview["n"] == 3
    assert preview["header"] == ["id", "level", "code", "n", "auroc", "p_adj"]
    assert preview["rows"] == [
        ["000123", "NA", "1e5", "3.000", "0.812", "< 0.001"],
        ["7", "None", "+1", "12.000", "2.000", "–"],
        ["–", "A", "x", "–", "inf", "0.500"],
    ]
    pd.DataFrame({"id": ["0007", "12"], "count": [4, 5]}).to_csv(
        tmp_path / "tables" / "ints.csv", index=False
    )
    preview = _table_preview(tmp_path, "tables/ints.csv")
    assert preview is not None and preview["rows"] == [["0007", "4"], ["12", "5"]]


def test_bad_report_folders(tmp_path: Path, hostile: dict[str, Path]) -> None:
    with pytest.raises(ReportError, match="not an mmaudit report"):
        load_report(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(hostile["plain"], broken)
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
    (broken / "report.json").write_text(json.dumps(_resealed(data)))
    with pytest.raises(ReportError, match="outside the report folder"):
        load_report(broken)
    data["checks"]["performance"]["figures"] = {}
    del data["model"]
    (broken / "report.json").write_text(json.dumps(_resealed(data)))
    with pytest.raises(ReportError, match="malformed"):
        load_report(broken)


def _resealed(data: dict[str, Any]) -> dict[str, Any]:
    """report.json content edited on purpose, with its digest recomputed: what a test needs
    to reach the checks behind the digest (as only a deliberate forgery would)."""
    from mmaudit.report.seal import report_digest

    data["integrity"]["report_sha256"] = report_digest(data)
    return data


def _as_old_report(folder: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as report.json of a report from before digests and the marker."""
    data.pop("integrity", None)
    (folder / ".mmaudit-report").unlink(missing_ok=True)
    (folder / "report.json").write_text(json.dumps(data))


def _gated_report(n_warn: int, fail_on: str = "fail") -> Any:
    """A report with known verdicts: check a warns (``n_warn`` warn findings), b fails (one
    fail finding), c errored, d was skipped, e passed."""
    from mmaudit.checks.contract import Finding
    from mmaudit.report.document import CheckReport, Report

    warns = [
        Finding(check="a", rule="r", severity="warn", message=f"w{k}", metric=f"m{k}")
        for k in range(n_warn)
    ]
    fail = Finding(check="b", rule="r", severity="fail", message="the fail", metric="m")
    checks = {
        "a": CheckReport(name="a", status="warn", findings=warns),
        "b": CheckReport(name="b", status="fail", findings=[fail]),
        "c": CheckReport(name="c", status="error", reason="TypeError: boom"),
        "d": CheckReport(name="d", status="skipped", reason="no text"),
        "e": CheckReport(name="e", status="pass"),
    }
    return Report(
        tool_version="t", created="c", config={}, config_path="", model={}, data={},
        environment={}, seed=0, checks=checks, status="error", fail_on=fail_on,
    )  # fmt: skip


def test_summary_md_lists_every_finding_or_says_how_many_more() -> None:
    from mmaudit.report.markdown import SUMMARY_FINDINGS, render_markdown

    def findings(md: str) -> list[str]:
        return [ln for ln in md.splitlines() if re.match(r"- (\*\*(warn|fail)\*\*|…)", ln)]

    def line(severity: str, check: str, message: str, metric: str) -> str:
        link = f"index.html#finding--{check}--r--{metric}"
        return f"- **{severity}** `{check}`: {message} ([details]({link}))"

    few = findings(render_markdown(_gated_report(n_warn=2)))
    assert few == [line("fail", "b", "the fail", "m"), line("warn", "a", "w0", "m0")] + [
        line("warn", "a", "w1", "m1")
    ]
    many = findings(render_markdown(_gated_report(n_warn=SUMMARY_FINDINGS + 4)))
    assert len(many) == SUMMARY_FINDINGS + 1 and many[0] == line("fail", "b", "the fail", "m")
    assert many[-1].startswith("- … and 5 more") and "index.html" in many[-1]


@pytest.mark.parametrize(
    ("fail_on", "failures", "errors"),
    [
        ("fail", ["b", "b.r.m"], ["c"]),
        ("warn", ["a", *(f"a.r.m{k}" for k in range(3)), "b", "b.r.m"], ["c"]),
        ("never", [], []),
    ],
)
def test_junit_failures_follow_the_fail_on_level(
    fail_on: str, failures: list[str], errors: list[str]
) -> None:
    from mmaudit.report.junit import render_junit

    suite = ET.fromstring(render_junit(_gated_report(3, fail_on))).find("testsuite")
    assert suite is not None
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert sorted(n for n, c in cases.items() if c.find("failure") is not None) == failures
    assert sorted(n for n, c in cases.items() if c.find("error") is not None) == errors
    assert (suite.get("failures"), suite.get("errors")) == (str(len(failures)), str(len(errors)))
    assert suite.get("skipped") == "1" and cases["d"].find("skipped") is not None
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["fail_on"] == fail_on and props["status"] == "error"
    if fail_on == "never":  # nothing fails, but the verdicts stay readable
        assert "fail: the fail" in (cases["b.r.m"].findtext("system-out") or "")
        assert "TypeError: boom" in (cases["c"].findtext("system-out") or "")


def test_fail_on_is_saved_and_old_reports_read_as_fail(tmp_path: Path) -> None:
    from mmaudit.report.writer import ReportWriter

    out = ReportWriter(tmp_path / "rep").finish(_gated_report(1, "warn"), "{}\n")
    assert load_report(out).fail_on == "warn"
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "4"  # a, a.r.m0, b, b.r.m
    data = json.loads((out / "report.json").read_text())
    del data["fail_on"]  # a report written before the field existed
    _as_old_report(out, data)
    assert load_report(out).fail_on == "fail"


def test_narrowed_run_lists_the_checks_not_run_in_every_view(hostile: dict[str, Path]) -> None:
    """The hostile audit ran with --checks (4 of the 8 checks): report.json, summary.md,
    index.html and junit.xml all name the other 4 as not run, and config.yaml reruns the
    same 4."""
    from mmaudit.checks.registry import load_builtin_checks
    from mmaudit.engine.config_file import load_config
    from mmaudit.runner import plan_checks

    folder = hostile["plain"]
    left_out = sorted(set(load_builtin_checks()) - set(CHECKS))
    assert left_out  # the registry has checks the hostile audit did not ask for
    data = json.loads((folder / "report.json").read_text())
    assert data["checks_requested"] == CHECKS
    assert data["checks_not_run"] == {n: "not requested (--checks)" for n in left_out}
    md = (folder / "summary.md").read_text()
    assert f"{len(CHECKS)} of {len(CHECKS) + len(left_out)} checks ran" in md
    for name in left_out:
        assert f"| {name} | ⏭️ not run | not requested (--checks) |" in md
    html = (folder / "index.html").read_text()
    summary_table = html.split('id="summary"')[1].split("</table>")[0]
    for name in left_out:
        assert re.search(rf"<td>{name}</td>\s*<td class=\"skipped\">not run</td>", summary_table)
    assert 'id="narrowed"' in html
    suite = ET.parse(folder / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    skipped = {
        c.get("name"): c.find("skipped").get("message")  # type: ignore[union-attr]
        for c in suite.findall("testcase")
        if c.find("skipped") is not None
    }
    assert {n: skipped.get(n) for n in left_out} == {
        n: "not run: not requested (--checks)" for n in left_out
    }
    assert int(suite.get("skipped", "0")) == len(skipped)
    written = (folder / "config.yaml").read_text()
    assert written.startswith("# narrowed on the command line: --checks ")
    rerun = plan_checks(load_config(folder / "config.yaml"))
    assert sorted(pc.name for pc in rerun) == sorted(CHECKS)
    # a report of every check has no such rows (its counterpart)
    full = _gated_report(1)
    assert "not run" not in render_markdown_of(full) and full.checks_not_run == {}


def render_markdown_of(report: Any) -> str:
    from mmaudit.report.markdown import render_markdown

    return render_markdown(report)


def test_key_metrics_lead_with_the_metrics_the_findings_judged() -> None:
    from mmaudit.checks.contract import Finding
    from mmaudit.report.cells import key_metrics

    def est(v: float) -> dict[str, float]:
        return {"value": v, "ci_low": v - 0.1, "ci_high": v + 0.1}

    metrics: dict[str, Any] = {
        "group.site.A.auroc": est(0.85),
        "group.site.A.tpr": est(0.55),
        "group.site.A.fpr": est(0.08),
        "eod.site": est(0.406),
        "encoded_and_used.site": 1,  # a plain number (no CI) can decide a verdict too
    }

    def finding(severity: str, metric: str) -> Finding:
        return Finding(check="c", rule="r", severity=severity, message="m", metric=metric)

    plain = key_metrics(metrics)  # no findings: the first three metrics with CIs
    assert plain.split("; ")[0].startswith("group.site.A.auroc") and "eod.site" not in plain
    judged = key_metrics(
        metrics,
        [finding("warn", "encoded_and_used.site"), finding("fail", "eod.site")],
    )
    parts = judged.split("; ")
    assert parts[0] == "eod.site 0.406 [0.306, 0.506]"  # the fail first, then the warn
    assert parts[1] == "encoded_and_used.site 1"
    assert parts[2].startswith("group.site.A.auroc") and len(parts) == 3
    # a passing or note finding does not reorder; a metric the report lacks is passed over
    quiet = [finding("note", "eod.site"), finding("fail", "not.a.metric")]
    assert key_metrics(metrics, quiet) == plain


def test_html_shows_no_nan_and_p_below_resolution_as_a_bound(
    hostile: dict[str, Path], tmp_path: Path
) -> None:
    from mmaudit.report.html import render_html

    folder = tmp_path / "r"
    shutil.copytree(hostile["plain"], folder)
    (folder / "tables" / "x").mkdir(parents=True)
    pd.DataFrame(
        {
            "metric": ["full", "emap"],
            "value": [0.9, np.nan],
            "flags": ["site", ""],  # an empty text cell reads back as NaN
            "p_adj": [8.6e-19, 0.25],
        }
    ).to_csv(folder / "tables" / "x" / "t.csv", index=False)
    report = load_report(folder)
    perf = report.checks["performance"]
    perf.tables["t"] = "tables/x/t.csv"
    perf.metrics["nan_metric"] = {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    perf.metrics["tiny_p"] = {"value": 0.4, "ci_low": 0.3, "ci_high": 0.5, "null_p": 8.6e-19}
    perf.metrics["plain_nan"] = math.nan
    html = render_html(folder, report)
    assert not re.search(r">\s*nan\s*<", html, re.IGNORECASE)
    row = html.split("<td>tiny_p</td>")[1].split("</tr>")[0]
    assert "8.6e-19" not in html and "0.000" not in row
    assert "&lt; 0.001" in row
    assert "<td>0.250</td>" in html  # a p above the bound keeps its digits
    # the real report: numbers and no NaN either
    assert not re.search(r">\s*nan\s*<", (hostile["plain"] / "index.html").read_text(), re.I)


def test_glossary_in_html_and_the_terms_summary_md_uses() -> None:
    from mmaudit.report.glossary import GLOSSARY
    from mmaudit.report.markdown import render_markdown, summary_terms

    report = _gated_report(1)
    report.checks["a"].metrics = {"emap.gap": {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}}
    md = render_markdown(report)
    terms = md.split("<details>")[1]
    assert "**EMAP**" in terms and "**CKA**" not in terms  # only the jargon shown above
    assert summary_terms("knn_lift.embedding.site 1.2; loo_drop.text") == [
        (t, m) for t, _, m in GLOSSARY if t in ("loo / koi", "kNN lift")
    ]
    assert summary_terms("auroc of the class") != [] and summary_terms("nothing here") == []
    for term in ("EMAP", "MM-SHAP", "loo / koi", "SpRAy", "LEACE", "kNN lift", "ECE", "CKA"):
        assert any(t == term for t, _, _ in GLOSSARY)
        assert any(term in t for t, _, _ in GLOSSARY)
    assert any("HiResCAM" in t and "LayerCAM" in t for t, _, _ in GLOSSARY)


def test_old_reports_read_without_the_not_run_fields(tmp_path: Path) -> None:
    from mmaudit.report.writer import ReportWriter

    out = ReportWriter(tmp_path / "rep").finish(_gated_report(1), "{}\n")
    data = json.loads((out / "report.json").read_text())
    del data["checks_requested"], data["checks_not_run"]  # written before the fields
    _as_old_report(out, data)
    old = load_report(out)
    assert old.checks_requested is None and old.checks_not_run == {}


def _written_report(out: Path, extra_samples: bool = True) -> Path:
    """A report folder written by ReportWriter: the gated report, with per-sample files."""
    from mmaudit.report.writer import ReportWriter

    writer = ReportWriter(out)
    if extra_samples:
        frame = pd.DataFrame({"id": ["s1", "s2", "s3"], "logit.0": [0.1, -0.2, 0.3]})
        writer.add_samples(frame, {"embedding": np.ones((3, 4))}, max_mb=10)
    return writer.finish(_gated_report(1), "{}\n")


def test_report_records_digests_and_refuses_edits(tmp_path: Path) -> None:
    """report.json seals its own content and every other file it wrote: a hand-edited value,
    a changed per-sample file, a per-sample file it did not write or digests removed from a
    sealed report are refused by name; re-indenting report.json changes nothing."""
    out = _written_report(tmp_path / "rep")
    data = json.loads((out / "report.json").read_text())
    files = data["integrity"]["files"]
    assert {"samples/predictions.parquet", "samples/embeddings.npz", "index.html"} <= set(files)
    assert "report.json" not in files and ".mmaudit-report" not in files
    marker = json.loads((out / ".mmaudit-report").read_text())
    assert set(marker["files"]) == {*files, "report.json"}
    assert load_report(out).integrity == data["integrity"]
    (out / "report.json").write_text(json.dumps(data, indent=7))  # same content, new layout
    load_report(out)

    def refused(folder: Path, edit: Any, match: str) -> None:
        copy = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(folder, copy)
        edit(copy)
        with pytest.raises(ReportError, match=match):
            load_report(copy)

    def edit_json(change: Any) -> Any:
        def edit(folder: Path) -> None:
            raw = json.loads((folder / "report.json").read_text())
            change(raw)
            (folder / "report.json").write_text(json.dumps(raw))

        return edit

    def flip_byte(rel: str) -> Any:
        def edit(folder: Path) -> None:
            raw = bytearray((folder / rel).read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            (folder / rel).write_bytes(bytes(raw))

        return edit

    edited = "report.json: its content does not match the digest"
    refused(out, edit_json(lambda d: d["checks"]["a"].update(status="pass")), edited)
    refused(out, edit_json(lambda d: d["integrity"]["files"].pop("index.html")), edited)
    refused(out, edit_json(lambda d: d.pop("integrity")), "report.json: its digests were removed")
    refused(
        out,
        flip_byte("samples/predictions.parquet"),
        r"samples/predictions.parquet: does not match the sha256",
    )
    refused(out, flip_byte("samples/embeddings.npz"), r"samples/embeddings.npz: does not match")
    refused(
        out,
        lambda f: shutil.copy(f / "samples" / "embeddings.npz", f / "samples" / "other.npz"),
        r"samples/other.npz: not written by this audit",
    )
    # a recorded file that is gone no longer matches: a deleted predictions.parquet would
    # silently drop diff's paired test and churn (an unsealed report is only noted, test_diff)
    for rel in ("samples/predictions.parquet", "samples/embeddings.npz", "index.html"):
        refused(
            out,
            lambda f, rel=rel: (f / rel).unlink(),
            rf"{rel}: recorded in report.json but missing \(deleted after the audit\?\)",
        )
    load_report(out)


def test_redacted_report_is_sealed(tmp_path: Path) -> None:
    from mmaudit.report.writer import ReportWriter

    ids = ["s001", "s002", "s003"]
    writer = ReportWriter(tmp_path / "rep", Redactor(ids, [], salt="k"))
    writer.add_samples(pd.DataFrame({"id": ids, "logit.0": [0.1, 0.2, 0.3]}), {}, max_mb=1)
    out = writer.finish(_gated_report(1), "{}\n")
    report = load_report(out)
    assert report.data["id_hash"] == "shared salt" or report.data["id_hash"] == "random salt"
    assert "samples/predictions.parquet" in (report.integrity or {})["files"]


def test_writer_replaces_only_a_folder_of_its_own_files(tmp_path: Path) -> None:
    """-o is replaced only when it is an mmaudit report holding nothing else: a project with
    a report.json of its own, a user's notes in a report folder or a folder of theirs in
    it are refused by name and left alone; a report from before the marker is recognised
    by the files its report.json names."""
    from mmaudit.engine.errors import MmauditError
    from mmaudit.report.writer import ReportWriter

    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "report.json").write_text("{}")
    (proj / "src" / "main.py").write_text("print(1)")
    with pytest.raises(MmauditError, match=r"not an mmaudit report \(it holds report.json, src\)"):
        ReportWriter(proj)
    assert (proj / "src" / "main.py").read_text() == "print(1)"

    out = _written_report(tmp_path / "rep")
    _written_report(out)  # a report over a report: replaced
    (out / "notes.txt").write_text("mine")
    (out / "samples" / "mine").mkdir()
    with pytest.raises(MmauditError, match=r"did not write: notes.txt, samples/mine/;"):
        ReportWriter(out)
    (out / "samples" / "mine").rmdir()

    # from before the marker: only the files its report.json names (and the fixed ones)
    (out / ".mmaudit-report").unlink()
    with pytest.raises(MmauditError, match=r"did not write: notes.txt;") as exc:
        ReportWriter(out)
    assert exc.value.hint == "choose another -o or remove them"
    (out / "notes.txt").unlink()
    assert _written_report(out, extra_samples=False) == out
    assert not (out / "samples").exists()  # the earlier report's files went with it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj", "rep"]


def test_files_that_appear_during_the_run_stop_the_swap(tmp_path: Path) -> None:
    """A file put into -o while the audit ran: the earlier report and the file stay."""
    from mmaudit.engine.errors import MmauditError
    from mmaudit.report.writer import ReportWriter

    out = _written_report(tmp_path / "rep")
    before = (out / "report.json").read_text()
    writer = ReportWriter(out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MmauditError, match="did not write: notes.txt"):
        writer.finish(_gated_report(2), "{}\n")
    writer.abort()
    assert (out / "report.json").read_text() == before and (out / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def _chattr(flag: str, path: Path) -> bool:
    """Set or clear an inode flag (``+i``); False where chattr or the filesystem cannot."""
    import subprocess

    try:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0
    except OSError:
        return False


def test_output_that_cannot_be_written_is_one_line_at_once(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Checked when the writer starts, before any model runs: a parent where nothing can be
    created (read-only, immutable, a read-only filesystem) or an -o that could not be
    replaced at the end (immutable, not writable) is one line, and nothing is left."""
    import errno
    import os

    from mmaudit.engine.errors import MmauditError
    from mmaudit.report import folder as output_folder
    from mmaudit.report import writer as report_module
    from mmaudit.report.writer import ReportWriter

    parent = tmp_path / "locked"
    parent.mkdir()

    def no_mkdtemp(**_: Any) -> str:
        raise PermissionError(errno.EACCES, "Permission denied", str(parent))

    with monkeypatch.context() as m:  # what a read-only parent does to a non-root user
        m.setattr(report_module.tempfile, "mkdtemp", no_mkdtemp)
        with pytest.raises(MmauditError, match=r"cannot write the report: .*locked: Permiss"):
            ReportWriter(parent / "rep")

    out = _written_report(tmp_path / "rep")
    real_access = os.access
    with monkeypatch.context() as m:  # a report folder without write permission
        m.setattr(os, "access", lambda p, mode: Path(p) != out and real_access(p, mode))
        with pytest.raises(MmauditError, match=r"cannot replace the report in .*not writable"):
            ReportWriter(out)
    with monkeypatch.context() as m:  # an immutable file inside it (as chattr +i sets)
        flags = output_folder._inode_flags
        target = out / "summary.md"
        m.setattr(output_folder, "_inode_flags", lambda p: 0x10 if p == target else flags(p))
        with pytest.raises(MmauditError, match=r"summary.md is immutable or append-only"):
            ReportWriter(out)

    if not _chattr("+i", parent):
        pytest.skip("chattr +i is not available here (the checks above still ran)")
    try:
        with pytest.raises(MmauditError, match=r"cannot write the report: .*locked is immutable"):
            ReportWriter(parent / "rep")
        assert _chattr("-i", parent) and _chattr("+a", parent)  # entries can't be renamed
        with pytest.raises(MmauditError, match=r"locked is immutable or append-only"):
            ReportWriter(parent / "rep")
        assert _chattr("-a", parent) and _chattr("+i", out)
        with pytest.raises(MmauditError, match=r"rep is immutable or append-only"):
            ReportWriter(out)
    finally:
        _chattr("-i", parent)
        _chattr("-a", parent)
        _chattr("-i", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked", "rep"]
    assert list(parent.iterdir()) == []


def test_one_writer_per_output_folder(tmp_path: Path) -> None:
    """The work folder's lock: a second holder is told which process writes; the folder
    goes on release unless kept; a folder of that name that is not mmaudit's is refused."""
    import os

    from mmaudit.engine.errors import MmauditError
    from mmaudit.report.folder import WorkLock

    first = WorkLock(tmp_path / "rep").acquire()
    assert first.created and (tmp_path / ".rep.work" / "owner.json").is_file()
    with pytest.raises(
        MmauditError, match=rf"^another mmaudit run, pid {os.getpid()}, is writing /.*/rep$"
    ):
        WorkLock(tmp_path / "rep").acquire()
    (tmp_path / ".rep.work" / "meta.json").write_text("{}")
    first.release(keep=True)
    assert [p.name for p in (tmp_path / ".rep.work").iterdir()] == ["meta.json"]
    again = WorkLock(tmp_path / "rep").acquire()
    assert not again.created
    again.release(keep=False)
    assert not (tmp_path / ".rep.work").exists()
    (tmp_path / ".rep.work").mkdir()
    (tmp_path / ".rep.work" / "thesis.tex").write_text("mine")
    with pytest.raises(MmauditError, match=r"not mmaudit's resume folder \(it holds thesis.tex"):
        WorkLock(tmp_path / "rep").acquire()
    assert (tmp_path / ".rep.work" / "thesis.tex").read_text() == "mine"


def _judged_report(fail_on_skipped: bool) -> Any:
    from mmaudit.report.document import CheckReport, Report

    checks = {
        "probing": CheckReport(
            name="probing", status="skipped", judged=0, rows_used=0, rows_total=12,
            reason="no attribute could be probed: sex (F 8 / M 4 rows)",
            metrics={"positive_control.auroc": {"value": 0.9, "ci_low": 0.8, "ci_high": 1.0}},
        ),
        "saliency": CheckReport(
            name="saliency", status="pass", judged=13, rows_used=40, rows_total=40,
            coverage=["20 of 40 image rows have a usable (non-empty) ROI mask (the others:"
                      " 20 empty); off-ROI statistics, pointing and rank accuracy use those 20"],
            notes=["a note"],
        ),
    }  # fmt: skip
    return Report(
        tool_version="t", created="c", config={}, config_path="", model={}, data={},
        environment={}, seed=0, checks=checks, fail_on_skipped=fail_on_skipped,
        checks_not_run={"attention": "not requested (--checks)"},
    )  # fmt: skip


def test_views_show_what_was_tested_coverage_and_skip_reasons(tmp_path: Path) -> None:
    """summary.md and index.html show per check what it tested, the coverage notes with
    their counts, and a skipped check's reason (not its metrics)."""
    from mmaudit.report.html import render_html
    from mmaudit.report.markdown import render_markdown

    report = _judged_report(False)
    md = render_markdown(report)
    assert "| check | status | key metrics | tested |" in md
    reason = "no attribute could be probed: sex (F 8 / M 4 rows)"
    assert f"| probing | ⏭️ skipped | {reason} | none |" in md
    saliency = md.split("| saliency | ✅ pass |")[1].split("\n")[0]
    assert saliency.endswith(" 13 tests on 40/40 rows |")
    assert "| attention | ⏭️ not run | not requested (--checks) | |" in md
    assert "**Coverage**" in md
    assert "- `saliency`: 20 of 40 image rows have a usable (non-empty) ROI mask" in md
    html = render_html(tmp_path, report)
    assert "13 tests on 40/40 rows" in html
    assert "coverage:\n20 of 40 image rows have a usable (non-empty) ROI mask" in html
    assert "<td>no attribute could be probed: sex (F 8 / M 4 rows)</td>" in html
    assert "<em>a note</em>" in html  # the other notes stay in the check's section


def test_junit_marks_skipped_checks_failures_under_fail_on_skipped() -> None:
    """With fail_on_skipped a skipped (planned) check is a failure naming why; a check not
    run (--checks) stays skipped: it was not planned. Without it both are skipped."""
    from mmaudit.report.junit import render_junit

    for flag, failures, skipped in ((True, "1", "1"), (False, "0", "2")):
        suite = ET.fromstring(render_junit(_judged_report(flag))).find("testsuite")
        assert suite is not None
        assert (suite.get("failures"), suite.get("skipped")) == (failures, skipped), flag
        props = {p.get("name"): p.get("value") for p in suite.iter("property")}
        assert props["fail_on_skipped"] == str(flag).lower()
        cases = {c.get("name"): c for c in suite.iter("testcase")}
        probing = cases["probing"].find("failure" if flag else "skipped")
        assert probing is not None and "no attribute could be probed" in probing.get("message")
        assert cases["attention"].find("skipped") is not None


def test_redaction_reaches_coverage_notes() -> None:
    """Coverage notes can name rows; --redact hashes ids in them like in any note."""
    from mmaudit.report.document import CheckReport, Report

    red = Redactor(["s0012"], [], salt="k")
    check = CheckReport(name="x", status="pass", coverage=["left out: s0012 (no mask)"])
    report = Report(
        tool_version="t", created="c", config={}, config_path="", model={}, data={},
        environment={}, seed=0, checks={"x": check},
    )  # fmt: skip
    red.report(report)
    assert report.checks["x"].coverage == [f"left out: {hash_id('s0012', 'k')} (no mask)"]
