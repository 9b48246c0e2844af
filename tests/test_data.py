"""Manifest -> dataset -> batches: modalities, missingness, targets, file formats."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmaudit.config import DataConfig, RuntimeConfig
from mmaudit.data import AuditDataset, load_image_file
from mmaudit.errors import DataError


def _cfg(manifest: Path, **extra: object) -> DataConfig:
    raw: dict[str, object] = {
        "manifest": manifest,
        "patient": "patient",
        "target": {"column": "label"},
        "image": {"column": "image_path", "roi_mask": "mask_path", "size": 16, "channels": 1},
        "tabular": {"columns": ["lab_a", "lab_b"]},
        "attributes": {"sex": {}, "age": {"kind": "continuous"}},
    }
    raw.update(extra)
    return DataConfig.model_validate(raw)


def test_batches_carry_every_modality_and_presence(tiny_manifest: Path) -> None:
    ds = AuditDataset(_cfg(tiny_manifest))
    assert len(ds) == 48 and ds.modalities == ("image", "tabular")
    batch = next(iter(ds.batches(10)))
    assert batch.image.shape == (10, 1, 16, 16)
    assert batch.roi_mask.shape == (10, 1, 16, 16) and set(batch.roi_mask.unique().tolist()) <= {
        0.0,
        1.0,
    }
    assert batch.tabular.shape == (10, 2)
    # lab_b is missing in rows 0, 7, 14, ...: filled with 0 (the mean) and flagged
    assert bool(batch.tabular_missing[0, 1]) and float(batch.tabular[0, 1]) == 0.0
    assert batch.present.all()  # a row with one lab left is still present
    mu, sd = ds.tabular_stats["lab_a"]
    raw = pd.read_csv(tiny_manifest)["lab_a"].to_numpy()
    assert np.allclose(ds.tabular[:, 0].numpy(), (raw - mu) / sd, atol=1e-5)
    assert ds.attributes["age"].dtype == float and ds.patients is not None


def test_empty_image_cell_means_missing_image(tiny_manifest: Path, tmp_path: Path) -> None:
    df = pd.read_csv(tiny_manifest)
    df.loc[2, "image_path"] = ""
    df.loc[3, ["lab_a", "lab_b"]] = np.nan
    path = tmp_path / "m.csv"
    df.to_csv(path, index=False)
    cfg = _cfg(path, image={"column": "image_path", "root": str(tiny_manifest.parent), "size": 16})
    ds = AuditDataset(cfg)
    assert not ds.present[2, 0] and ds.present[2, 1]
    assert not ds.present[3, 1]
    assert torch.equal(ds.load_image(2), torch.zeros(1, 16, 16))


def test_parquet_manifest_and_split_and_max_samples(tiny_manifest: Path, tmp_path: Path) -> None:
    df = pd.read_csv(tiny_manifest)
    df["split"] = np.where(np.arange(len(df)) % 4 == 0, "train", "test")
    path = tmp_path / "m.parquet"
    df.to_parquet(path)
    cfg = _cfg(
        path,
        image={"column": "image_path", "root": str(tiny_manifest.parent), "size": 16},
        split={"column": "split", "values": ["test"]},
    )
    ds = AuditDataset(cfg)
    assert len(ds) == 36
    small = AuditDataset(cfg, RuntimeConfig(max_samples=10, seed=3))
    again = AuditDataset(cfg, RuntimeConfig(max_samples=10, seed=3))
    assert len(small) == 10 and list(small.ids) == list(again.ids)


def test_multiclass_target_with_class_names(tiny_manifest: Path, tmp_path: Path) -> None:
    df = pd.read_csv(tiny_manifest)
    df["grade"] = np.array(["mild", "moderate", "severe"])[np.arange(len(df)) % 3]
    path = tmp_path / "m.csv"
    df.to_csv(path, index=False)
    cfg = _cfg(
        path,
        target={"column": "grade", "kind": "multiclass", "classes": ["mild", "moderate", "severe"]},
        image={"column": "image_path", "root": str(tiny_manifest.parent), "size": 16},
    )
    ds = AuditDataset(cfg)
    assert ds.class_names == ["mild", "moderate", "severe"] and ds.target[:3].tolist() == [0, 1, 2]
    bad = _cfg(
        path,
        target={"column": "grade", "kind": "multiclass", "classes": ["mild", "moderate"]},
        image={"column": "image_path", "root": str(tiny_manifest.parent), "size": 16},
    )
    with pytest.raises(DataError, match="'severe' is not in"):
        AuditDataset(bad)


def test_duplicate_ids_and_non_numeric_lab(tiny_manifest: Path, tmp_path: Path) -> None:
    df = pd.read_csv(tiny_manifest)
    df.loc[5, "id"] = "s0"
    path = tmp_path / "m.csv"
    df.to_csv(path, index=False)
    cfg = _cfg(path, image={"column": "image_path", "root": str(tiny_manifest.parent), "size": 16})
    with pytest.raises(DataError, match="row 7: duplicate id 's0'"):
        AuditDataset(cfg)
    df = pd.read_csv(tiny_manifest)
    df["lab_a"] = df["lab_a"].astype(object)
    df.loc[1, "lab_a"] = "high"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match="tabular column 'lab_a' is not a number: 'high'"):
        AuditDataset(cfg)


def test_rgb_resize_and_16bit(tmp_path: Path) -> None:
    from PIL import Image

    from mmaudit.data import image_to_tensor

    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    arr = load_image_file(tmp_path / "rgb.png")
    assert arr.shape == (20, 30, 3) and arr[..., 0].max() == 1.0
    t = image_to_tensor(arr, 16, 1)
    assert t.shape == (1, 16, 16) and abs(float(t.mean()) - 1 / 3) < 1e-3
    deep = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    arr16 = load_image_file(tmp_path / "deep.png")
    assert arr16.min() >= 0.0 and arr16.max() <= 1.0 and arr16.max() > 0.9


def test_real_dicom_chest_radiograph(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    data = pytest.importorskip("pydicom_data", reason="pydicom-data (dicom extra) not installed")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm")
    if path is None:
        pytest.skip("RG1_UNCR.dcm not available offline")
    assert data
    arr = load_image_file(Path(path))
    assert arr.ndim == 3 and arr.shape[2] == 1 and arr.min() >= 0.0 and arr.max() == 1.0
    shutil.copy(path, tmp_path / "cxr.dcm")
    pd.DataFrame({"id": ["a", "b"], "image_path": ["cxr.dcm", "cxr.dcm"], "label": [0, 1]}).to_csv(
        tmp_path / "m.csv", index=False
    )
    ds = AuditDataset(
        DataConfig.model_validate(
            {
                "manifest": tmp_path / "m.csv",
                "target": {"column": "label"},
                "image": {"column": "image_path", "size": 32},
            }
        )
    )
    assert ds.load_image(0).shape == (1, 32, 32)


def test_data_normalisation_uses_every_row_whatever_the_subset(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    """--max-samples and the split filter must not change what a row's lab inputs are."""
    df = pd.read_csv(tiny_manifest)
    df["split"] = np.where(np.arange(len(df)) < 12, "train", "test")
    df.loc[:11, "lab_a"] += 5.0  # the train rows shift the mean: a subset would miss it
    path = tmp_path / "m.csv"
    df.to_csv(path, index=False)
    image = {"column": "image_path", "root": str(tiny_manifest.parent), "size": 16}
    whole = AuditDataset(_cfg(path, image=image))
    part = AuditDataset(
        _cfg(path, image=image, split={"column": "split", "values": ["test"]}),
        RuntimeConfig(max_samples=10, seed=1),
    )
    mu, sd = float(df["lab_a"].mean()), float(df["lab_a"].std(ddof=0))
    assert np.allclose(part.tabular_stats["lab_a"], (mu, sd), rtol=1e-5)
    assert part.tabular_stats == whole.tabular_stats
    rows = [list(whole.ids).index(i) for i in part.ids]
    assert torch.allclose(part.tabular, whole.tabular[rows])


