"""`mmaudit diff`: self-diff is a no-op, retraining moves are judged, bad report pairs refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmaudit.cli import main
from mmaudit.diff import diff_reports, metric_direction, parse_tolerances, tolerance_for
from mmaudit.errors import ReportError
from mmaudit.report import CheckReport
from mmaudit.runner import Overrides, run_audit

ROOT = Path(__file__).resolve().parents[1]


def _audit(tmp: Path, checkpoint: Path, name: str, checks: list[str]) -> Path:
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "sample.yaml").read_text())
    cfg["model"]["checkpoint"] = str(checkpoint)
    cfg["data"]["manifest"] = str(ROOT / "sample_data" / "manifest.csv")
    cfg["data"]["text"]["tokenizer"] = str(ROOT / "sample_data" / "tokenizer")
    cfg["runtime"].update({"device": "cpu", "progress": False})
    # saliency keeps its default resampling: its Holm-corrected p-values need it
    cfg["checks"] = {c: {"params": {"n_boot": 200}} if c == "performance" else {} for c in checks}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp / name
    run_audit(path, out, Overrides(checks=checks))
    return out


@pytest.fixture(scope="session")
def audits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from mmaudit.models import build_model, read_spec, save_checkpoint

    tmp = tmp_path_factory.mktemp("audits")
    shortcut = ROOT / "sample_data" / "checkpoints" / "shortcut"
    spec = read_spec(shortcut)
    import torch

    torch.manual_seed(123)
    save_checkpoint(build_model(spec), spec, tmp / "random_ckpt")
    return {
        "shortcut": _audit(tmp, shortcut, "shortcut", ["performance", "saliency"]),
        "clean": _audit(
            tmp,
            ROOT / "sample_data" / "checkpoints" / "clean",
            "clean",
            ["performance", "saliency"],
        ),
        "random": _audit(tmp, tmp / "random_ckpt", "random", ["performance"]),
    }


def test_self_diff_has_no_changes_and_cka_one(audits: dict[str, Path]) -> None:
    d = diff_reports(audits["shortcut"], audits["shortcut"])
    assert d.comparable and not d.regressions and not d.status_changes
    assert not d.new_findings and not d.resolved_findings
    assert all(m.delta == 0 and not m.significant for m in d.metrics if m.delta is not None)
    assert d.prediction_churn == 0.0 and d.shared_samples == 293
    assert d.representation and all(
        v["cka"] == pytest.approx(1.0) for v in d.representation.values()
    )


def test_random_init_is_far_from_trained(audits: dict[str, Path]) -> None:
    d = diff_reports(audits["shortcut"], audits["random"])
    assert d.representation["embedding"]["cka"] < 0.6
    assert any(m.metric == "auroc" and m.regression for m in d.metrics)


def test_shortcut_to_clean_moves_are_paired_and_directional(audits: dict[str, Path]) -> None:
    d = diff_reports(audits["shortcut"], audits["clean"])
    auroc = next(m for m in d.metrics if m.check == "performance" and m.metric == "auroc")
    assert auroc.method == "paired_bootstrap" and auroc.direction == "higher"
    neutral = [m for m in d.metrics if m.metric.startswith("missing.") or m.metric == "n"]
    assert neutral and not any(m.regression for m in neutral)
    assert 0 < (d.prediction_churn or 0) < 0.5
    # the marker finding is resolved and the saliency check raises nothing new
    assert any(f.check == "saliency" and f.rule == "hotspot_used" for f in d.resolved_findings)
    assert not any(r.startswith("saliency") for r in d.regressions)
    assert "saliency.saliency_maps" in d.array_rank_correlation or d.array_rank_correlation


def test_clean_to_shortcut_fails_the_gate(audits: dict[str, Path], capsys) -> None:  # type: ignore[no-untyped-def]
    d = diff_reports(audits["clean"], audits["shortcut"])
    assert any(f.check == "saliency" and f.rule == "hotspot_used" for f in d.new_findings)
    with pytest.raises(SystemExit) as exc:
        main(["diff", str(audits["clean"]), str(audits["shortcut"]), "--fail-on-regression"])
    assert exc.value.code == 1
    assert "hotspot" in capsys.readouterr().out
    # with a tolerance larger than the move, the same diff reports no metric regression
    lenient = diff_reports(
        audits["shortcut"], audits["clean"], parse_tolerances(["performance.*=1"])
    )
    assert not any(m.regression for m in lenient.metrics)


def test_cli_diff_writes_files_and_gates(audits: dict[str, Path], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "d"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "diff",
                str(audits["shortcut"]),
                str(audits["shortcut"]),
                "-o",
                str(out),
                "--fail-on-regression",
            ]
        )
    assert exc.value.code == 0
    assert json.loads((out / "diff.json").read_text())["regressions"] == []
    assert (out / "diff.md").read_text().startswith("## mmaudit diff")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "diff",
                str(audits["shortcut"]),
                str(audits["random"]),
                "--fail-on-regression",
                "--json",
            ]
        )
    assert exc.value.code == 1
    assert json.loads(capsys.readouterr().out)["regressions"]


def test_not_comparable_unless_forced(audits: dict[str, Path], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path / "other"
    shutil.copytree(audits["clean"], other)
    data = json.loads((other / "report.json").read_text())
    data["data"]["sha256"] = "0" * 64
    (other / "report.json").write_text(json.dumps(data))
    with pytest.raises(ReportError, match="not comparable"):
        diff_reports(audits["shortcut"], other)
    assert diff_reports(audits["shortcut"], other, force=True).not_comparable_reasons
    with pytest.raises(SystemExit) as exc:
        main(["diff", str(audits["shortcut"]), str(other)])
    assert exc.value.code == 2 and "not comparable" in capsys.readouterr().err


def test_refuses_to_overwrite_foreign_folder(audits: dict[str, Path], tmp_path: Path) -> None:
    foreign = tmp_path / "keep"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("x")
    with pytest.raises(SystemExit) as exc:
        main(["diff", str(audits["shortcut"]), str(audits["shortcut"]), "-o", str(foreign)])
    assert exc.value.code == 2 and (foreign / "mine.txt").read_text() == "x"


def test_direction_from_thresholds_and_tolerance_patterns() -> None:
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
    tol = parse_tolerances(["0.05", "performance.auroc=0.2", "performance.*=0.1"])
    assert tolerance_for("performance.auroc", tol) == 0.2
    assert tolerance_for("performance.ece", tol) == 0.1
    assert tolerance_for("saliency.x", tol) == 0.05
    with pytest.raises(ReportError):
        parse_tolerances(["auroc=lots"])


def test_worse_move_inside_the_limits_is_not_a_regression() -> None:
    """Two CIs that do not overlap, both well under the warn limit: a retrained model moved,
    it did not regress. Past the limit it did."""
    from mmaudit.diff import _diff_metric

    rules = {"r": {"metric": "off_roi_excess.*", "warn_above": 0.05, "fail_above": 0.15}}

    def check(value: float) -> CheckReport:
        est = {"value": value, "ci_low": value - 0.01, "ci_high": value + 0.01}
        return CheckReport(
            name="saliency", status="pass", metrics={"off_roi_excess.ig": est}, thresholds=rules
        )

    inside = _diff_metric(
        "saliency", "off_roi_excess.ig", check(-0.1), check(-0.04), {}, None, None, 0
    )
    assert inside.significant and not inside.regression and inside.worse_within_limits
    beyond = _diff_metric(
        "saliency", "off_roi_excess.ig", check(-0.1), check(0.08), {}, None, None, 0
    )
    assert beyond.regression and not beyond.worse_within_limits
    better = _diff_metric(
        "saliency", "off_roi_excess.ig", check(0.08), check(-0.1), {}, None, None, 0
    )
    assert better.improvement and not better.regression
