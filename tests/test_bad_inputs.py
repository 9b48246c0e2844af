"""The bad-input suite: every way a user can hand mmaudit something wrong, in one table.

Each row sets up a tiny config / manifest / model / output location in ``tmp_path`` and runs
``mmaudit run`` (and ``mmaudit validate`` where the input is read by both) in-process. The
contract every row asserts:

- the exit code (2 for bad input; click's usage errors are 2 as well);
- one error line that names the file, row or key (the row's patterns, all of them), preceded
  at most by ``note:`` lines; ``validate`` may instead list the problem under
  "N problem(s) in CONFIG:" (its documented output), one line per problem;
- no traceback anywhere;
- no report folder, and no hidden ``.OUT.partial-*`` / ``.OUT.work`` sibling, after the
  refusal; where ``-o`` already held files (someone's project, an older report with the
  user's notes), every one of them is still there, byte for byte.

Inputs that are *not* bad (ids kept as written, a Parquet ``''`` lab cell) and Ctrl-C (a
signal needs a subprocess) have their own tests below the table.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from conftest import TESTS, byo_model_config, tiny_config, wait_interruptibly
from manifest_edits import (
    corrupt_image,
    drop_image,
    drop_mask,
    nan_target,
    no_rows,
    one_class,
)
from tiny_models import TinyFusion

from mmaudit.checks.registry import load_builtin_checks
from mmaudit.cli import main

SAMPLE_TOKENIZER = TESTS.parent / "sample_data" / "tokenizer"
QUICK = ("--checks", "performance", "--no-progress")  # a refusal comes before any check runs
BOTH = ("run", "validate")
RUN = ("run",)


# ----------------------------------------------------------------------------- models
class NonFiniteFusion(TinyFusion):
    """TinyFusion whose logit is ``value`` (NaN or inf) for rows whose first lab is an outlier
    (normalised value above 5): the model itself, not the data, produces the bad number."""

    def __init__(self, width: int = 8, value: str = "nan") -> None:
        super().__init__(width)
        self.value = float(value)

    def forward(self, image: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        out = super().forward(image, tabular)
        bad = tabular[:, :1] > 5
        return torch.where(bad, torch.full_like(out, self.value), out)


def build_non_finite(width: int = 8, value: str = "nan") -> NonFiniteFusion:
    """The factory ``test_bad_inputs:build_non_finite`` (loads tiny.safetensors: same keys)."""
    torch.manual_seed(0)
    return NonFiniteFusion(width, value)


def build_slow(width: int = 8) -> TinyFusion:
    """TinyFusion whose forward waits a minute, so a run of it is still going when signalled."""
    torch.manual_seed(0)
    model = TinyFusion(width)
    model.register_forward_pre_hook(lambda *_: wait_interruptibly(60))
    return model


# ----------------------------------------------------------------------------- set-up
@dataclass
class Invocation:
    """What a row's set-up produced: the config, the output folder for ``run`` and extra flags."""

    config: Path
    out: Path
    run_flags: tuple[str, ...] = QUICK
    validate_flags: tuple[str, ...] = ()
    # files that were in ``out`` before the run and must be left exactly as they were
    keep: dict[str, bytes | None] = field(default_factory=dict)


@dataclass
class Env:
    """Paths and the known-good config a row's set-up starts from."""

    tmp: Path
    manifest: Path
    weights: Path
    request: pytest.FixtureRequest
    cfg: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cfg = tiny_config(self.manifest, byo_model_config(self.weights / "tiny.safetensors"))

    @property
    def out(self) -> Path:
        return self.tmp / "report"

    def write(self, cfg: dict[str, Any] | None = None, name: str = "audit.yaml") -> Path:
        path = self.tmp / name
        path.write_text(yaml.safe_dump(self.cfg if cfg is None else cfg, sort_keys=False))
        return path

    def write_text(self, text: str | bytes, name: str = "audit.yaml") -> Path:
        path = self.tmp / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    def invoke(self, cfg: dict[str, Any] | None = None, **kw: Any) -> Invocation:
        return Invocation(config=self.write(cfg), out=kw.pop("out", self.out), **kw)

    def data_copy(self) -> Path:
        """A private copy of the tiny dataset folder; returns its manifest.csv."""
        folder = self.tmp / "data"
        if not folder.exists():
            shutil.copytree(self.manifest.parent, folder)
        return folder / "manifest.csv"

    def with_manifest(self, manifest: Path, **kw: Any) -> Invocation:
        cfg = copy.deepcopy(self.cfg)
        cfg["data"]["manifest"] = str(manifest)
        return self.invoke(cfg, **kw)


Setup = Callable[[Env], Invocation]


def mutate(path: str, value: Any) -> Setup:
    """A set-up that sets one dotted key of the good config (``DELETE`` removes it)."""

    def setup(env: Env) -> Invocation:
        cfg = copy.deepcopy(env.cfg)
        node = cfg
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is DELETE:
            node.pop(keys[-1])
        else:
            node[keys[-1]] = copy.deepcopy(value)
        return env.invoke(cfg)

    return setup


DELETE = object()


