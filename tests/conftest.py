"""Shared fixtures: a tiny on-disk dataset and a config writer (built once per session)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

TESTS = Path(__file__).parent
TINY_N = 48
TINY_SIZE = 16


def write_tiny_dataset(folder: Path, n: int = TINY_N, seed: int = 0) -> Path:
    """Images whose centre brightness carries the label, a lab that carries it too, attributes."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    rows = []
    label = np.array([i % 2 for i in range(n)])
    rng.shuffle(label)
    for i in range(n):
        img = rng.normal(100, 10, (TINY_SIZE, TINY_SIZE))
        img[5:11, 5:11] += 60 * label[i]
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / "images" / f"s{i}.png")
        mask = np.zeros((TINY_SIZE, TINY_SIZE), np.uint8)
        mask[3:13, 3:13] = 255
        Image.fromarray(mask).save(folder / "masks" / f"s{i}.png")
        rows.append(
            {
                "id": f"s{i}",
                "patient": f"p{i // 2}",
                "image_path": f"images/s{i}.png",
                "mask_path": f"masks/s{i}.png",
                "lab_a": float(rng.normal(label[i], 1.0)),
                "lab_b": float(rng.normal(0, 1.0)) if i % 7 else np.nan,
                "label": int(label[i]),
                "sex": "F" if i % 3 else "M",
                "site": "A" if i < n // 2 else "B",
                "age": float(rng.uniform(20, 90)),
                "split": "test",
            }
        )
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def tiny_config(manifest: Path, model: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A config dict for the tiny dataset (image + tabular), updated by ``changes`` per section."""
    cfg: dict[str, Any] = {
        "model": model,
        "data": {
            "manifest": str(manifest),
            "id": "id",
            "patient": "patient",
            "target": {"column": "label"},
            "image": {
                "column": "image_path",
                "roi_mask": "mask_path",
                "size": TINY_SIZE,
                "channels": 1,
            },
            "tabular": {"columns": ["lab_a", "lab_b"]},
            "attributes": {"sex": {}, "site": {}, "age": {"kind": "continuous"}},
        },
        "checks": {"performance": {"params": {"n_boot": 100}}},
        "runtime": {"device": "cpu", "batch_size": 16, "progress": False},
    }
    for section, value in changes.items():
        if isinstance(value, dict) and isinstance(cfg.get(section), dict):
            cfg[section] = {**cfg[section], **value}
        else:
            cfg[section] = value
    return cfg


@pytest.fixture()
def write_config(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    """Write a config dict to a YAML file in a fresh folder; return its path."""

    def _write(cfg: dict[str, Any], name: str = "audit.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    return _write


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("weights")
    from tiny_models import build_tiny

    model = build_tiny()
    torch.manual_seed(1)
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)
    save_file(model.state_dict(), folder / "tiny.safetensors")
    torch.save(model.state_dict(), folder / "tiny.pt")
    torch.jit.script(model).save(str(folder / "tiny_script.pt"))
    return folder


def byo_model_config(weights: Path, **extra: object) -> dict[str, object]:
    """The ``model:`` section that loads TinyFusion through the factory path."""
    return {
        "factory": "tiny_models:build_tiny",
        "kwargs": {"width": 8},
        "weights": str(weights),
        "python_path": [str(TESTS)],
        "layers": {"embedding": "fuse", "image": "img", "tabular": "tab"},
        **extra,
    }


def wait_interruptibly(seconds: float) -> None:
    """Wait ``seconds`` in short steps, for models that must still be running when a test
    signals them. A signal sent to the process may be delivered to one of torch's threads;
    that does not interrupt a single long ``time.sleep`` of the main thread, so its Python
    handler would run only when the sleep ends. Between steps it runs at once."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture(scope="module")
def one_torch_thread() -> Any:
    """Run a module's tiny models on one intra-op thread: on a busy 2-core machine, 2 OpenMP
    threads mostly wait for each other (10x slower) and tiny models gain nothing from them.
    A test module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sample_model() -> tuple[Any, Any]:
    """The bundled ``shortcut`` checkpoint and a batch of 32 of the sample's test rows,
    loaded once for the tests of the image methods (CAMs, IG, the batched image forward)."""
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

    cfg = load_config(TESTS.parent / "configs" / "sample.yaml")
    cfg.runtime.device = "cpu"
    cfg.runtime.max_samples = 32
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    batch = ds.collate([ds[i] for i in range(len(ds))])
    return adapter, batch


@pytest.fixture(scope="session")
def audits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real audits of the sample for the report tests (``sample_audits``; imported here, not
    at the top: model factories in this folder are imported by audits in subprocesses,
    which do not have tests/report on their path)."""
    from sample_audits import make_audits

    return make_audits(tmp_path_factory)
