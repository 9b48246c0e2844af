"""`mmaudit diff`: self-diff is a no-op, retraining moves are judged, bad report pairs refused."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmaudit.cli import main
from mmaudit.engine.errors import ReportError
from mmaudit.report.diff import (
    STATUS_RANK,
    diff_reports,
    metric_direction,
    parse_tolerances,
    tolerance_for,
)
from mmaudit.report.document import CheckReport, load_report

ROOT = Path(__file__).resolve().parents[2]


def _copy(src: Path, dst: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """A copy of a report folder, with report.json edited by ``edit`` (and resealed: these
    copies stand for audits that came out this way, not for tampering)."""
    shutil.copytree(src, dst)
    if edit is not None:
        _edit_json(dst, edit)
    return dst


def _cli(args: list[str], capsys) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_self_diff_has_no_changes_and_cka_one(audits: dict[str, Path]) -> None:
    d = diff_reports(audits["shortcut"], audits["shortcut"])
    assert d.comparable and not d.regressions and not d.status_changes
    assert not d.new_findings and not d.resolved_findings and not d.improved_findings
    assert all(m.delta == 0 and not m.significant for m in d.metrics if m.delta is not None)
    assert d.prediction_churn == 0.0 and d.shared_samples == 293
    assert d.representation and all(
        v["cka"] == pytest.approx(1.0) and v["cka_debiased"] == pytest.approx(1.0)
        for v in d.representation.values()
    )
    assert d.array_rank_correlation["saliency.map.ig"] == pytest.approx(1.0)


def test_random_init_is_far_from_trained(audits: dict[str, Path]) -> None:
    d = diff_reports(audits["shortcut"], audits["random"])
    assert d.representation["embedding"]["cka"] < 0.2  # 0.07 measured; trained vs trained 0.68
    assert any(m.metric == "auroc" and m.regression for m in d.metrics)


def test_shortcut_to_clean_moves_are_paired_and_directional(audits: dict[str, Path]) -> None:
    d = diff_reports(audits["shortcut"], audits["clean"])
    perf = {m.metric: m for m in d.metrics if m.check == "performance"}
    for name in ("auroc", "auprc", "accuracy", "ece"):
        assert perf[name].method == "paired_bootstrap", name
        assert perf[name].direction == ("lower" if name == "ece" else "higher")
    neutral = [m for m in d.metrics if m.metric.startswith("missing.") or m.metric == "n"]
    assert neutral and not any(m.regression for m in neutral)
    assert 0 < (d.prediction_churn or 0) < 0.5
    # saliency statistics that are per-sample means are paired on the per-sample table
    assert any(m.check == "saliency" and m.method.endswith("(per_sample)") for m in d.metrics)
    # the marker finding is resolved; what regresses is the clean model's calibration and
    # discrimination (a real cost of removing the shortcut), nothing in saliency
    assert any(f.check == "saliency" and f.rule == "hotspot_used" for f in d.resolved_findings)
    assert d.regressions and all(r.startswith("performance") for r in d.regressions)
    rho = d.array_rank_correlation["saliency.map.ig"]
    assert rho is not None and 0.2 < rho < 0.95


def test_clean_to_shortcut_fails_the_gate(audits: dict[str, Path], capsys) -> None:  # type: ignore[no-untyped-def]
    d = diff_reports(audits["clean"], audits["shortcut"])
    assert any(f.check == "saliency" and f.rule == "hotspot_used" for f in d.new_findings)
    rc, out, _ = _cli(
        ["diff", str(audits["clean"]), str(audits["shortcut"]), "--fail-on-regression"], capsys
    )
    assert rc == 1 and "hotspot" in out


def test_cli_diff_writes_files_and_gates(audits: dict[str, Path], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "d"
    args = ["diff", str(audits["shortcut"]), str(audits["shortcut"]), "-o", str(out)]
    rc, _, _ = _cli([*args, "--fail-on-regression"], capsys)
    assert rc == 0
    assert json.loads((out / "diff.json").read_text())["regressions"] == []
    md = (out / "diff.md").read_text()
    assert md.startswith("## mmaudit diff") and "debiased" in md and "rank correlation" in md
    rc, stdout, _ = _cli(
        ["diff", str(audits["shortcut"]), str(audits["random"]), "--fail-on-regression", "--json"],
        capsys,
    )
    assert rc == 1 and json.loads(stdout)["regressions"]


def test_cli_markdown_tolerance_and_exclusive_outputs(audits: dict[str, Path], capsys) -> None:  # type: ignore[no-untyped-def]
    pair = [str(audits["shortcut"]), str(audits["clean"])]
    rc, out, _ = _cli(["diff", *pair, "--markdown"], capsys)
    assert rc == 0 and out.startswith("## mmaudit diff: ❌ regressed")
    assert "Linear CKA per layer: embedding" in out and "(debiased" in out
    assert "saliency.map.ig" in out and "| verdict |" in out
    rc, _, err = _cli(["diff", *pair, "--json", "--markdown"], capsys)
    assert rc == 2 and "choose one" in err and "Traceback" not in err

    def perf_regressions(extra: list[str]) -> list[str]:
        rc, out, _ = _cli(["diff", *pair, "--json", *extra], capsys)
        assert rc == 0
        return [r for r in json.loads(out)["regressions"] if r.startswith("performance.")]

    assert perf_regressions([])  # AUROC and ECE move beyond the default tolerance
    assert not perf_regressions(["--tolerance", "performance.*=1"])
    rc, _, err = _cli(["diff", *pair, "--tolerance", "auroc=lots"], capsys)
    assert rc == 2 and "--tolerance" in err


def test_terminal_lists_regressions_first_and_escapes_markup(
    audits: dict[str, Path], tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    def plant(value: float) -> Callable[[dict[str, Any]], None]:
        def edit(data: dict[str, Any]) -> None:
            est = {"value": value, "ci_low": value - 0.01, "ci_high": value + 0.01}
            data["checks"]["saliency"]["metrics"]["by_attr.[/x].[bold]"] = est

        return edit

    a = _copy(audits["shortcut"], tmp_path / "a", plant(0.1))
    b = _copy(audits["shortcut"], tmp_path / "b", plant(0.5))
    rc, out, err = _cli(["diff", str(a), str(b)], capsys)
    assert rc == 0, err
    assert "by_attr.[/x].[bold]" in out and "moved" in out


def test_not_comparable_unless_forced(audits: dict[str, Path], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    def other_data(data: dict[str, Any]) -> None:
        data["data"]["sha256"] = "0" * 64

    other = _copy(audits["clean"], tmp_path / "other", other_data)
    with pytest.raises(ReportError, match="not comparable"):
        diff_reports(audits["shortcut"], other)
    assert diff_reports(audits["shortcut"], other, force=True).not_comparable_reasons
    rc, _, err = _cli(["diff", str(audits["shortcut"]), str(other)], capsys)
    assert rc == 2 and "not comparable" in err


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda d: d["config"]["data"]["image"].update(size=32), "data.image.size"),
        (lambda d: d["config"]["data"]["text"].update(max_length=8), "data.text.max_length"),
        (lambda d: d["data"].update(tokenizer_sha256="0" * 64), "the tokenizers differ"),
        (lambda d: d.update(seed=7), "seed"),
        (
            lambda d: d["checks"]["performance"]["params"].update(threshold=0.3),
            "checks.performance.params.threshold",
        ),
    ],
)
def test_config_differences_that_matter_are_not_comparable(
    audits: dict[str, Path], tmp_path: Path, edit: Callable[[dict[str, Any]], None], reason: str
) -> None:
    other = _copy(audits["clean"], tmp_path / "other", edit)
    with pytest.raises(ReportError, match=re.escape(reason)):
        diff_reports(audits["shortcut"], other)
    assert reason in " ".join(diff_reports(audits["shortcut"], other, force=True).notes)


def test_moved_files_and_new_thresholds_stay_comparable(
    audits: dict[str, Path], tmp_path: Path
) -> None:
    """The same data and tokenizer under another folder (a CI job's workspace) is the same
    audit; a tightened threshold changes verdicts, not numbers, so it is only noted."""
    assert load_report(audits["shortcut"]).data["tokenizer_sha256"]

    def elsewhere(d: dict[str, Any]) -> None:
        data = d["config"]["data"]
        data["manifest"] = "/ci/job7/sample_data/manifest.csv"
        data["image"]["root"] = "/ci/job7/sample_data"
        data["text"]["tokenizer"] = "/ci/job7/sample_data/tokenizer"
        d["checks"]["saliency"]["thresholds"]["hotspot_used"].update(fail_above=9)

    other = _copy(audits["clean"], tmp_path / "other", elsewhere)
    result = diff_reports(audits["shortcut"], other)
    assert result.comparable and not result.not_comparable_reasons
    notes = " ".join(result.notes)
    assert "checks.saliency.thresholds.hotspot_used.fail_above" in notes
    assert "tokenizer" not in notes and "manifest" not in notes


def test_missing_per_sample_files_are_noted_not_fatal(
    audits: dict[str, Path], tmp_path: Path
) -> None:
    """A report from before digests whose samples/saliency.* was trimmed still diffs:
    saliency metrics fall back to CI overlap, no rank correlation is computed, and the notes
    say why (a sealed report missing a file is refused: see the next test)."""
    other = _old(_copy(audits["clean"], tmp_path / "other"))
    (other / "samples" / "saliency.parquet").unlink()
    (other / "samples" / "saliency.npz").unlink()
    result = diff_reports(audits["shortcut"], other)
    assert result.array_rank_correlation == {}
    notes = " ".join(result.notes)
    assert "samples/saliency.parquet" in notes and "saliency: per-sample maps missing" in notes
    assert result.prediction_churn is not None  # predictions.parquet is still paired
    full = diff_reports(audits["shortcut"], audits["clean"])
    assert full.array_rank_correlation and "missing" not in " ".join(full.notes)


def test_deleted_report_files_are_refused(audits: dict[str, Path], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The stranger's test: a deleted predictions.parquet made ``diff`` exit 0 "no
    regressions" without its paired test and churn, a deleted summary.md passed ``show``.
    A file report.json recorded and that is gone no longer matches: exit 2 naming it."""
    gone = _copy(audits["clean"], tmp_path / "gone")
    (gone / "samples" / "predictions.parquet").unlink()
    for pair in ([audits["shortcut"], gone], [gone, audits["shortcut"]]):
        rc, out, err = _cli(["diff", *map(str, pair)], capsys)
        assert rc == 2 and "no regressions" not in out, out
        assert (
            f"{gone / 'samples' / 'predictions.parquet'}: recorded in report.json but missing"
            in err
        ), err
        assert "re-run the audit" in err and "Traceback" not in err
    summary = _copy(audits["clean"], tmp_path / "summary")
    (summary / "summary.md").unlink()
    rc, out, err = _cli(["show", str(summary)], capsys)
    assert rc == 2 and f"{summary / 'summary.md'}: recorded in report.json but missing" in err
    assert "mmaudit:" not in out  # nothing printed from a report that no longer matches
    rc, _, err = _cli(["show", str(audits["clean"])], capsys)
    assert rc == 0, err


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda f: _edit_json(
                f, lambda d: d["checks"]["performance"]["metrics"]["auroc"].update(value="high")
            ),
            "not a number",
        ),
        # a hand-edited value or a changed per-sample file: named, whatever it did
        (lambda f: _edit_auroc(f), "report.json: its content does not match the digest"),
        (
            lambda f: _truncate(f / "samples" / "predictions.parquet"),
            "samples/predictions.parquet: does not match the sha256",
        ),
        (lambda f: _flip_byte(f / "samples" / "saliency.npz"), "saliency.npz: does not match"),
        (
            lambda f: (f / "samples" / "saliency.npz").unlink(),
            "samples/saliency.npz: recorded in report.json but missing",
        ),
        (lambda f: _truncate(f / "samples" / "embeddings.npz"), "embeddings.npz: does not match"),
        (
            lambda f: shutil.copy(f / "samples" / "saliency.npz", f / "samples" / "ablation.npz"),
            "samples/ablation.npz: not written by this audit",
        ),
        (
            lambda f: _edit_json(f, lambda d: d.pop("integrity"), reseal=False),
            "report.json: its digests were removed",
        ),
        # a report from before digests: the readers still catch what they can
        (lambda f: _truncate(_old(f) / "samples" / "predictions.parquet"), "unreadable parquet"),
        (lambda f: _truncate(_old(f) / "samples" / "embeddings.npz"), "unreadable npz"),
        (lambda f: _truncate(_old(f) / "samples" / "saliency.npz"), "unreadable npz"),
        (lambda f: _truncate(_old(f) / "samples" / "saliency.parquet"), "unreadable parquet"),
        (lambda f: _edit_json(f, lambda d: d.update(schema_version=2)), "schema_version 2"),
        (
            lambda f: _edit_json(
                f, lambda d: d["checks"]["saliency"]["figures"].update(x="../../etc/passwd")
            ),
            "outside the report folder",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    audits: dict[str, Path], tmp_path: Path, capsys, damage, message: str
) -> None:  # type: ignore[no-untyped-def]
    bad = _copy(audits["clean"], tmp_path / "bad")
    damage(bad)
    out = tmp_path / "out"
    rc, _, err = _cli(["diff", str(audits["shortcut"]), str(bad), "-o", str(out)], capsys)
    assert rc == 2, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing written


