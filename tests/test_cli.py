"""The command line: exit codes, one clear line per kind of bad input, no half-written report."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import byo_model_config, tiny_config, wait_interruptibly
from manifest_edits import (
    corrupt_image,
    drop_image,
    drop_mask,
    manifest_variant,
    nan_target,
    no_rows,
    one_class,
)

from mmaudit.checks.registry import load_builtin_checks
from mmaudit.cli import main
from mmaudit.report.document import load_report
from mmaudit.runner import any_batch_done


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.out, captured.err


def assert_bad_input(rc: int, err: str, out_dir: Path, expect: str) -> None:
    """The bad-input contract: exit 2, exactly one line on stderr naming the problem, no
    traceback, no report and no partial folder. The resume state stays only when sweep
    batches finished before the bad file was found, and the line then says to --resume."""
    assert rc == 2, err
    assert expect in err, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    assert not out_dir.exists()
    leftovers = [p.name for p in out_dir.parent.glob(f".{out_dir.name}*")]
    work = out_dir.parent / f".{out_dir.name}.work"
    if leftovers == [work.name]:
        assert any_batch_done(work), "resume state kept without a finished batch"
        assert "fix the file and rerun with --resume" in err, err
    else:
        assert leftovers == [], leftovers


@pytest.fixture()
def good(tiny_manifest: Path, tiny_weights: Path) -> dict[str, Any]:
    return tiny_config(tiny_manifest, byo_model_config(tiny_weights / "tiny.safetensors"))


def test_run_ok_and_gate(good: dict[str, Any], write_config, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config(good)
    rc, out, _ = run_cli(
        [
            "run",
            str(cfg),
            "-o",
            str(tmp_path / "rep"),
            "--fail-on",
            "never",
            "--checks",
            "performance",
        ],
        capsys,
    )
    assert rc == 0 and "report written" in out
    assert "not run" in out and "not requested" in out  # the console says it was narrowed
    # an impossible threshold makes the performance check fail, and the gate exit 1
    good["checks"] = {
        "performance": {
            "params": {"n_boot": 100},
            "thresholds": {"auroc_low": {"fail_below": 1.01}},
        }
    }
    strict = write_config(good, "strict.yaml")
    rc, out, _ = run_cli(
        ["run", str(strict), "-o", str(tmp_path / "rep2"), "--checks", "performance"], capsys
    )
    assert rc == 1 and "fails the gate" in out
    # a warning: the gate and junit.xml follow --fail-on together
    good["checks"]["performance"]["thresholds"] = {"auroc_low": {"warn_below": 1.01}}
    warned = write_config(good, "warned.yaml")
    # under warn two failures: the check's testcase and its finding's
    for level, code, failures in (("warn", 1, "2"), ("fail", 0, "0")):
        rep = tmp_path / f"rep_{level}"
        rc, _, _ = run_cli(
            ["run", str(warned), "-o", str(rep), "--checks", "performance", "--fail-on", level],
            capsys,
        )
        suite = ET.parse(rep / "junit.xml").getroot().find("testsuite")
        assert suite is not None
        props = {p.get("name"): p.get("value") for p in suite.iter("property")}
        assert rc == code and props["fail_on"] == level and suite.get("failures") == failures


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
    (
        "unknown threshold key",
        "checks",
        {"performance": {"thresholds": {"auroc_low": {"warn_belo": 0.9}}}},
        "checks.performance.thresholds.auroc_low: unknown key 'warn_belo' (did you mean"
        " 'warn_below'?)",
    ),
    (
        "every check disabled",
        "checks",
        {name: {"enabled": False} for name in sorted(load_builtin_checks())},
        "no checks to run",
    ),
    ("invalid device", "runtime.device", "gpu", "device must be auto, cpu, cuda or cuda:N"),
]


@pytest.mark.parametrize(("what", "path", "value", "expect"), CASES, ids=[c[0] for c in CASES])
def test_bad_config_one_line_exit_2(
    what, path, value, expect, good, write_config, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config(_mutate(good, path, value))
    out_dir = tmp_path / "report"
    rc, _, err = run_cli(["run", str(cfg), "-o", str(out_dir)], capsys)
    assert_bad_input(rc, err, out_dir, expect)


def test_cuda_where_none(good, write_config, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out_dir = tmp_path / "r"
    rc, _, err = run_cli(
        ["run", str(write_config(good)), "-o", str(out_dir), "--device", "cuda"], capsys
    )
    assert_bad_input(rc, err, out_dir, "no CUDA device")


def test_missing_config_and_yaml_syntax(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out_dir = tmp_path / "report"
    rc, _, err = run_cli(["run", str(tmp_path / "nope.yaml"), "-o", str(out_dir)], capsys)
    assert_bad_input(rc, err, out_dir, "config file not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  checkpoint: [unclosed\ndata: {}\n")
    rc, _, err = run_cli(["run", str(bad), "-o", str(out_dir)], capsys)
    assert_bad_input(rc, err, out_dir, "YAML syntax error")
    assert "bad.yaml:" in err


def _weights_with_renamed_keys(folder: Path) -> Path:
    from safetensors.torch import save_file
    from tiny_models import build_tiny

    state = {k.replace("fuse", "fusion"): v for k, v in build_tiny().state_dict().items()}
    save_file(state, folder / "renamed.safetensors")
    return folder / "renamed.safetensors"


def _legacy_pickle_with_code(folder: Path) -> Path:
    import torch
    from tiny_models import build_tiny

    path = folder / "legacy.pt"  # old (non-zip) format: torch.load also warns about it
    torch.save({"model": build_tiny()}, path, _use_new_zipfile_serialization=False)
    return path


def _text_file(folder: Path) -> Path:
    (folder / "weights.pt").write_text("not weights")
    return folder / "weights.pt"


WEIGHT_CASES = [
    (
        "state_dict keys do not fit",
        _weights_with_renamed_keys,
        ["weights do not fit", "fuse.weight", "fusion.weight"],
    ),
    ("pickle needing code", _legacy_pickle_with_code, ["refused", "tiny_models.TinyFusion"]),
    ("not a torch file", _text_file, ["not a PyTorch file"]),
]


@pytest.mark.parametrize(("what", "make", "expect"), WEIGHT_CASES, ids=[c[0] for c in WEIGHT_CASES])
def test_bad_weights_one_line_exit_2(
    what, make, expect, good, write_config, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    good["model"]["weights"] = str(make(tmp_path))
    out_dir = tmp_path / "report"
    rc, _, err = run_cli(["run", str(write_config(good)), "-o", str(out_dir)], capsys)
    assert_bad_input(rc, err, out_dir, expect[0])
    for part in expect[1:]:
        assert part in err


def test_broken_tokenizer_folder_one_line(good, write_config, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizerFast"}')
    good["data"]["text"] = {"column": "image_path", "tokenizer": str(folder)}
    out_dir = tmp_path / "report"
    rc, _, err = run_cli(["run", str(write_config(good)), "-o", str(out_dir)], capsys)
    assert_bad_input(rc, err, out_dir, "not a loadable tokenizer folder")
    assert "tokenizer.json" in err and "save_pretrained" in err


def _corrupt_mask(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    (folder / "masks" / "s40.png").write_bytes(b"not a png")  # third batch: found mid-sweep
    return df


DATA_CASES = [
    ("image missing", drop_image, "row 5 (id 's3'): image file not found"),
    ("image undecodable", corrupt_image, "cannot decode image"),
    ("NaN target", nan_target, "row 6: target column 'label' is empty"),
    ("one class", one_class, "has one class only"),
    ("empty manifest", no_rows, "has no rows"),
    ("ROI mask undecodable", _corrupt_mask, "(id 's40'): cannot decode ROI mask"),
    ("ROI mask missing", drop_mask, "row 9 (id 's7'): ROI mask file not found"),
]


@pytest.mark.parametrize(("what", "edit", "expect"), DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_one_line_exit_2(
    what, edit, expect, good, tiny_manifest, write_config, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    good["data"]["manifest"] = str(manifest_variant(tiny_manifest, tmp_path, edit))
    cfg = write_config(good)
    out_dir = tmp_path / "report"
    rc, _, err = run_cli(["run", str(cfg), "-o", str(out_dir)], capsys)
    assert_bad_input(rc, err, out_dir, expect)


def _four_broken_files(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    (folder / "images" / "s3.png").unlink()
    (folder / "images" / "s20.png").unlink()
    (folder / "images" / "s5.png").write_bytes(b"not a png")
    (folder / "masks" / "s7.png").write_bytes(b"not a png")
    return df


def _problem_lines(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.startswith("  ")]


def test_validate_lists_every_broken_file(
    good, tiny_manifest, write_config, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    good["data"]["manifest"] = str(manifest_variant(tiny_manifest, tmp_path, _four_broken_files))
    rc, out, _ = run_cli(["validate", str(write_config(good))], capsys)
    assert rc == 2 and "4 problem(s)" in out
    lines = _problem_lines(out)
    assert len(lines) == 4, out
    assert "(id 's3'): image file not found" in lines[0]
    assert "(id 's20'): image file not found" in lines[1]
    assert "(id 's5'): cannot decode image" in lines[2]
    assert "(id 's7'): cannot decode ROI mask" in lines[3]


def _label_and_lab_problems(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    df.loc[5, "id"] = "s0"
    df["label"] = df["label"].astype(float)
    df.loc[4, "label"] = float("nan")
    df["lab_a"] = df["lab_a"].astype(object)
    df.loc[1, "lab_a"] = "high"
    return df


def test_validate_lists_table_problems_and_model_outputs(
    good, tiny_manifest, write_config, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """Duplicate id, NaN target, non-numeric lab and a 3-output model for a binary target."""
    good["data"]["manifest"] = str(
        manifest_variant(tiny_manifest, tmp_path, _label_and_lab_problems)
    )
    good["model"]["kwargs"]["n_out"] = 3
    good["model"].pop("weights")
    rc, out, _ = run_cli(["validate", str(write_config(good))], capsys)
    lines = _problem_lines(out)
    assert rc == 2 and len(lines) == 4, out
    assert "row 7: duplicate id 's0'" in lines[0]
    assert "row 6: target column 'label' is empty (NaN)" in lines[1]
    assert "tabular column 'lab_a' is not a number" in lines[2]
    assert "the model returns 3 outputs but a binary target" in lines[3]


def test_debug_shows_traceback(tmp_path: Path) -> None:
    from mmaudit.engine.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["run", str(tmp_path / "nope.yaml"), "--debug"])


def test_bad_file_mid_sweep_keeps_resume_state(
    good, tiny_manifest, write_config, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """A corrupt mask in the third batch: the two finished batches survive the error, and
    once the file is replaced in place, --resume finishes the audit from them."""
    manifest = manifest_variant(tiny_manifest, tmp_path, _corrupt_mask)
    good["data"]["manifest"] = str(manifest)
    cfg = write_config(good)
    out_dir = tmp_path / "report"
    work = tmp_path / ".report.work"
    quick = ["--fail-on", "never", "--checks", "performance"]
    rc, _, err = run_cli(["run", str(cfg), "-o", str(out_dir), *quick], capsys)
    assert_bad_input(rc, err, out_dir, "(id 's40'): cannot decode ROI mask")
    assert work.is_dir() and any_batch_done(work), err
    shutil.copy(tiny_manifest.parent / "masks" / "s40.png", manifest.parent / "masks" / "s40.png")
    rc, out, err = run_cli(["run", str(cfg), "-o", str(out_dir), *quick, "--resume"], capsys)
    assert rc == 0 and "report written" in out, err
    assert not work.exists()  # a finished audit leaves no resume state
    resumed = load_report(out_dir).timings["model_calls"]
    rc, _, err = run_cli(["run", str(cfg), "-o", str(tmp_path / "fresh"), *quick], capsys)
    assert rc == 0, err
    assert resumed < load_report(tmp_path / "fresh").timings["model_calls"]  # batches reused


def test_bad_file_found_in_a_dataloader_worker_is_one_line(
    good, tiny_manifest, write_config, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """A worker re-raises with its whole traceback as the message; the CLI still prints one line."""
    good["data"]["manifest"] = str(manifest_variant(tiny_manifest, tmp_path, _corrupt_mask))
    good["runtime"]["num_workers"] = 2
    out_dir = tmp_path / "report"
    rc, _, err = run_cli(["run", str(write_config(good)), "-o", str(out_dir)], capsys)
    assert_bad_input(rc, err, out_dir, "(id 's40'): cannot decode ROI mask")


def test_checks_entries_configure_and_do_not_select(good, write_config, capsys) -> None:  # type: ignore[no-untyped-def]
    """A threshold override for one check keeps every other check on; enabled: false turns
    off only its own check (validate lists the checks a run would plan)."""
    good["checks"] = {
        "performance": {"thresholds": {"auroc_low": {"warn_below": 0.9}}},
        "saliency": {"enabled": False},
    }
    rc, out, _ = run_cli(["validate", str(write_config(good))], capsys)
    assert rc == 0, out
    listed = set(re.findall(r"'(\w+)'", out.split("checks", 1)[1].split("model", 1)[0]))
    assert listed == set(load_builtin_checks()) - {"saliency"}


def test_check_config_error_names_file_and_line(good, write_config, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    good["checks"] = {"performance": {"params": {"n_boot": 100, "nboot": 3}}}
    cfg = write_config(good)
    line = cfg.read_text().splitlines().index("      nboot: 3") + 1
    out_dir = tmp_path / "report"
    rc, _, err = run_cli(["run", str(cfg), "-o", str(out_dir)], capsys)
    assert_bad_input(rc, err, out_dir, f"error: {cfg}:{line}: checks.performance.params:")
    assert "unknown key 'nboot' (did you mean 'n_boot'?)" in err


@pytest.mark.parametrize("command", ["run", "validate"])
def test_invalid_device_flag_is_one_line(command, good, write_config, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out_dir = tmp_path / "report"
    args = [command, str(write_config(good)), "--device", "gpu"]
    rc, _, err = run_cli(args + (["-o", str(out_dir)] if command == "run" else []), capsys)
    assert_bad_input(rc, err, out_dir, "--device 'gpu' is not a device")
    assert "auto, cpu, cuda, cuda:N or mps" in err


def _scripted_renamed(folder: Path) -> Path:
    import torch
    from tiny_models import build_renamed

    path = folder / "renamed_script.pt"
    torch.jit.script(build_renamed()).save(str(path))
    return path


@pytest.mark.parametrize("source", ["factory", "torchscript"])
def test_forward_keywords_that_do_not_fit_are_one_line(
    source, good, write_config, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """forward(pixels, labs) and no model.inputs: the line names the forward's parameters and
    model.inputs, before any batch runs (no resume state, no report)."""
    if source == "factory":
        python_path = byo_model_config(tmp_path)["python_path"]
        good["model"] = {"factory": "tiny_models:build_renamed", "python_path": python_path}
    else:
        good["model"] = {"torchscript": str(_scripted_renamed(tmp_path))}
    out_dir = tmp_path / "report"
    rc, _, err = run_cli(["run", str(write_config(good)), "-o", str(out_dir)], capsys)
    assert_bad_input(rc, err, out_dir, "the model's forward takes (pixels, labs)")
    assert "called with image, tabular" in err and "model.inputs" in err


def test_model_error_on_first_batch_is_one_line(good, write_config, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A model that raises on the data (3 lab inputs, 2 lab columns): one line in `run`,
    the traceback only with --debug."""
    from mmaudit.engine.errors import ModelLoadError

    good["model"]["kwargs"]["n_tab"] = 3
    good["model"].pop("weights")
    cfg = write_config(good)
    out_dir = tmp_path / "report"
    rc, _, err = run_cli(["run", str(cfg), "-o", str(out_dir)], capsys)
    assert_bad_input(rc, err, out_dir, "the model failed on one batch: RuntimeError")
    with pytest.raises(ModelLoadError) as info:
        main(["run", str(cfg), "-o", str(out_dir), "--debug"])
    assert isinstance(info.value.__cause__, RuntimeError)


