"""The command line: exit codes, one clear line per kind of bad input, no half-written report."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import byo_model_config, tiny_config

from mmaudit.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.out, captured.err


@pytest.fixture()
def good(tiny_manifest: Path, tiny_weights: Path) -> dict[str, Any]:
    return tiny_config(tiny_manifest, byo_model_config(tiny_weights / "tiny.safetensors"))


def test_run_ok_and_gate(good: dict[str, Any], write_config, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config(good)
    rc, out, _ = run_cli(
        ["run", str(cfg), "-o", str(tmp_path / "rep"), "--fail-on", "never"], capsys
    )
    assert rc == 0 and "report written" in out
    # an impossible threshold makes the performance check fail, and the gate exit 1
    good["checks"] = {
        "performance": {
            "params": {"n_boot": 100},
            "thresholds": {"auroc_low": {"fail_below": 1.01}},
        }
    }
    rc, out, _ = run_cli(
        ["run", str(write_config(good, "strict.yaml")), "-o", str(tmp_path / "rep2")], capsys
    )
    assert rc == 1 and "fails the gate" in out


def test_help_and_checks_listing(capsys) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run_cli(["--help"], capsys)
    assert rc == 0 and "validate" in out
    rc, out, _ = run_cli(["checks"], capsys)
    assert rc == 0 and "performance" in out


def test_validate_ok(good: dict[str, Any], write_config, capsys) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run_cli(["validate", str(write_config(good))], capsys)
    assert rc == 0 and "48 rows" in out


def _mutate(cfg: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node = cfg
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[k]
    if value is _DELETE:
        node.pop(keys[-1])
    else:
        node[keys[-1]] = value
    return cfg


_DELETE = object()

CASES: list[tuple[str, str, Any, str]] = [
    ("unknown key", "data.targte", {"column": "label"}, "did you mean 'target'"),
    ("wrong type", "runtime.batch_size", "big", "runtime.batch_size"),
    ("missing manifest", "data.manifest", "/nonexistent/manifest.csv", "manifest not found"),
    ("missing column", "data.target", {"column": "lable"}, "did you mean 'label'"),
    (
        "tokenizer missing",
        "data.text",
        {"column": "image_path", "tokenizer": "/nonexistent/tok"},
        "tokenizer folder not found",
    ),
    ("checkpoint missing", "model", {"checkpoint": "/nonexistent/ckpt"}, "/nonexistent/ckpt"),
    (
        "factory import error",
        "model.factory",
        "nowhere_pkg.models:build",
        "cannot import module 'nowhere_pkg.models'",
    ),
    ("bad layer path", "model.layers", {"embedding": "fusion"}, "did you mean 'fuse'"),
    ("unknown check", "checks", {"perfomance": {}}, "did you mean 'performance'"),
    (
        "unknown check param",
        "checks",
        {"performance": {"params": {"nboot": 3}}},
        "did you mean 'n_boot'",
    ),
]


@pytest.mark.parametrize(("what", "path", "value", "expect"), CASES, ids=[c[0] for c in CASES])
def test_bad_config_one_line_exit_2(
    what, path, value, expect, good, write_config, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config(_mutate(good, path, value))
    out_dir = tmp_path / "report"
    rc, _, err = run_cli(["run", str(cfg), "-o", str(out_dir)], capsys)
    assert rc == 2, err
    assert expect in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out_dir.exists()


def test_cuda_where_none(good, write_config, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc, _, err = run_cli(
        ["run", str(write_config(good)), "-o", str(tmp_path / "r"), "--device", "cuda"], capsys
    )
    assert rc == 2 and "no CUDA device" in err


def test_missing_config_and_yaml_syntax(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run_cli(["run", str(tmp_path / "nope.yaml")], capsys)
    assert rc == 2 and "config file not found" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  checkpoint: [unclosed\ndata: {}\n")
    rc, _, err = run_cli(["run", str(bad)], capsys)
    assert rc == 2 and "YAML syntax error" in err and "bad.yaml:" in err


def _manifest_variant(tiny_manifest: Path, tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    folder = tmp_path / "data"
    shutil.copytree(tiny_manifest.parent, folder)
    df = pd.read_csv(folder / "manifest.csv")
    df = edit(df, folder)
    df.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def _drop_image(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    (folder / "images" / "s3.png").unlink()
    return df


def _corrupt_image(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    (folder / "images" / "s5.png").write_bytes(b"not a png")
    return df


def _nan_target(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    df["label"] = df["label"].astype(float)
    df.loc[4, "label"] = float("nan")
    return df


def _one_class(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    df["label"] = 1
    return df


def _empty(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    return df.iloc[:0]


DATA_CASES = [
    ("image missing", _drop_image, "row 5 (id 's3'): image file not found"),
    ("image undecodable", _corrupt_image, "cannot decode image"),
    ("NaN target", _nan_target, "row 6: target column 'label' is empty"),
    ("one class", _one_class, "has one class only"),
    ("empty manifest", _empty, "has no rows"),
]


@pytest.mark.parametrize(("what", "edit", "expect"), DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_one_line_exit_2(
    what, edit, expect, good, tiny_manifest, write_config, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    good["data"]["manifest"] = str(_manifest_variant(tiny_manifest, tmp_path, edit))
    cfg = write_config(good)
    out_dir = tmp_path / "report"
    rc, _, err = run_cli(["run", str(cfg), "-o", str(out_dir)], capsys)
    assert rc == 2, err
    assert expect in err and "Traceback" not in err
    assert not out_dir.exists() and not list(tmp_path.glob(".report.partial-*"))


def test_validate_lists_undecodable_rows(
    good, tiny_manifest, write_config, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    good["data"]["manifest"] = str(_manifest_variant(tiny_manifest, tmp_path, _corrupt_image))
    rc, out, _ = run_cli(["validate", str(write_config(good))], capsys)
    assert rc == 2 and "s5" in out and "cannot decode" in out


def test_debug_shows_traceback(tmp_path: Path) -> None:
    from mmaudit.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["run", str(tmp_path / "nope.yaml"), "--debug"])
