"""The built wheel is a working mmaudit on its own: installed into a fresh virtual environment
and run from a folder outside the repository, ``mmaudit sample demo`` writes the sample and
``mmaudit run demo/sample.yaml`` audits it. Its metadata takes version ranges a user's
environment can meet (the exact torch pins live in constraints.txt, for this machine)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "-w", str(dist), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (found,) = dist.glob("mmaudit-*.whl")
    return found


def test_wheel_metadata_takes_ranges_and_ships_the_sample(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(meta_name).decode())
    assert meta["Requires-Python"] == ">=3.10"
    requires = meta.get_all("Requires-Dist") or []
    for pkg in ("torch", "torchvision"):
        (spec,) = [r for r in requires if r.split(">")[0].split("=")[0].split("<")[0] == pkg]
        assert "==" not in spec and ">=" in spec, spec
    assert "mmaudit/sample/data/manifest.csv" in names
    assert "mmaudit/sample/data/checkpoints/shortcut/model.safetensors" in names
    assert "mmaudit/sample/configs/sample.yaml" in names
    assert "mmaudit/report/templates/report.html" in names


def test_installed_wheel_writes_and_audits_the_sample(wheel: Path, tmp_path: Path) -> None:
    """A fresh venv gets the wheel alone (--no-deps); its dependencies come from this test
    environment's site-packages through a .pth file, so that no torch is downloaded. The
    commands run outside the repository, so only the installed package can answer."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    fresh = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(fresh), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # appended after the venv's own site-packages: the wheel's mmaudit comes first
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(fresh), "install", "--no-deps", "--quiet",
         str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    mmaudit = str(env_dir / "bin" / "mmaudit")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
        return subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=900, env=env)

    where = run(str(fresh), "-c", "import mmaudit; print(mmaudit.__file__)")
    assert where.stdout.startswith(str(env_dir)), where.stdout + where.stderr
    done = run(mmaudit, "sample", "demo")
    assert done.returncode == 0, done.stderr
    assert (work / "demo" / "sample.yaml").is_file() and (work / "demo" / "images").is_dir()
    done = run(
        mmaudit, "run", "demo/sample.yaml", "-o", "report", "--checks", "performance",
        "--max-samples", "64", "--fail-on", "never", "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (work / "report" / "index.html").is_file()
    assert "performance" in (work / "report" / "summary.md").read_text()
