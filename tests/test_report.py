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
from mmaudit.errors import ReportError
from mmaudit.report import Redactor, hash_id, load_report
from mmaudit.runner import Overrides, run_audit

ROOT = Path(__file__).resolve().parents[1]
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
        assert "<script" not in html.lower(), name
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
    from mmaudit.check import Finding
    from mmaudit.report import CheckReport, Report

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

    from mmaudit.report import CheckReport, Report, ReportWriter

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
    from mmaudit.report import CheckReport, Report

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
    from mmaudit.report import ReportWriter

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
    from mmaudit.check import CheckOutput
    from mmaudit.report import ReportWriter

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
    from mmaudit.check import Finding
    from mmaudit.render import render_junit

    folder = hostile["plain"]
    report = load_report(folder)
    md = (folder / "summary.md").read_text()
    assert md.startswith("## mmaudit:") and "| performance |" in md
    folded = md.split("<details>")[0] + md.split("</details>")[-1]  # the glossary is folded
    assert len(folded.splitlines()) < 40 and "<script" not in md
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

    assert check_junit((folder / "junit.xml").read_text()) == 0
    # a fail finding (with a payload) is a failure of its own testcase and of its check
    perf = report.checks["performance"]
    perf.findings.append(
        Finding(check="performance", rule="r", severity="fail", message=PAYLOAD, metric="auroc")
    )
    perf.status = "fail"
    xml = render_junit(report)
    assert check_junit(xml) == 2 and "<script" not in xml


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
    (folder / "report.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit) as exc:
        main(["show", str(folder)])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "auroc.[/x]" in out and "group [bold] [/x]" in out


def test_markdown_cells_keep_data_literal() -> None:
    from mmaudit.render import markdown_cell

    cell = markdown_cell("a|b [x](http://e.test) ![](http://e.test/i.png) <b>\nz")
    assert "](" not in cell.replace("\\](", "") and "<b>" not in cell and "\n" not in cell
    assert cell.startswith("a\\|b \\[x\\]")


def test_table_preview_tolerates_empty_and_broken_csv(
    hostile: dict[str, Path], tmp_path: Path
) -> None:
    from mmaudit.render import _table_preview, render_html

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
    (broken / "report.json").write_text(json.dumps(data))
    with pytest.raises(ReportError, match="outside the report folder"):
        load_report(broken)
    data["checks"]["performance"]["figures"] = {}
    del data["model"]
    (broken / "report.json").write_text(json.dumps(data))
    with pytest.raises(ReportError, match="malformed"):
        load_report(broken)


def _gated_report(n_warn: int, fail_on: str = "fail") -> Any:
    """A report with known verdicts: check a warns (``n_warn`` warn findings), b fails (one
    fail finding), c errored, d was skipped, e passed."""
    from mmaudit.check import Finding
    from mmaudit.report import CheckReport, Report

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
    from mmaudit.render import SUMMARY_FINDINGS, render_markdown

    def findings(md: str) -> list[str]:
        return [ln for ln in md.splitlines() if re.match(r"- (warn|fail|…)", ln)]

    few = findings(render_markdown(_gated_report(n_warn=2)))
    assert few == ["- fail `b`: the fail", "- warn `a`: w0", "- warn `a`: w1"]
    many = findings(render_markdown(_gated_report(n_warn=SUMMARY_FINDINGS + 4)))
    assert len(many) == SUMMARY_FINDINGS + 1 and many[0] == "- fail `b`: the fail"
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
    from mmaudit.render import render_junit

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
    from mmaudit.report import ReportWriter

    out = ReportWriter(tmp_path / "rep").finish(_gated_report(1, "warn"), "{}\n")
    assert load_report(out).fail_on == "warn"
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "4"  # a, a.r.m0, b, b.r.m
    data = json.loads((out / "report.json").read_text())
    del data["fail_on"]  # a report written before the field existed
    (out / "report.json").write_text(json.dumps(data))
    assert load_report(out).fail_on == "fail"


def test_narrowed_run_lists_the_checks_not_run_in_every_view(hostile: dict[str, Path]) -> None:
    """The hostile audit ran with --checks (4 of the 8 checks): report.json, summary.md,
    index.html and junit.xml all name the other 4 as not run, and config.yaml reruns the
    same 4."""
    from mmaudit.check import load_builtin_checks
    from mmaudit.config import load_config
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
    from mmaudit.render import render_markdown

    return render_markdown(report)


def test_key_metrics_lead_with_the_metrics_the_findings_judged() -> None:
    from mmaudit.check import Finding
    from mmaudit.render import key_metrics

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
    from mmaudit.render import render_html

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
    assert "8.6e-19" not in html and "0.000" not in html.split("tiny_p")[1].split("</tr>")[0]
    assert "&lt; 0.001" in html.split("tiny_p")[1].split("</tr>")[0]
    assert "<td>0.250</td>" in html  # a p above the bound keeps its digits
    # the real report: numbers and no NaN either
    assert not re.search(r">\s*nan\s*<", (hostile["plain"] / "index.html").read_text(), re.I)


def test_glossary_in_html_and_the_terms_summary_md_uses() -> None:
    from mmaudit.render import GLOSSARY, render_markdown, summary_terms

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
    from mmaudit.report import ReportWriter

    out = ReportWriter(tmp_path / "rep").finish(_gated_report(1), "{}\n")
    data = json.loads((out / "report.json").read_text())
    del data["checks_requested"], data["checks_not_run"]  # written before the fields
    (out / "report.json").write_text(json.dumps(data))
    old = load_report(out)
    assert old.checks_requested is None and old.checks_not_run == {}
