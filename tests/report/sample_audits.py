"""Real audits of the bundled sample for the report tests, made once a session by the
``audits`` fixture of tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmaudit.runner import Overrides, run_audit

ROOT = Path(__file__).resolve().parents[2]


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


def make_audits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Audits of the sample's shortcut and clean checkpoints (performance and saliency) and of
    a random-weights copy (performance): the ``audits`` session fixture."""
    from mmaudit.engine.models import build_model, read_spec, save_checkpoint

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