def _edit_json(folder: Path, edit: Callable[[dict[str, Any]], None], reseal: bool = True) -> None:
    """Edit report.json; with ``reseal`` its digest is recomputed (as only a deliberate
    forgery would), so the readers behind the digest check are reached."""
    from mmaudit.report.seal import report_digest

    data = json.loads((folder / "report.json").read_text())
    edit(data)
    if reseal and data.get("integrity"):
        data["integrity"]["report_sha256"] = report_digest(data)
    (folder / "report.json").write_text(json.dumps(data))


def _edit_auroc(folder: Path) -> None:
    """The issue's hand edit: AUROC set to 0.5, digest left as it was."""
    _edit_json(
        folder,
        lambda d: d["checks"]["performance"]["metrics"]["auroc"].update(value=0.5),
        reseal=False,
    )


def _flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _old(folder: Path) -> Path:
    """``folder`` made a report from before digests: no integrity record, no marker."""
    _edit_json(folder, lambda d: d.pop("integrity"), reseal=False)
    (folder / ".mmaudit-report").unlink()
    return folder


def test_edited_reports_are_refused_and_old_ones_noted(
    audits: dict[str, Path], tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """The issue: AUROC hand-edited to 0.5 passed as "not significant". Now exit 2 naming
    report.json, in either position; a report from before digests diffs with a note."""
    edited = _copy(audits["shortcut"], tmp_path / "edited")
    _edit_auroc(edited)
    for pair in ([audits["shortcut"], edited], [edited, audits["shortcut"]]):
        rc, _, err = _cli(["diff", *map(str, pair)], capsys)
        assert rc == 2 and f"{edited / 'report.json'}: its content does not match" in err, err
    old = _old(_copy(audits["shortcut"], tmp_path / "old"))
    result = diff_reports(audits["shortcut"], old)
    assert not result.regressions
    assert any(f"new report ({old}) records no digests" in n for n in result.notes)


def test_refuses_to_overwrite_foreign_folder(audits: dict[str, Path], tmp_path: Path) -> None:
    foreign = tmp_path / "keep"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("x")
    with pytest.raises(SystemExit) as exc:
        main(["diff", str(audits["shortcut"]), str(audits["shortcut"]), "-o", str(foreign)])
    assert exc.value.code == 2 and (foreign / "mine.txt").read_text() == "x"


def test_status_ranks_and_finding_downgrades() -> None:
    from mmaudit.checks.contract import Finding
    from mmaudit.report.diff import DiffResult
    from mmaudit.report.diff.compare import _diff_findings

    def check(status: str, severity: str | None) -> CheckReport:
        findings = (
            [Finding(check="c", rule="r", severity=severity, message="m")] if severity else []
        )
        return CheckReport(name="c", status=status, findings=findings)  # type: ignore[arg-type]

    assert STATUS_RANK["skipped"] < STATUS_RANK["fail"]
    result = DiffResult(base="a", new="b", comparable=True)
    _diff_findings("c", check("fail", "fail"), check("warn", "warn"), result)
    assert [f.was for f in result.improved_findings] == ["fail"] and not result.regressions
    result = DiffResult(base="a", new="b", comparable=True)
    _diff_findings("c", check("warn", "warn"), check("fail", "fail"), result)
    assert [f.was for f in result.new_findings] == ["warn"] and result.regressions


def test_pass_to_skipped_loses_coverage_and_is_a_regression() -> None:
    """Skipped means the check tested nothing: a check that passed in the base audit and is
    skipped in the new one leaves what it covered unchecked (a green gate on nothing), as
    warn / fail -> skipped does. skipped -> pass and error -> skipped are not regressions."""
    from mmaudit.report.diff import DiffResult
    from mmaudit.report.diff.compare import _diff_status

    def check(status: str, reason: str | None = None) -> CheckReport:
        return CheckReport(name="probing", status=status, reason=reason)

    for base in ("pass", "warn", "fail"):
        result = DiffResult(base="a", new="b", comparable=True)
        _diff_status("probing", check(base), check("skipped", "no attribute probed"), result)
        assert result.status_changes == [
            {"check": "probing", "base": base, "new": "skipped", "worse": True, "better": False}
        ]
        assert len(result.regressions) == 1, result.regressions
        regression = result.regressions[0]
        assert regression.startswith(f"probing: status {base} -> skipped (skipped: no attribute")
        assert "--ignore-check probing" in regression
        why = "tested nothing this time" if base == "pass" else "findings were not re-checked"
        assert why in regression, regression
    for base, new in (("skipped", "pass"), ("error", "skipped"), ("pass", "pass")):
        result = DiffResult(base="a", new="b", comparable=True)
        _diff_status("probing", check(base), check(new), result)
        assert not result.regressions, (base, new)


def test_skipped_to_fail_is_a_regression(audits: dict[str, Path], tmp_path: Path) -> None:
    def skip(data: dict[str, Any]) -> None:
        data["checks"]["saliency"].update(status="skipped", findings=[], metrics={})

    base = _copy(audits["shortcut"], tmp_path / "skipped", skip)
    d = diff_reports(base, audits["shortcut"])
    assert "saliency: status skipped -> fail" in d.regressions
    # and back: a failing check that is skipped next time leaves its finding unchecked
    back = diff_reports(audits["shortcut"], base)
    assert [s["worse"] for s in back.status_changes] == [True]
    assert any(r.startswith("saliency: status fail -> skipped") for r in back.regressions)


def test_fail_to_error_is_a_regression_and_resolves_nothing(
    audits: dict[str, Path], tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """The shortcut audit's saliency fails (hotspot_used); a crash of that check in the new
    audit must not pass the gate, nor list the hotspot finding as resolved."""

    def crash(data: dict[str, Any]) -> None:
        data["checks"]["saliency"].update(
            status="error", findings=[], metrics={}, reason="TypeError: boom\nmore"
        )

    assert STATUS_RANK["error"] > STATUS_RANK["fail"]
    crashed = _copy(audits["shortcut"], tmp_path / "crashed", crash)
    d = diff_reports(audits["shortcut"], crashed)
    assert d.regressions == ["saliency: status fail -> error (crashed: TypeError: boom)"]
    assert not any(f.check == "saliency" for f in d.resolved_findings)
    assert any(n.startswith("saliency:") and "not re-checked" in n for n in d.notes)
    rc, out, _ = _cli(
        ["diff", str(audits["shortcut"]), str(crashed), "--fail-on-regression"], capsys
    )
    assert rc == 1 and "saliency: fail -> error" in out
    # the clean counterpart: the check runs again and fails as before
    back = diff_reports(crashed, audits["shortcut"])
    assert [s["better"] for s in back.status_changes] == [True]
    assert not any(r.startswith("saliency: status") for r in back.regressions)


def test_a_check_missing_from_the_new_report_is_a_regression(
    audits: dict[str, Path], tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    def drop(data: dict[str, Any]) -> None:
        del data["checks"]["saliency"]

    without = _copy(audits["shortcut"], tmp_path / "without", drop)
    d = diff_reports(audits["shortcut"], without)
    assert d.missing_checks == ["saliency"] and len(d.regressions) == 1
    assert "--ignore-check saliency" in d.regressions[0]
    rc, out, _ = _cli(
        ["diff", str(audits["shortcut"]), str(without), "--fail-on-regression"], capsys
    )
    assert rc == 1 and "missing saliency" in out
    rc, _, _ = _cli(
        [
            "diff",
            str(audits["shortcut"]),
            str(without),
            "--fail-on-regression",
            "--ignore-check",
            "saliency",
        ],
        capsys,
    )
    assert rc == 0
    # left out on purpose: nothing of saliency is compared, the rest is
    ignored = diff_reports(audits["shortcut"], without, ignore_checks=["saliency"])
    assert not ignored.regressions and not ignored.missing_checks
    assert ignored.ignored_checks == ["saliency"]
    assert ignored.metrics and not any(m.check == "saliency" for m in ignored.metrics)
    assert "saliency.map.ig" not in ignored.array_rank_correlation
    with pytest.raises(ReportError, match="neither report ran it") as exc:
        diff_reports(audits["shortcut"], without, ignore_checks=["salency"])
    assert "did you mean 'saliency'" in (exc.value.hint or "")
    # only in the new report, or skipped in the base: nothing is lost, a note only
    assert not diff_reports(without, audits["shortcut"]).regressions

    def skip(data: dict[str, Any]) -> None:
        data["checks"]["saliency"].update(status="skipped", findings=[], metrics={})

    skipped = _copy(audits["shortcut"], tmp_path / "skipped", skip)
    d = diff_reports(skipped, without)
    assert not d.regressions and any("skipped there" in n for n in d.notes)


def test_directions_table_rules_and_tolerance_patterns() -> None:
    check = CheckReport(
        name="c",
        status="pass",
        thresholds={
            "low": {"metric": "auroc*", "warn_below": 0.7},
            "high": {"metric": "ece", "warn_above": 0.1},
        },
    )
    assert metric_direction("auroc", check) == "higher"
    assert metric_direction("ece", check) == "lower"
    assert metric_direction("n", check) == "neutral"
    perf = CheckReport(name="performance", status="pass")  # no rules: the table speaks
    for name, direction in [("auprc", "higher"), ("accuracy", "higher"), ("ece", "lower")]:
        assert metric_direction(name, perf) == direction
    assert metric_direction("balanced_accuracy", perf) == "higher"
    assert metric_direction("prevalence", perf) == "neutral"
    sub = CheckReport(name="subgroups", status="pass")
    assert metric_direction("gap.auroc.site", sub) == "lower"
    probing = CheckReport(
        name="probing",
        status="pass",
        thresholds={"e": {"metric": "probe_auroc.*", "warn_above": 0.7}},
    )
    assert metric_direction("probe_auroc.site.embedding", probing) == "lower"
    tol = parse_tolerances(["0.05", "performance.auroc=0.2", "performance.*=0.1"])
    assert tolerance_for("performance.auroc", tol) == 0.2
    assert tolerance_for("performance.ece", tol) == 0.1
    assert tolerance_for("saliency.x", tol) == 0.05
    with pytest.raises(ReportError):
        parse_tolerances(["auroc=lots"])


def test_paired_bootstrap_resamples_patients(audits: dict[str, Path]) -> None:
    """Ten copies of each of 30 patients: an accuracy gain of 2 patients out of 30 looks
    certain when the 300 rows are resampled as if independent, and is not when whole
    patients are (which is what the audit's own CIs do)."""
    import pandas as pd

    from mmaudit.report.diff import Samples
    from mmaudit.report.diff.pairing import paired_move as _paired

    rng = np.random.default_rng(0)
    patients = np.repeat([f"p{i}" for i in range(30)], 10)
    y = np.repeat(rng.integers(0, 2, 30), 10)
    right_a = np.repeat(np.arange(30) >= 12, 10)  # 18 of 30 patients right
    right_b = np.repeat(np.arange(30) >= 10, 10)  # 20 of 30 right
    ids = [f"s{k}" for k in range(300)]

    def frame(right: np.ndarray) -> pd.DataFrame:
        prob = np.where(right, np.where(y == 1, 0.8, 0.2), np.where(y == 1, 0.2, 0.8))
        return pd.DataFrame({"id": ids, "target": y, "prob.0": prob})

    def check(right: np.ndarray) -> CheckReport:
        acc = float(np.mean(right))
        est = {"value": acc, "ci_low": acc - 0.2, "ci_high": acc + 0.2}
        return CheckReport(name="performance", status="pass", metrics={"accuracy": est})

    report = load_report(audits["shortcut"])

    def samples(right: np.ndarray, with_patients: bool) -> Samples:
        s = Samples(folder=Path("."), report=report, predictions=frame(right))
        s.patients = dict(zip(ids, patients, strict=True)) if with_patients else {}
        return s

    a, b = check(right_a), check(right_b)
    rows = _paired(
        "performance", "accuracy", a, b, samples(right_a, False), samples(right_b, False), 0
    )
    by_patient = _paired(
        "performance", "accuracy", a, b, samples(right_a, True), samples(right_b, True), 0
    )
    assert rows is not None and by_patient is not None
    assert rows[0] == pytest.approx(2 / 30) == by_patient[0]
    assert rows[1] and not by_patient[1]  # significant only when rows are treated as patients
    # a stored value the saved predictions do not reproduce is not paired
    off = check(right_b)
    off.metrics["accuracy"]["value"] = 0.5
    assert (
        _paired(
            "performance", "accuracy", a, off, samples(right_a, True), samples(right_b, True), 0
        )
        is None
    )


def test_redacted_reports_explain_why_they_do_not_pair(audits: dict[str, Path]) -> None:
    from mmaudit.report.diff import Samples
    from mmaudit.report.diff.representation import _no_shared_ids_note

    report = load_report(audits["shortcut"])
    salted = report.model_copy(
        update={"data": {**report.data, "redacted": True, "id_hash": "random salt"}}
    )
    plain, red = Samples(Path("."), report), Samples(Path("."), salted)
    assert "MMAUDIT_REDACT_SALT" in _no_shared_ids_note(red, red, "no CKA")
    assert "one report is redacted" in _no_shared_ids_note(plain, red, "no CKA")
    assert _no_shared_ids_note(plain, plain, "no CKA") == "no CKA"


def test_worse_move_inside_the_limits_is_not_a_regression() -> None:
    """Two CIs that do not overlap, both well under the warn limit: a retrained model moved,
    it did not regress. Past the limit it did."""
    from mmaudit.report.diff.compare import _diff_metric

    rules = {"r": {"metric": "off_roi_excess.*", "warn_above": 0.05, "fail_above": 0.15}}

    def check(value: float) -> CheckReport:
        est = {"value": value, "ci_low": value - 0.01, "ci_high": value + 0.01}
        return CheckReport(
            name="saliency", status="pass", metrics={"off_roi_excess.ig": est}, thresholds=rules
        )

    inside = _diff_metric("saliency", "off_roi_excess.ig", check(-0.1), check(-0.04), {})
    assert inside.significant and not inside.regression and inside.worse_within_limits
    assert inside.verdict == "worse (within limits)"
    beyond = _diff_metric("saliency", "off_roi_excess.ig", check(-0.1), check(0.08), {})
    assert beyond.regression and not beyond.worse_within_limits and beyond.verdict == "regression"
    better = _diff_metric("saliency", "off_roi_excess.ig", check(0.08), check(-0.1), {})
    assert better.improvement and not better.regression and better.verdict == "improved"
