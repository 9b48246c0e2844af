"""``mmaudit sample DIR``: the packaged sample configs are the repository's, with paths
relative to the folder they are written to; a folder with anything in it is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmaudit.engine.config_file import load_config
from mmaudit.engine.errors import MmauditError
from mmaudit.sample.copy import CONFIGS, DATA, write_sample

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["sample.yaml", "sample_clean.yaml"])
def test_packaged_configs_are_the_repository_configs(name: str) -> None:
    repo = (ROOT / "configs" / name).read_text().replace("../sample_data/", "")
    packaged = (CONFIGS / name).read_text()
    body = [ln for ln in repo.splitlines() if not ln.startswith("#") and "build_summary" not in ln]
    assert body == [
        ln for ln in packaged.splitlines() if not ln.startswith("#") and "build_summary" not in ln
    ]


def test_repository_sample_data_is_the_packaged_sample() -> None:
    assert (ROOT / "sample_data").resolve() == DATA


def test_write_sample_copies_and_refuses_a_used_folder(tmp_path: Path) -> None:
    configs = write_sample(tmp_path / "demo")
    assert [c.name for c in configs] == ["sample.yaml", "sample_clean.yaml"]
    cfg = load_config(configs[0])
    assert Path(cfg.data.manifest).is_file() and Path(cfg.model.checkpoint).is_dir()
    with pytest.raises(MmauditError, match="exists and is not an empty folder"):
        write_sample(tmp_path / "demo")
    (tmp_path / "empty").mkdir()
    write_sample(tmp_path / "empty")  # an empty folder is fine
