"""The CI recipes in examples/ci run as written: their mmaudit commands, executed in order by
bash with the recipe's own variables, audit a checkpoint, diff it against a stored baseline,
leave junit.xml and the diff for the comment step, and fail the job exactly when something
regressed."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import byo_model_config, tiny_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "examples" / "ci"
#: cheap audits: the recipes' commands are what is tested, not the checks
RUN_ARGS = "--checks performance"
#: the same config as the baseline (nothing regresses), and a stricter one (a new warn)
CASES = [("audit/audit.yaml", False), ("audit/strict.yaml", True)]


def _env(variables: dict[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CI_")}
    env.update({k: str(v) for k, v in variables.items()})
    env["MMAUDIT_RUN_ARGS"] = RUN_ARGS
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_manifest: Path, tiny_weights: Path):  # type: ignore[no-untyped-def]
    """A project as the recipes expect it: audit/audit.yaml and a stored baseline report made
    from it; and a stricter config whose audit regresses against that baseline."""
    root = tmp_path_factory.mktemp("ci_project")
    (root / "audit").mkdir()
    good = tiny_config(tiny_manifest, byo_model_config(tiny_weights / "tiny.safetensors"))
    (root / "audit" / "audit.yaml").write_text(yaml.safe_dump(good))
    strict = copy.deepcopy(good)
    # a calibration warn the baseline did not have: the audit passes its --fail-on fail gate,
    # the diff finds the regression
    strict["checks"]["performance"]["thresholds"] = {"ece_high": {"warn_above": 0.0}}
    (root / "audit" / "strict.yaml").write_text(yaml.safe_dump(strict))
    done = subprocess.run(
        ["mmaudit", "run", "audit/audit.yaml", "-o", "audit/baseline", "--fail-on", "never",
         "--no-progress", *RUN_ARGS.split()],
        cwd=root, env=_env({}), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root


def _fresh(root: Path) -> None:
    for name in ("mmaudit-report", "mmaudit-diff"):
        subprocess.run(["rm", "-rf", str(root / name)], check=True)


def _github_steps() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    flow = yaml.safe_load((RECIPES / "github-actions.yml").read_text())
    (job,) = flow["jobs"].values()
    return flow, job["steps"]


@pytest.mark.parametrize(("config", "job_fails"), CASES)
def test_github_actions_recipe(project: Path, config: str, job_fails: bool) -> None:
    flow, steps = _github_steps()
    triggers = flow.get("on", flow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in triggers
    _fresh(project)
    env = _env({**flow["env"], "MMAUDIT_CONFIG": config})
    ran, failed = 0, False
    for step in steps:
        script = step.get("run", "")
        if not script.startswith("mmaudit "):
            continue
        done = subprocess.run(
            ["bash", "-e", "-c", script], cwd=project, env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert done.returncode in (0, 1), (script, done.stderr)
        failed |= done.returncode == 1
        ran += 1
    assert ran == 2  # the audit and the diff
    assert failed is job_fails
    # what the later steps post and publish exists
    comment = next(s for s in steps if "gh pr comment" in s.get("run", ""))
    body = re.search(r"--body-file (\S+)", comment["run"]).group(1)  # type: ignore[union-attr]
    assert (project / body).read_text().startswith("## mmaudit diff")
    junit = next(s for s in steps if "junit" in s.get("uses", ""))
    assert (project / junit["with"]["report_paths"]).is_file()
    if job_fails:
        assert "regressed" in (project / body).read_text()


@pytest.mark.parametrize(("config", "job_fails"), CASES)
def test_gitlab_ci_recipe(project: Path, config: str, job_fails: bool) -> None:
    recipe = yaml.safe_load((RECIPES / "gitlab-ci.yml").read_text())
    job = recipe["mmaudit"]
    _fresh(project)
    env = _env({**job["variables"], "MMAUDIT_CONFIG": config})
    # GitLab runs the script lines in one shell and stops at the first failing one
    script = "\n".join(job["script"])
    done = subprocess.run(
        ["bash", "-e", "-c", script], cwd=project, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == (1 if job_fails else 0), done.stderr
    assert (project / job["artifacts"]["reports"]["junit"]).is_file()
    assert (project / "mmaudit-diff" / "diff.md").is_file()
    assert job["artifacts"]["when"] == "always"