def edit_rows(edit: Callable[[pd.DataFrame, Path], pd.DataFrame]) -> Setup:
    """A set-up that edits a copy of the tiny manifest (and may touch its files)."""

    def setup(env: Env) -> Invocation:
        manifest = env.data_copy()
        df = pd.read_csv(manifest, dtype={"id": str, "patient": str})
        edit(df, manifest.parent).to_csv(manifest, index=False)
        return env.with_manifest(manifest)

    return setup


def raw_manifest(write: Callable[[pd.DataFrame, Path], Path]) -> Setup:
    """A set-up that writes the manifest's bytes itself (``write(df, folder) -> path``)."""

    def setup(env: Env) -> Invocation:
        manifest = env.data_copy()
        df = pd.read_csv(manifest, dtype={"id": str, "patient": str})
        return env.with_manifest(write(df, manifest.parent))

    return setup


def set_cell(column: str, row: int, value: Any) -> Callable[[pd.DataFrame, Path], pd.DataFrame]:
    def edit(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
        df[column] = df[column].astype(object)
        df.loc[row, column] = value
        return df

    return edit


def write_raw_text(transform: Callable[[str], str], name: str = "manifest.csv") -> Setup:
    """A manifest whose CSV text is the tiny one passed through ``transform``."""

    def write(df: pd.DataFrame, folder: Path) -> Path:
        path = folder / name
        path.write_text(transform(df.to_csv(index=False)))
        return path

    return raw_manifest(write)


def csv_cell_text(column: str, row: int, text: str) -> Setup:
    """``column`` of ``row`` written as this literal text in the CSV (``inf``, ``1e400``): what a
    user's export holds, not what pandas would write for a float."""

    def transform(csv: str) -> str:
        lines = csv.splitlines()
        cells = lines[row + 1].split(",")
        cells[lines[0].split(",").index(column)] = text
        lines[row + 1] = ",".join(cells)
        return "\n".join(lines) + "\n"

    return write_raw_text(transform)


def config_text(transform: Callable[[str], str | bytes]) -> Setup:
    """The good config's YAML text passed through ``transform`` (duplicate keys, bad bytes)."""

    def setup(env: Env) -> Invocation:
        text = yaml.safe_dump(env.cfg, sort_keys=False)
        return Invocation(config=env.write_text(transform(text)), out=env.out)

    return setup


# ---------------------------------------------------------------- config set-ups
def missing_config(env: Env) -> Invocation:
    return Invocation(config=env.tmp / "nope.yaml", out=env.out)


def yaml_syntax_error(env: Env) -> Invocation:
    return Invocation(
        config=env.write_text("model:\n  checkpoint: [unclosed\ndata: {}\n"), out=env.out
    )


def not_a_mapping(env: Env) -> Invocation:
    return Invocation(config=env.write_text("- model\n- data\n"), out=env.out)


NON_UTF8_OFFSET = 5  # 0-based offset of the é below, written in Latin-1


def non_utf8(env: Env) -> Invocation:
    text = yaml.safe_dump(env.cfg, sort_keys=False).encode()
    return Invocation(config=env.write_text(b"# caf\xe9\n" + text), out=env.out)


def duplicate_batch_size(text: str) -> str:
    # a second batch_size right under "runtime:", the first stays where it was
    return text.replace("runtime:\n", "runtime:\n  batch_size: 8\n", 1)


def duplicate_section(text: str) -> str:
    return text + "checks:\n  performance:\n    params:\n      n_boot: 200\n"


def empty_attribute(text: str) -> str:
    return text.replace("    site: {}\n", "    site:\n", 1)


def misspelt_model(text: str) -> str:
    return text.replace("model:\n", "modle:\n", 1)


def misspelt_target(text: str) -> str:
    return text.replace("  target:\n", "  targte:\n", 1)


# --------------------------------------------------------------- data set-ups


def corrupt_mask(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    (folder / "masks" / "s2.png").write_bytes(b"not a png")  # first batch: nothing to resume
    return df


def words_as_target(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    df["label"] = df["label"].map({0: "no", 1: "yes"})
    return df


def duplicate_id(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    df.loc[5, "id"] = "s0"
    return df


def duplicate_column(df: pd.DataFrame, folder: Path) -> Path:
    path = folder / "manifest.csv"
    text = df.to_csv(index=False).splitlines()
    text[0] = text[0].replace("lab_b", "lab_a")  # two headers named lab_a
    path.write_text("\n".join(text) + "\n")
    return path


def semicolons(csv: str) -> str:
    return csv.replace(",", ";")


def tabs(csv: str) -> str:
    return csv.replace(",", "\t")


def garbage_parquet(df: pd.DataFrame, folder: Path) -> Path:
    path = folder / "manifest.parquet"
    path.write_bytes(b"PAR1 this is not a parquet file")
    return path


def outlier_lab(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    df.loc[3, "lab_a"] = 1000.0  # row s3: normalised ~6.8, NonFiniteFusion's trigger
    return df


def blank_lab(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    df["lab_b"] = float("nan")
    return df


def class_code_2(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    df.loc[4, "label"] = 2  # 0/1/2: class codes, a multiclass target
    return df


def latin1_manifest(df: pd.DataFrame, folder: Path) -> Path:
    path = folder / "manifest.csv"
    df["sex"] = df["sex"].astype(object)
    df.loc[2, "sex"] = "fémale"  # row 3, line 4 of the file
    path.write_bytes(df.to_csv(index=False).encode("latin-1"))
    return path


def out_in_proc(env: Env) -> Invocation:
    """/proc answers mkdir with "No such file or directory" about a folder that exists."""
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc on this system")
    return env.invoke(out=Path("/proc/mmaudit-report"))


def text_config(env: Env, **text: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(env.cfg)
    cfg["data"]["text"] = {"column": "sex", "tokenizer": str(SAMPLE_TOKENIZER), **text}
    return cfg


def text_max_length_0(env: Env) -> Invocation:
    return env.invoke(text_config(env, max_length=0))


def tokenizer_missing(env: Env) -> Invocation:
    cfg = text_config(env)
    cfg["data"]["text"]["tokenizer"] = str(env.tmp / "no_tokenizer")
    return env.invoke(cfg)


def tokenizer_broken(env: Env) -> Invocation:
    folder = env.tmp / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizerFast"}')
    cfg = text_config(env)
    cfg["data"]["text"]["tokenizer"] = str(folder)
    return env.invoke(cfg)


def every_check_disabled(env: Env) -> Invocation:
    cfg = copy.deepcopy(env.cfg)
    cfg["checks"] = {name: {"enabled": False} for name in sorted(load_builtin_checks())}
    return env.invoke(cfg, run_flags=("--no-progress",))  # no --checks: it would pick one


# -------------------------------------------------------------- model set-ups
def model_with(env: Env, **model: Any) -> Invocation:
    cfg = copy.deepcopy(env.cfg)
    cfg["model"] = {**cfg["model"], **model}
    return env.invoke(cfg)


def weights_missing(env: Env) -> Invocation:
    return model_with(env, weights=str(env.tmp / "nope.safetensors"))


def weights_renamed(env: Env) -> Invocation:
    from safetensors.torch import save_file
    from tiny_models import build_tiny

    state = {k.replace("fuse", "fusion"): v for k, v in build_tiny().state_dict().items()}
    save_file(state, env.tmp / "renamed.safetensors")
    return model_with(env, weights=str(env.tmp / "renamed.safetensors"))


def weights_pickle_with_code(env: Env) -> Invocation:
    from tiny_models import build_tiny

    path = env.tmp / "legacy.pt"
    torch.save({"model": build_tiny()}, path, _use_new_zipfile_serialization=False)
    return model_with(env, weights=str(path))


def weights_text_file(env: Env) -> Invocation:
    (env.tmp / "weights.pt").write_text("not weights")
    return model_with(env, weights=str(env.tmp / "weights.pt"))


def checkpoint_missing(env: Env) -> Invocation:
    cfg = copy.deepcopy(env.cfg)
    cfg["model"] = {"checkpoint": str(env.tmp / "no_ckpt")}
    return env.invoke(cfg)


def torchscript_missing(env: Env) -> Invocation:
    cfg = copy.deepcopy(env.cfg)
    cfg["model"] = {"torchscript": str(env.tmp / "no_script.pt")}
    return env.invoke(cfg)


def renamed_forward(env: Env) -> Invocation:
    cfg = copy.deepcopy(env.cfg)
    cfg["model"] = {"factory": "tiny_models:build_renamed", "python_path": [str(TESTS)]}
    return env.invoke(cfg)


def model_raises(env: Env) -> Invocation:
    cfg = copy.deepcopy(env.cfg)
    cfg["model"]["kwargs"]["n_tab"] = 3
    cfg["model"].pop("weights")
    return env.invoke(cfg)


def three_outputs(env: Env) -> Invocation:
    cfg = copy.deepcopy(env.cfg)
    cfg["model"]["kwargs"]["n_out"] = 3
    cfg["model"].pop("weights")
    return env.invoke(cfg)


def non_finite_model(value: str) -> Setup:
    def setup(env: Env) -> Invocation:
        inv = edit_rows(outlier_lab)(env)
        cfg = yaml.safe_load(inv.config.read_text())
        cfg["model"]["factory"] = "test_bad_inputs:build_non_finite"
        cfg["model"]["kwargs"]["value"] = value
        return env.invoke(cfg)

    return setup


# ------------------------------------------------------------- output set-ups
def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder``: files with their bytes, folders as None."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def project_folder(env: Env) -> Invocation:
    """The issue's reproduction: a project that happens to hold a report.json."""
    proj = env.tmp / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "report.json").write_text("{}\n")
    (proj / "src" / "main.py").write_text("print('my code')\n")
    return env.invoke(out=proj, keep=snapshot(proj))


def user_folder(env: Env) -> Invocation:
    """A folder of the user's files with nothing of mmaudit's in it."""
    proj = env.tmp / "mywork"
    proj.mkdir()
    (proj / "README.md").write_text("# my analysis\n")
    (proj / "data.csv").write_text("a,b\n1,2\n")
    return env.invoke(out=proj, keep=snapshot(proj))


def notes_in_report(env: Env) -> Invocation:
    """A report this version wrote, to which the user added notes.txt."""
    earlier: Path = env.request.getfixturevalue("earlier_report")
    rep = env.tmp / "rep"
    shutil.copytree(earlier, rep)
    (rep / "notes.txt").write_text("reviewed with the radiologists on Monday\n")
    return env.invoke(out=rep, keep=snapshot(rep))


def notes_in_old_report(env: Env) -> Invocation:
    """A report folder as an earlier mmaudit version left it (no marker of any kind), plus the
    user's notes.txt."""
    rep = env.tmp / "old_rep"
    (rep / "figures" / "performance").mkdir(parents=True)
    (rep / "tables" / "performance").mkdir(parents=True)
    (rep / "report.json").write_text('{"schema_version": 1, "checks": {}}\n')
    for name in ("index.html", "summary.md", "junit.xml", "config.yaml"):
        (rep / name).write_text("old\n")
    (rep / "figures" / "performance" / "roc.png").write_bytes(b"\x89PNG old")
    (rep / "notes.txt").write_text("reviewed with the radiologists on Monday\n")
    return env.invoke(out=rep, keep=snapshot(rep))


def out_under_a_file(env: Env) -> Invocation:
    (env.tmp / "somefile").write_text("not a folder\n")
    return env.invoke(out=env.tmp / "somefile" / "out")


def out_is_a_file(env: Env) -> Invocation:
    target = env.tmp / "results.txt"
    target.write_text("someone's results\n")
    inv = env.invoke(out=target)
    inv.keep = {"": target.read_bytes()}
    return inv


def out_read_only_parent(env: Env) -> Invocation:
    parent = env.tmp / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    if os.access(parent, os.W_OK):  # root: permission bits do not stop it
        parent.chmod(0o755)
        pytest.skip("this user can write into a read-only folder (root); cannot reproduce")
    return env.invoke(out=parent / "report")


def make_immutable(env: Env, path: Path) -> None:
    """``chattr +i`` on ``path`` (undone when the test ends); skip where that is unavailable.
    Unlike permission bits, the immutable flag stops root too."""
    if shutil.which("chattr") is None:
        pytest.skip("no chattr on this machine")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {done.stderr.strip()}")
    env.request.addfinalizer(
        lambda: subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)
    )


def out_immutable_parent(env: Env) -> Invocation:
    parent = env.tmp / "frozen"
    parent.mkdir()
    make_immutable(env, parent)
    return env.invoke(out=parent / "report")


def out_immutable_report(env: Env) -> Invocation:
    """An earlier report that cannot be replaced: the final rename over it would fail."""
    earlier: Path = env.request.getfixturevalue("earlier_report")
    rep = env.tmp / "frozen_rep"
    shutil.copytree(earlier, rep)
    make_immutable(env, rep)
    return env.invoke(out=rep, keep=snapshot(rep))


# ------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Case:
    """One row: the set-up, the commands it applies to, the exit code and the error line's
    patterns (regular expressions, all must match the one line)."""

    id: str
    setup: Setup
    expect: tuple[str, ...]
    commands: tuple[str, ...] = BOTH
    code: int = 2
    usage: bool = False  # a click usage error: "Usage:" / "Try ... --help" lines may precede
    validate_problems: int = 1  # problem lines `validate` lists for this input


def case(id: str, setup: Setup, *expect: str, **kw: Any) -> Case:
    return Case(id, setup, expect, **kw)


YAML = r"audit\.yaml:\d+"  # the file and the line of the offending key

CASES: list[Case] = [
    # --- the config file
    case("missing config", missing_config, r"config file not found", r"nope\.yaml"),
    case("YAML syntax error", yaml_syntax_error, r"audit\.yaml:\d+: YAML syntax error"),
    case("config not a mapping", not_a_mapping, r"audit\.yaml", r"mapping"),
    case(
        "config not UTF-8",
        non_utf8,
        r"audit\.yaml",
        rf"\b{NON_UTF8_OFFSET}\b",
        r"UTF-8",
    ),
    case(
        "duplicated YAML key",
        config_text(duplicate_batch_size),
        r"audit\.yaml",
        r"batch_size",
        r"twice|duplicate|more than once",
    ),
    case(
        "duplicated YAML section",
        config_text(duplicate_section),
        r"audit\.yaml",
        r"'checks'|checks",
        r"twice|duplicate|more than once",
    ),
    case(
        "misspelt required key (model)",
        config_text(misspelt_model),
        r"audit\.yaml",
        r"modle",
        r"did you mean 'model'",
    ),
    case(
        "misspelt required key (data.target)",
        config_text(misspelt_target),
        YAML,
        r"targte",
        r"did you mean 'target'",
    ),
    case("unknown key", mutate("data.targte", {"column": "label"}), YAML, r"did you mean 'target'"),
    case(
        "empty attribute entry",
        config_text(empty_attribute),
        YAML,
        r"data\.attributes\.site",
        r"\bempty\b|kind:",  # says what to write, not a raw "should be a valid dictionary"
    ),
    case("wrong type", mutate("runtime.batch_size", "big"), YAML, r"runtime\.batch_size"),
    case("batch_size 0", mutate("runtime.batch_size", 0), YAML, r"runtime\.batch_size"),
    case("num_workers -1", mutate("runtime.num_workers", -1), YAML, r"runtime\.num_workers"),
    case("max_samples 0", mutate("runtime.max_samples", 0), YAML, r"runtime\.max_samples"),
    case("seed -1", mutate("runtime.seed", -1), YAML, r"runtime\.seed"),
    case("image size 0", mutate("data.image.size", 0), YAML, r"data\.image\.size"),
    case("image channels 2", mutate("data.image.channels", 2), YAML, r"data\.image\.channels"),
    case("image max_value 0", mutate("data.image.max_value", 0), YAML, r"data\.image\.max_value"),
    case(
        "image mean of 3 for 1 channel",
        mutate("data.image.mean", [0.5, 0.5, 0.5]),
        r"data\.image\.mean",
    ),
    case("text max_length 0", text_max_length_0, YAML, r"data\.text\.max_length"),
    case(
        "embeddings_max_mb -1",
        mutate("report.embeddings_max_mb", -1),
        YAML,
        r"report\.embeddings_max_mb",
    ),
    case(
        "two model sources",
        mutate("model.checkpoint", "/somewhere"),
        r"audit\.yaml",
        r"exactly one of model\.checkpoint, model\.factory or model\.torchscript",
    ),
    case("unknown model input", mutate("model.inputs", {"labs": "x"}), r"model\.inputs"),
    case(
        "multilabel without columns",
        mutate("data.target", {"kind": "multilabel"}),
        r"audit\.yaml",
        r"data\.target\.columns",
    ),
    case(
        "given normalisation without stats",
        mutate("data.tabular.normalization", "given"),
        r"audit\.yaml",
        r"lab_a",
        r"mean and std",
    ),
    case(
        "invalid device in config",
        mutate("runtime.device", "gpu"),
        YAML,
        r"runtime\.device",
        r"'gpu'",
    ),
    case("unknown check", mutate("checks", {"perfomance": {}}), r"did you mean 'performance'"),
    case(
        "unknown check param",
        mutate("checks", {"performance": {"params": {"nboot": 3}}}),
        YAML,
        r"unknown key 'nboot'",
        r"did you mean 'n_boot'",
    ),
    case(
        "check param out of range",
        mutate("checks", {"performance": {"params": {"n_boot": 10}}}),
        YAML,
        r"checks\.performance\.params\.n_boot",
    ),
    case(
        "unknown threshold key",
        mutate("checks", {"performance": {"thresholds": {"auroc_low": {"warn_belo": 0.9}}}}),
        r"checks\.performance\.thresholds\.auroc_low",
        r"did you mean 'warn_below'",
    ),
    # --- the manifest
    case(
        "missing manifest",
        mutate("data.manifest", "/nonexistent/manifest.csv"),
        r"manifest not found: /nonexistent/manifest\.csv",
    ),
    case(
        "missing column",
        mutate("data.target", {"column": "lable"}),
        r"manifest\.csv",
        r"column 'lable'",
        r"did you mean 'label'",
        validate_problems=2,  # and "1 configured column(s) missing; rows not read"
    ),
    case(
        "split selects no rows",
        mutate("data.split", {"column": "split", "values": ["train"]}),
        r"manifest\.csv",
        r"no rows with split in \['train'\]",
    ),
    case("manifest without rows", edit_rows(no_rows), r"manifest\.csv", r"has no rows"),
    case(
        "manifest unreadable",
        raw_manifest(garbage_parquet),
        r"manifest\.parquet",
        r"cannot read manifest",
    ),
    case(
        "duplicated column names",
        raw_manifest(duplicate_column),
        r"manifest\.csv",
        r"lab_a",
        r"(?i)twice|duplicate|more than once",
    ),
    case(
        "semicolon-separated CSV",
        write_raw_text(semicolons),
        r"manifest\.csv",
        r"';'",
        r"data\.separator",
    ),
    case(
        "tab-separated CSV",
        write_raw_text(tabs),
        r"manifest\.csv",
        r"\\t|tab",
        r"data\.separator",
    ),
    case(
        "blank id",
        edit_rows(set_cell("id", 3, None)),
        r"manifest\.csv row 5: empty id in column 'id'",
    ),
    case("duplicate id", edit_rows(duplicate_id), r"manifest\.csv row 7: duplicate id 's0'"),
    case(
        "NaN target",
        edit_rows(nan_target),
        r"manifest\.csv row 6: target column 'label' is empty",
    ),
    case("target with one class", edit_rows(one_class), r"manifest\.csv", r"has one class only"),
    case(
        "binary target not 0/1",
        edit_rows(words_as_target),
        r"manifest\.csv",
        r"'label' must be 0/1",
        r"data\.target\.positive",
    ),
    case(
        "text in a lab column",
        edit_rows(set_cell("lab_a", 2, "high")),
        r"row 4 \(id 's2'\)",
        r"'lab_a' is not a number: 'high'",
    ),
    case("inf lab", csv_cell_text("lab_a", 3, "inf"), r"row 5 \(id 's3'\)", r"lab_a", r"(?i)inf"),
    case("-inf lab", csv_cell_text("lab_a", 3, "-inf"), r"row 5 \(id 's3'\)", r"lab_a", r"(?i)inf"),
    case(
        "1e400 lab",
        csv_cell_text("lab_a", 3, "1e400"),
        r"row 5 \(id 's3'\)",
        r"lab_a",
        r"(?i)inf|1e400",
    ),
    case(
        "text in a continuous attribute",
        edit_rows(set_cell("age", 2, "old")),
        r"row 4 \(id 's2'\)",
        r"attribute 'age'",
        r"kind: categorical",
    ),
    case(
        "inf in a continuous attribute",
        csv_cell_text("age", 2, "inf"),
        r"row 4 \(id 's2'\)",
        r"age",
        r"(?i)inf",
    ),
    case(
        "image file missing",
        edit_rows(drop_image),
        r"row 5 \(id 's3'\): image file not found",
    ),
    case(
        "image undecodable",
        edit_rows(corrupt_image),
        r"row 7 \(id 's5'\): cannot decode image",
    ),
    case(
        "ROI mask missing",
        edit_rows(drop_mask),
        r"row 9 \(id 's7'\): ROI mask file not found",
    ),
    case(
        "ROI mask undecodable",
        edit_rows(corrupt_mask),
        r"row 4 \(id 's2'\): cannot decode ROI mask",
    ),
    case("tokenizer folder missing", tokenizer_missing, r"tokenizer folder not found", r"no_tok"),
    case("tokenizer folder broken", tokenizer_broken, r"not a loadable tokenizer folder"),
    # --- the model
    case("checkpoint folder missing", checkpoint_missing, r"no_ckpt"),
    case("weights file missing", weights_missing, r"nope\.safetensors"),
    case("TorchScript file missing", torchscript_missing, r"no_script\.pt"),
    case(
        "state_dict keys do not fit",
        weights_renamed,
        r"weights do not fit",
        r"fuse\.weight",
        r"fusion\.weight",
    ),
    case("pickle needing code", weights_pickle_with_code, r"refused", r"tiny_models\.TinyFusion"),
    case("weights not a torch file", weights_text_file, r"not a PyTorch file", r"weights\.pt"),
    case(
        "factory module missing",
        mutate("model.factory", "nowhere_pkg.models:build"),
        r"cannot import module 'nowhere_pkg\.models'",
    ),
    case(
        "factory function missing",
        mutate("model.factory", "tiny_models:no_such_build"),
        r"no_such_build",
    ),
    case("layer path missing", mutate("model.layers", {"embedding": "fusion"}), r"'fuse'"),
    case(
        "forward keywords do not fit",
        renamed_forward,
        r"the model's forward takes \(pixels, labs\)",
        r"model\.inputs",
    ),
    case("model raises on a batch", model_raises, r"the model failed on one batch"),
    case(
        "output count does not fit the target",
        three_outputs,
        r"the model returns 3 outputs but a binary target",
    ),
    case(
        "model returns NaN",
        non_finite_model("nan"),
        r"\bs3\b",
        r"(?i)nan|non-finite|not finite",
        r"(?i)logit|output",
        commands=RUN,
    ),
    case(
        "model returns inf",
        non_finite_model("inf"),
        r"\bs3\b",
        r"(?i)inf|non-finite|not finite",
        r"(?i)logit|output",
        commands=RUN,
    ),
    # --- the command line
    case(
        "unknown check in --checks",
        lambda env: env.invoke(run_flags=("--checks", "perfomance", "--no-progress")),
        r"did you mean 'performance'",
        commands=RUN,
    ),
    case(
        "every check disabled",
        every_check_disabled,
        r"no checks to run",
        commands=RUN,
    ),
    case(
        "bad --device",
        lambda env: env.invoke(
            run_flags=(*QUICK, "--device", "gpu"), validate_flags=("--device", "gpu")
        ),
        r"--device 'gpu' is not a device",
    ),
    case(
        "--device cuda where there is none",
        lambda env: (
            pytest.skip("this machine has CUDA")
            if torch.cuda.is_available()
            else env.invoke(
                run_flags=(*QUICK, "--device", "cuda"), validate_flags=("--device", "cuda")
            )
        ),
        r"no CUDA device",
    ),
    case(
        "unknown CLI option",
        lambda env: env.invoke(run_flags=(*QUICK, "--no-such-flag")),
        r"No such option: --no-such-flag",
        commands=RUN,
        usage=True,
    ),
    case(
        "--batch-size 0",
        lambda env: env.invoke(run_flags=(*QUICK, "--batch-size", "0")),
        r"--batch-size",
        commands=RUN,
        usage=True,
    ),
    # --- the output folder
    case(
        "-o is a project folder holding a report.json",
        project_folder,
        r"proj",
        r"\bsrc\b",
        commands=RUN,
    ),
    case(
        "-o is a folder of the user's files",
        user_folder,
        r"mywork",
        r"README\.md|data\.csv",
        commands=RUN,
    ),
    case("-o is a report plus the user's notes", notes_in_report, r"notes\.txt", commands=RUN),
    case(
        "-o is an older report plus the user's notes",
        notes_in_old_report,
        r"old_rep",
        commands=RUN,
    ),
    case("-o under a regular file", out_under_a_file, r"somefile", commands=RUN),
    case("-o is a regular file", out_is_a_file, r"results\.txt", commands=RUN),
    case("-o under a read-only folder", out_read_only_parent, r"locked", commands=RUN),
    case("-o under an immutable folder", out_immutable_parent, r"frozen", commands=RUN),
    case("-o is an immutable earlier report", out_immutable_report, r"frozen_rep", commands=RUN),
    case(
        "-o under /proc",
        out_in_proc,
        r"cannot create /proc/mmaudit-report",
        r"/proc does not take new folders",
        commands=RUN,
    ),
    # --- accepted silently before; unclear before
    case(
        "lab column listed twice",
        mutate("data.tabular.columns", ["lab_a", "lab_a", "lab_b"]),
        YAML,
        r"data\.tabular\.columns\[1\]: 'lab_a' is listed twice",
        r"list each column once",
    ),
    case(
        "target also a lab column",
        mutate("data.tabular.columns", ["lab_a", "label"]),
        YAML,
        r"data\.tabular\.columns\[1\]: column 'label' is the target",
        r"remove it from data\.tabular\.columns",
    ),
    case(
        "target also an attribute",
        mutate("data.attributes.label", {}),
        YAML,
        r"data\.attributes\.label: column 'label' is the target",
        r"remove data\.attributes\.label",
    ),
    case(
        "inverted threshold limits",
        mutate(
            "checks.performance.thresholds", {"auroc_low": {"warn_below": 0.5, "fail_below": 0.9}}
        ),
        YAML,
        r"checks\.performance\.thresholds\.auroc_low\.fail_below: fail_below 0\.9 is above"
        r" warn_below 0\.5",
        r"fail_below <= warn_below",
    ),
    case(
        "YAML boolean for a text key",
        config_text(lambda text: text.replace("  id: id\n", "  id: yes\n", 1)),
        YAML,
        r"data\.id: YAML reads yes as a boolean",
        r"quote it: id: 'yes'",
    ),
    case(
        "lab column blank in every row",
        edit_rows(blank_lab),
        r"manifest\.csv: tabular column 'lab_b' is blank in every row",
        r"remove it from data\.tabular\.columns",
    ),
    case(
        "binary target holding class code 2",
        edit_rows(class_code_2),
        r"manifest\.csv",
        r"'label' must be 0/1",
        r"data\.target\.kind: multiclass",
    ),
    case(
        "image path is a folder",
        edit_rows(set_cell("image_path", 2, "images")),
        r"manifest\.csv row 4 \(id 's2'\): image path is a folder, not an image file",
    ),
    case(
        "manifest not UTF-8",
        raw_manifest(latin1_manifest),
        r"manifest\.csv:4: not UTF-8 text \(byte 0xe9",
        r"save it as UTF-8",
    ),
]

PARAMS = [
    pytest.param(c, command, id=f"{command}: {c.id}") for c in CASES for command in c.commands
]


@pytest.fixture(scope="module")
def earlier_report(
    tiny_manifest: Path, tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A complete report folder of the tiny audit, written by this version of mmaudit."""
    folder = tmp_path_factory.mktemp("earlier")
    cfg = folder / "audit.yaml"
    good = tiny_config(tiny_manifest, byo_model_config(tiny_weights / "tiny.safetensors"))
    cfg.write_text(yaml.safe_dump(good, sort_keys=False))
    out = folder / "rep"
    with pytest.raises(SystemExit) as exc:
        main(["run", str(cfg), "-o", str(out), *QUICK, "--fail-on", "never"])
    assert exc.value.code in (0, None) and (out / "report.json").is_file()
    return out


@pytest.fixture()
def env(
    tmp_path: Path,
    tiny_manifest: Path,
    tiny_weights: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> Env:
    monkeypatch.setenv("COLUMNS", "10000")  # rich wraps nothing: one message, one line
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return Env(tmp_path, tiny_manifest, tiny_weights, request)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    code = exc.value.code
    return (
        (code if isinstance(code, int) else (0 if code is None else 1)),
        captured.out,
        captured.err,
    )


def nonblank(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def the_error_line(command: str, c: Case, out: str, err: str) -> str:
    """The one line that reports the problem, after checking that nothing else was said."""
    lines = nonblank(err)
    if c.usage:  # click: "Usage: ...", "Try '... --help' for help.", "Error: ..."
        lines = [ln for ln in lines if not re.match(r"(Usage: |Try '.*--help' for help)", ln)]
    said = [ln for ln in lines if not ln.startswith("note:")]
    if command == "validate" and not said:
        # validate's own output: "N problem(s) in CONFIG:" then one indented line per problem
        body = [ln for ln in nonblank(out) if not ln.startswith("note:")]
        assert body and re.match(r"\d+ problem\(s\) in ", body[0]), out
        problems = [ln.strip() for ln in body[1:]]
        assert len(problems) == c.validate_problems and all(
            ln.startswith("  ") for ln in body[1:]
        ), out
        return problems[0]
    assert len(said) == 1, f"expected one error line on stderr, got:\n{err}"
    assert all(ln.startswith("note:") for ln in lines[:-1]), err  # notes only before it
    if not c.usage:
        assert said[0].startswith("error: "), err
    return said[0]


@pytest.mark.parametrize(("c", "command"), PARAMS)
def test_bad_input_is_one_line_exit_2_and_no_report(
    c: Case, command: str, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = c.setup(env)
    capsys.readouterr()  # what a set-up printed (the earlier report's run) is not this run's
    argv = (
        ["run", str(inv.config), "-o", str(inv.out), *inv.run_flags]
        if command == "run"
        else ["validate", str(inv.config), *inv.validate_flags]
    )
    rc, out, err = run_cli(argv, capsys)
    assert "Traceback" not in out + err, out + err
    assert rc == c.code, f"exit {rc}, expected {c.code}\nstdout:\n{out}\nstderr:\n{err}"
    line = the_error_line(command, c, out, err)
    for pattern in c.expect:
        assert re.search(pattern, line), f"{pattern!r} not in the error line: {line}"
    assert "report written" not in out
    # nothing written next to -o, and -o itself is gone or exactly as it was
    if inv.keep:
        assert inv.out.exists(), f"{inv.out} was deleted"
        after = snapshot(inv.out) if inv.out.is_dir() else {"": inv.out.read_bytes()}
        assert after == inv.keep, "files in -o were changed or deleted"
    else:
        assert not inv.out.exists(), f"{inv.out} written after a refusal"
    if inv.out.parent.is_dir():
        left = sorted(p.name for p in inv.out.parent.glob(f".{inv.out.name}*"))
        assert left == [], f"hidden folders left beside -o: {left}"
    assert not env.out.exists()


def test_table_covers_enough_cases() -> None:
    """The suite is the acceptance test of the bad-input issue: at least 40 kinds of input."""
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


# ------------------------------------------------------------ not bad input
def test_ids_and_patients_are_kept_as_written(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """Id ``000123`` stays ``000123`` in the report, and patients ``007``, ``7`` and ``00007``
    are three patients, not one."""
    manifest = env.data_copy()
    df = pd.read_csv(manifest, dtype=str)
    df["id"] = [f"{i:06d}" for i in range(100, 100 + len(df))]
    df["patient"] = [f"P{i // 2}" for i in range(len(df))]
    df.loc[0, "patient"], df.loc[1, "patient"], df.loc[2, "patient"] = "007", "7", "00007"
    df.loc[3, "patient"] = "007"  # a second study of patient 007
    manifest.write_text(df.to_csv(index=False))
    inv = env.with_manifest(manifest)
    rc, out, err = run_cli(
        ["run", str(inv.config), "-o", str(inv.out), *QUICK, "--fail-on", "never"], capsys
    )
    assert rc == 0, err
    from mmaudit.report.document import load_report

    report = load_report(inv.out)
    written = pd.read_parquet(inv.out / "samples" / "predictions.parquet")
    assert list(written["id"]) == list(df["id"]) and "000123" in set(written["id"])
    assert list(written["patient"][:4]) == ["007", "7", "00007", "007"]
    assert report.data["patients"] == df["patient"].nunique()  # 007, 7, 00007 apart


def test_parquet_blank_lab_is_missing_like_a_blank_csv_cell(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Parquet text lab column with ``''`` (and whitespace) cells reads like CSV blanks:
    validate passes, and the rows' lab is missing, not an error."""
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset

    manifest = env.data_copy()
    df = pd.read_csv(manifest)
    blank = df["lab_b"].isna()
    assert blank.sum() >= 3
    as_text = pd.read_csv(manifest)
    as_text["lab_b"] = [
        "" if b else repr(float(v)) for b, v in zip(blank, df["lab_b"], strict=True)
    ]
    as_text.loc[blank[blank].index[1], "lab_b"] = "  "
    parquet = manifest.parent / "manifest.parquet"
    as_text.to_parquet(parquet, index=False)
    csv_inv = env.with_manifest(manifest)
    parquet_cfg = yaml.safe_load(csv_inv.config.read_text())
    parquet_cfg["data"]["manifest"] = str(parquet)
    pq_config = env.write(parquet_cfg, "parquet.yaml")
    rc, out, err = run_cli(["validate", str(pq_config)], capsys)
    assert rc == 0, out + err
    from_csv = build_dataset(load_config(csv_inv.config))
    from_parquet = build_dataset(load_config(pq_config))
    assert from_csv.tabular_missing is not None and from_parquet.tabular_missing is not None
    assert torch.equal(from_csv.tabular_missing, from_parquet.tabular_missing)
    assert torch.allclose(from_csv.tabular, from_parquet.tabular)


# ------------------------------------------------------------------- Ctrl-C
def test_sigint_is_one_line_exit_130_and_no_report(env: Env) -> None:
    """Ctrl-C in a run: like SIGTERM, one line saying no report was written, exit 130, and
    neither the report nor its hidden staging folder left behind."""
    cfg = copy.deepcopy(env.cfg)
    cfg["model"]["factory"] = "test_bad_inputs:build_slow"
    config = env.write(cfg)
    out_dir = env.tmp / "rep"

    def stages() -> list[str]:
        return sorted(p.name for p in env.tmp.glob(".rep.partial-*"))

    proc = subprocess.Popen(
        [sys.executable, "-m", "mmaudit", "run", str(config), "-o", str(out_dir), *QUICK],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "10000"},
    )
    try:
        deadline = time.monotonic() + 120
        while not stages() and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never staged its report"
            time.sleep(0.05)
        time.sleep(1.0)  # well into the run: loading or the (sleeping) model sweep
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    said = [ln for ln in nonblank(err) if not ln.startswith("note:")]
    assert said == ["interrupted (SIGINT); no report was written"], err
    assert stages() == [] and not out_dir.exists()
