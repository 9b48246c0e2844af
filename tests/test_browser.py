"""The HTML report in a real browser: headless Chromium renders it, shows the summary table, runs
no script from the data. Skipped when Chromium is absent (`make test-browser` installs it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import byo_model_config, tiny_config

from mmaudit.runner import Overrides, run_audit

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (make test-browser)"
)


@pytest.fixture(scope="module")
def report(tiny_manifest: Path, tiny_weights: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("browser")
    shutil.copytree(tiny_manifest.parent, folder / "data")
    df = pd.read_csv(folder / "data" / "manifest.csv")
    df.loc[0, "id"] = "<img src=x onerror=\"document.title='pwned'\">"
    df.to_csv(folder / "data" / "manifest.csv", index=False)
    cfg = tiny_config(folder / "data" / "manifest.csv", byo_model_config(tiny_weights / "tiny.pt"))
    cfg["checks"]["performance"]["params"]["n_confident_errors"] = 48
    (folder / "a.yaml").write_text(yaml.safe_dump(cfg))
    run_audit(folder / "a.yaml", folder / "report", Overrides(checks=["performance"]))
    return folder / "report"


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_summary_table_visible_and_no_script_runs(report: Path, tmp_path: Path) -> None:
    from PIL import Image

    page = (report / "index.html").as_uri()
    dom = _chromium(["--dump-dom", page], tmp_path).stdout
    assert 'id="summary"' in dom
    assert "pwned" not in dom.split("<title>")[1].split("</title>")[0]
    shot = tmp_path / "shot.png"
    _chromium([f"--screenshot={shot}", "--window-size=1200,900", page], tmp_path)
    assert shot.is_file()
    top = Image.open(shot).convert("L").crop((0, 0, 1200, 400))
    dark = sum(1 for v in top.getdata() if v < 100)
    assert dark > 500, "the summary table should be drawn near the top of the page"