def test_model_outputs_that_do_not_fit_the_target_stop_run(
    good, write_config, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    good["model"]["kwargs"]["n_out"] = 3
    good["model"].pop("weights")
    out_dir = tmp_path / "report"
    rc, _, err = run_cli(["run", str(write_config(good)), "-o", str(out_dir)], capsys)
    assert_bad_input(
        rc, err, out_dir, "the model returns 3 outputs but a binary target with 2 classes"
    )


def test_unknown_option_is_a_usage_error(capsys) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run_cli(["run", "x.yaml", "--no-such-flag"], capsys)
    assert rc == 2 and "No such option: --no-such-flag" in err and "Traceback" not in err


def build_hanging(**kwargs: Any) -> Any:
    """TinyFusion whose forward waits a minute: a run of it is still going when signalled
    (the factory ``test_cli:build_hanging``)."""
    from tiny_models import build_tiny

    model = build_tiny(**kwargs)
    model.register_forward_pre_hook(lambda *_: wait_interruptibly(60))
    return model


def test_sigterm_removes_the_staging_folder(
    tiny_manifest: Path, tiny_weights: Path, write_config, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A plain `kill` (SIGTERM) of `mmaudit run` mid-run: exit 143 with one line, and no
    `.OUT.partial-*` folder (raw data) left; a stale one from an earlier killed run is
    removed when the run starts. Without the handler the kill leaves the staging folder."""
    import signal
    import subprocess
    import sys
    import time

    model = byo_model_config(tiny_weights / "tiny.safetensors", factory="test_cli:build_hanging")
    cfg = write_config(tiny_config(tiny_manifest, model))
    out_dir = tmp_path / "rep"
    stale = tmp_path / ".rep.partial-zz9_abcd"  # the name mkdtemp would give, no live run
    (stale / "samples").mkdir(parents=True)
    (stale / "samples" / "embeddings.npz").write_bytes(b"raw")

    def stages() -> list[str]:
        return sorted(p.name for p in tmp_path.glob(".rep.partial-*"))

    proc = subprocess.Popen(
        [sys.executable, "-m", "mmaudit", "run", str(cfg), "-o", str(out_dir), "--no-progress"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while stages() in ([], [stale.name]) and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never staged its report"
            time.sleep(0.05)
        assert stale.name not in stages()  # swept at the start of the run
        assert len(stages()) == 1  # this run's own staging folder, locked
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err.strip() == "terminated (SIGTERM); no report was written", err
    assert stages() == [] and not out_dir.exists()


def test_sigint_removes_the_staging_folder_and_says_so(
    tiny_manifest: Path, tiny_weights: Path, write_config, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C (SIGINT) mid-run behaves as SIGTERM does: exit 130 with one line, and no
    staging folder (raw data), report or empty resume folder left. Without the handler
    typer turned it into a silent exit 130 and no one removed anything."""
    import os
    import signal
    import subprocess
    import sys
    import time

    model = byo_model_config(tiny_weights / "tiny.safetensors", factory="test_cli:build_hanging")
    cfg = write_config(tiny_config(tiny_manifest, model))
    out_dir = tmp_path / "rep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmaudit", "run", str(cfg), "-o", str(out_dir), "--no-progress"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".rep.partial-*")) and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never staged its report"
            time.sleep(0.05)
        time.sleep(1)  # into the model's forward
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted (SIGINT); no report was written", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.yaml"]