def test_collect_mode_lists_every_problem_and_reads_on(tiny_manifest: Path, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    shutil.copytree(tiny_manifest.parent, folder)
    df = pd.read_csv(folder / "manifest.csv")
    df.loc[5, "id"] = "s0"
    df["label"] = df["label"].astype(float)
    df.loc[[3, 9], "label"] = np.nan
    df["lab_a"] = df["lab_a"].astype(object)
    df.loc[1, "lab_a"] = "high"
    (folder / "masks" / "s8.png").unlink()
    df.to_csv(folder / "manifest.csv", index=False)
    cfg = _cfg(folder / "manifest.csv")
    problems: list[str] = []
    ds = AuditDataset(cfg, problems=problems)
    assert len(ds) == 48 and len(problems) == 4, problems
    assert "row 7: duplicate id 's0'" in problems[0]
    assert "row 5: target column 'label' is empty (NaN) (and 1 more empty row)" in problems[1]
    assert "row 10 (id 's8'): ROI mask file not found" in problems[2]
    assert "tabular column 'lab_a' is not a number: 'high'" in problems[3]
    with pytest.raises(DataError, match="duplicate id"):  # without a list: the first one raises
        AuditDataset(cfg)


def test_corrupt_roi_mask_is_a_data_error(tiny_manifest: Path, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    shutil.copytree(tiny_manifest.parent, folder)
    (folder / "masks" / "s2.png").write_bytes(b"not a png")
    ds = AuditDataset(_cfg(folder / "manifest.csv"))
    assert ds.load_mask(1).shape == (1, 16, 16)
    with pytest.raises(DataError, match=r"row 4 \(id 's2'\): cannot decode ROI mask"):
        ds.load_mask(2)


def test_tabular_stand_in_is_in_the_stored_values(tiny_manifest: Path) -> None:
    """``data.missing.tabular: mean`` for a model without a presence mask: the stored
    ``ds.tabular`` (read directly by tabular SHAP and the cache's input means) holds the
    column mean in missing cells, exactly what batches carry; a model that takes the mask
    gets zeros back."""
    raw = pd.read_csv(tiny_manifest)["lab_b"]
    given = {"columns": ["lab_a", "lab_b"], "normalization": "none"}
    ds = AuditDataset(_cfg(tiny_manifest, tabular=given, missing={"tabular": "mean"}))
    gone = ds.tabular_missing[:, 1].numpy()
    assert gone.any() and not gone.all()
    assert np.all(ds.tabular[gone, 1].numpy() == 0.0)  # before configure_missing
    ds.configure_missing(model_takes_present=False)
    assert np.allclose(ds.tabular[gone, 1].numpy(), raw.mean(), atol=1e-4)
    assert np.allclose(ds.tabular[~gone, 1].numpy(), raw.dropna().to_numpy(), atol=1e-4)
    batch = next(iter(ds.batches(len(ds))))
    assert torch.equal(batch.tabular, ds.tabular) and batch.tabular_missing[gone, 1].all()
    ds.configure_missing(model_takes_present=True)
    assert np.all(ds.tabular[gone, 1].numpy() == 0.0)
    assert torch.equal(next(iter(ds.batches(len(ds)))).tabular, ds.tabular)