def test_keyboard_interrupt_inside_a_command_is_one_line(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """A KeyboardInterrupt that typer would turn into a silent exit 130 gets the line too."""
    import mmaudit.runner

    def interrupted(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(mmaudit.runner, "run_audit", interrupted)
    rc, _, err = run_cli(["run", "x.yaml"], capsys)
    assert rc == 130 and err == "interrupted (SIGINT); no report was written\n"


def test_output_problems_stop_the_run_before_the_model_loads(
    good, write_config, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """A project folder as -o, or an -o that cannot be written: one line, exit 2, before the
    model is loaded (this factory does not exist, so loading it would be another error),
    and nothing deleted or left behind."""
    good["model"]["factory"] = "test_cli:no_such_factory"
    cfg = write_config(good)
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "report.json").write_text("{}")
    (proj / "src" / "main.py").write_text("print(1)")
    rc, _, err = run_cli(["run", str(cfg), "-o", str(proj)], capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert f"output folder {proj} exists and is not an mmaudit report" in err
    assert "(choose another -o, or empty that folder)" in err
    assert (proj / "src" / "main.py").read_text() == "print(1)"
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    rc, _, err = run_cli(["run", str(cfg), "-o", str(not_a_folder / "rep")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "cannot write the report" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.yaml", "file", "proj"]


def test_show_refuses_an_edited_report(good, write_config, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """`show` reads only what the audit wrote: a value edited by hand is exit 2 naming
    report.json; the untouched report shows, without the note old reports get."""
    import json

    out_dir = tmp_path / "rep"
    rc, _, err = run_cli(["run", str(write_config(good)), "-o", str(out_dir), "--checks",
                          "performance", "--fail-on", "never"], capsys)  # fmt: skip
    assert rc == 0, err
    rc, out, _ = run_cli(["show", str(out_dir)], capsys)
    assert rc == 0 and "records no digests" not in out
    data = json.loads((out_dir / "report.json").read_text())
    data["checks"]["performance"]["metrics"]["auroc"]["value"] = 0.5
    (out_dir / "report.json").write_text(json.dumps(data, indent=2))
    rc, _, err = run_cli(["show", str(out_dir)], capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert f"{out_dir / 'report.json'}: its content does not match the digest" in err


def test_fail_on_skipped_gates_on_a_planned_check_that_was_skipped(
    good, write_config, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """attention is planned but cannot run (no report text): skipped. --fail-on-skipped (or
    runtime.fail_on_skipped) makes that exit 1 with a line naming it, and junit.xml a
    failure; without it the same run exits 0. A check left out by --checks was not
    planned and never trips it."""
    cfg = write_config(good)
    both = ["--checks", "performance,attention", "--fail-on", "never"]
    rc, out, _ = run_cli(["run", str(cfg), "-o", str(tmp_path / "a"), *both], capsys)
    assert rc == 0, out
    suite = ET.parse(tmp_path / "a" / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and suite.get("skipped") != "0"

    argv = ["run", str(cfg), "-o", str(tmp_path / "b"), *both, "--fail-on-skipped"]
    rc, out, _ = run_cli(argv, capsys)
    assert rc == 1, out
    assert "1 planned check(s) skipped (attention): fails the gate --fail-on-skipped" in (
        " ".join(out.split())
    )
    # the table's header says so too, not a bare "mmaudit: pass" above exit code 1
    assert "1 check(s) skipped (fails --fail-on-skipped)" in " ".join(out.split())
    suite = ET.parse(tmp_path / "b" / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["fail_on_skipped"] == "true"
    case = next(c for c in suite.iter("testcase") if c.get("name") == "attention")
    failure = case.find("failure")
    assert failure is not None and "needs the modalities ['text']" in failure.get("message", "")
    assert load_report(tmp_path / "b").fail_on_skipped is True

    good["runtime"] = {**good["runtime"], "fail_on_skipped": True}
    strict = write_config(good, "strict.yaml")
    rc, _, _ = run_cli(["run", str(strict), "-o", str(tmp_path / "c"), *both], capsys)
    assert rc == 1
    argv = ["run", str(strict), "-o", str(tmp_path / "d"), *both, "--no-fail-on-skipped"]
    rc, _, _ = run_cli(argv, capsys)
    assert rc == 0
    # attention not planned (--checks performance): "not run", not skipped
    argv = ["run", str(strict), "-o", str(tmp_path / "e"), "--checks", "performance"]
    rc, out, _ = run_cli([*argv, "--fail-on", "never"], capsys)
    assert rc == 0 and "not run" in out


def test_console_summary_shows_what_each_check_tested_and_its_coverage(capsys) -> None:  # type: ignore[no-untyped-def]
    """The terminal table has a 'tested' column; coverage notes are printed under it; a
    skipped check shows its reason even when it has metrics."""
    from rich.console import Console

    from mmaudit.report.document import CheckReport, Report
    from mmaudit.report.terminal import print_summary

    checks = {
        "probing": CheckReport(
            name="probing", status="skipped", reason="no attribute could be probed: site (A 3)",
            metrics={"positive_control.auroc": {"value": 0.9, "ci_low": 0.8, "ci_high": 1.0}},
            judged=0, rows_used=0, rows_total=12,
        ),
        "saliency": CheckReport(
            name="saliency", status="pass", judged=13, rows_used=40, rows_total=48,
            coverage=["20 of 40 image rows have a usable (non-empty) ROI mask"],
            notes=["n1", "n2"],
        ),
    }  # fmt: skip
    report = Report(
        tool_version="t", created="c", config={}, config_path="", model={}, data={},
        environment={}, seed=0, checks=checks,
    )  # fmt: skip
    print_summary(Console(width=300, highlight=False), report)
    out = " ".join(capsys.readouterr().out.split())
    assert "tested" in out and "13 tests on 40/48 rows" in out and "none" in out
    assert "no attribute could be probed" in out
    assert "coverage saliency: 20 of 40 image rows have a usable (non-empty) ROI mask" in out
    assert "2 more note(s) in index.html, under each check" in out


def test_console_header_reflects_the_gates(capsys) -> None:  # type: ignore[no-untyped-def]
    """The stranger's test: under --fail-on-skipped the table said "mmaudit: pass" above an
    exit code of 1. The header now names the gate that fails, and stays plain otherwise."""
    from rich.console import Console

    from mmaudit.report.document import CheckReport, Report
    from mmaudit.report.terminal import print_summary, summary_title

    def report(status: str, **gates) -> Report:  # type: ignore[no-untyped-def]
        checks = {
            "probing": CheckReport(name="probing", status="skipped", reason="nothing to probe"),
            "performance": CheckReport(name="performance", status="pass"),
        }
        return Report(
            tool_version="t", created="c", config={}, config_path="", model={}, data={},
            environment={}, seed=0, checks=checks, status=status, **gates,
        )  # fmt: skip

    print_summary(Console(width=300, highlight=False), report("pass", fail_on_skipped=True))
    out = " ".join(capsys.readouterr().out.split())
    assert "mmaudit: pass, but 1 check(s) skipped (fails --fail-on-skipped)" in out
    assert summary_title(report("pass")) == "mmaudit: pass"
    assert summary_title(report("fail", fail_on_skipped=True)) == (
        "mmaudit: fail, and 1 check(s) skipped (fails --fail-on-skipped)"
    )
    assert summary_title(report("warn", fail_on="warn")) == "mmaudit: warn (fails --fail-on warn)"
    assert summary_title(report("warn")) == "mmaudit: warn"
    assert summary_title(report("fail", fail_on="never")) == "mmaudit: fail"


def _unsplit(words: list[str], out: str) -> list[str]:
    """The words of ``words`` that no output line holds whole (a table split them)."""
    lines = out.splitlines()
    return [w for w in words if not any(w in line for line in lines)]


@pytest.mark.parametrize("width", ["80", "120"])
@pytest.mark.parametrize("tty", [False, True])
def test_checks_listing_splits_no_word(width: str, tty: bool, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """At 80 columns (what CI logs get) and 120, with and without a terminal, every check
    name and every word of its description stays whole on one line."""
    monkeypatch.setenv("COLUMNS", width)
    if tty:
        monkeypatch.setenv("FORCE_COLOR", "1")
        monkeypatch.setenv("TTY_COMPATIBLE", "1")
    rc, out, _ = run_cli(["checks"], capsys)
    assert rc == 0
    checks = load_builtin_checks()
    words = [w for cls in checks.values() for w in cls.description.split()] + list(checks)
    assert _unsplit(words, out) == []
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert max(len(line) for line in plain.splitlines()) <= int(width)
    assert "mmaudit checks NAME" in out


@pytest.mark.parametrize("width", ["80", "120"])
def test_checks_name_shows_one_check(width: str, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """``mmaudit checks NAME``: that check's needs, every parameter with its default and
    every threshold rule, wrapped between words; no other check."""
    monkeypatch.setenv("COLUMNS", width)
    rc, out, _ = run_cli(["checks", "probing"], capsys)
    assert rc == 0
    cls = load_builtin_checks()["probing"]
    assert out.startswith("probing: ")
    for key in cls.Params.model_fields:
        assert f"  {key} = " in out
    for rule in cls.default_thresholds:
        assert f"  {rule}: " in out
    assert "docs/checks/probing.md" in out and "saliency:" not in out
    assert all(len(line) <= int(width) for line in out.splitlines())
    words = [w for f in cls.Params.model_fields.values() for w in (f.description or "").split()]
    assert _unsplit(words, out) == []


def test_checks_unknown_name_is_one_line(capsys) -> None:  # type: ignore[no-untyped-def]
    rc, out, err = run_cli(["checks", "probin"], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "no check named 'probin' (did you mean 'probing'?)" in err


def test_version_and_env(capsys) -> None:  # type: ignore[no-untyped-def]
    from mmaudit import __version__

    rc, out, _ = run_cli(["--version"], capsys)
    assert rc == 0 and out.strip() == f"mmaudit {__version__}"
    rc, out, _ = run_cli(["env"], capsys)
    assert rc == 0
    assert f"mmaudit {__version__}" in out and "torch 2." in out and "CUDA available:" in out


def test_progress_prints_a_line_per_stage(
    good: dict[str, Any], write_config, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """With progress on, a log (no terminal) still shows where the run is: one line per
    stage on stdout, each check numbered with its status and time; --no-progress is quiet."""
    good["runtime"]["progress"] = True
    cfg = write_config(good)
    argv = ["run", str(cfg), "--checks", "performance,subgroups", "--fail-on", "never"]
    rc, out, err = run_cli([*argv, "-o", str(tmp_path / "a")], capsys)
    assert rc == 0, err
    stages = [line for line in out.splitlines() if re.match(r"\[\s*\d+ s\] ", line)]
    text = "\n".join(stages)
    assert "data: 48 rows" in text and "sweep: done" in text
    assert re.search(r"check 1/2 performance: (pass|warn|fail) in \d+ s", text), text
    assert re.search(r"check 2/2 subgroups: \w+ in \d+ s", text), text
    rc, out, _ = run_cli([*argv, "-o", str(tmp_path / "b"), "--no-progress"], capsys)
    assert rc == 0 and "check 1/2" not in out
