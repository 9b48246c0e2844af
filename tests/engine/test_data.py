"""Manifest -> dataset -> batches: modalities, missingness, targets, file formats."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import byo_model_config, tiny_config

from mmaudit.engine.config import DataConfig, RuntimeConfig
from mmaudit.engine.data import AuditDataset
from mmaudit.engine.errors import DataError
from mmaudit.engine.images import load_image_file


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in-process: exit code, stdout, stderr."""
    from mmaudit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.out, captured.err


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

    from mmaudit.engine.images import image_to_tensor

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
    """pydicom-data's RG1_UNCR: 15-bit MONOCHROME1 CR with window 15000 / 30000. The input is
    the windowed, inverted image, the same as pydicom's own display pipeline gives."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_windowing

    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("RG1_UNCR.dcm not installed (pip install pydicom-data)")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 15
    expected = 1.0 - apply_windowing(ds.pixel_array, ds) / (2**15 - 1)
    arr = load_image_file(Path(path))
    assert arr.shape == (*ds.pixel_array.shape, 1)
    assert np.allclose(arr[..., 0], expected, atol=1e-6)
    shutil.copy(path, tmp_path / "IM0001")  # a PACS export: no suffix
    pd.DataFrame({"id": ["a", "b"], "image_path": ["IM0001", "IM0001"], "label": [0, 1]}).to_csv(
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


def _write_dicom(path: Path, pixels: np.ndarray, bits_stored: int, **attrs: object) -> Path:
    """An uncompressed single-frame greyscale DICOM file (with preamble) holding ``pixels``."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    return path


def test_dicom_scaling_follows_the_display_pipeline(tmp_path: Path) -> None:
    """Known stored values -> known inputs: BitsStored range, rescale, window, MONOCHROME1;
    never per-image min-max (the old rule turned 1000 / 2000 into 0 / 1)."""
    raw = np.array([[1000, 2000], [0, 4095]], np.uint16)
    plain = load_image_file(_write_dicom(tmp_path / "a.dcm", raw, 12))[..., 0]
    assert np.allclose(plain, raw / 4095.0)
    # modality LUT: stored 0..4095 -> -1024..7166, mapped to [0, 1] over that range
    rescaled = load_image_file(
        _write_dicom(tmp_path / "b.dcm", raw, 12, RescaleSlope=2, RescaleIntercept=-1024)
    )[..., 0]
    assert np.allclose(rescaled, (raw * 2.0) / 8190.0)
    # window 1000 / 1000 on the rescaled values 976, 2976, -1024, 7166 (DICOM LINEAR)
    windowed = load_image_file(
        _write_dicom(
            tmp_path / "c.dcm",
            np.array([[1012, 1262], [0, 4095]], np.uint16),
            12,
            RescaleSlope=2,
            RescaleIntercept=-1024,
            WindowCenter=1000,
            WindowWidth=1000,
        )
    )[..., 0]
    # 1012 -> 1000 HU (the centre: 0.5), 1262 -> 1500 (top of the window: 1)
    assert np.allclose(windowed, [[(1000 - 999.5) / 999 + 0.5, 1.0], [0.0, 1.0]], atol=1e-6)
    inverted = load_image_file(
        _write_dicom(tmp_path / "d.dcm", raw, 12, PhotometricInterpretation="MONOCHROME1")
    )[..., 0]
    assert np.allclose(inverted, 1.0 - raw / 4095.0)
    # a negative slope maps the stored range onto [-4095, 0]: still over [0, 1], reversed
    negative = load_image_file(
        _write_dicom(tmp_path / "e.dcm", raw, 12, RescaleSlope=-1, RescaleIntercept=0)
    )[..., 0]
    assert np.allclose(negative, 1.0 - raw / 4095.0)


def test_dicom_and_png_of_the_same_pixels_agree_and_dicom_is_found_by_content(
    tmp_path: Path,
) -> None:
    from PIL import Image

    pixels = np.arange(0, 256, 4, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    _write_dicom(tmp_path / "IM0001", pixels, 8)  # no suffix: found by the DICM marker
    assert np.array_equal(load_image_file(tmp_path / "IM0001"), load_image_file(tmp_path / "a.png"))
    shutil.copy(tmp_path / "a.png", tmp_path / "noext")  # a PNG without a suffix still works
    assert np.array_equal(load_image_file(tmp_path / "noext"), load_image_file(tmp_path / "a.png"))


def test_dicom_without_pydicom_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM")
    monkeypatch.setitem(__import__("sys").modules, "pydicom", None)
    with pytest.raises(DataError, match="DICOM needs the 'dicom' extra"):
        load_image_file(path)


def _png16(path: Path, value: int, sbit: int | None = None) -> Path:
    """A flat 4x4 16-bit greyscale PNG of ``value``, with an sBIT chunk when ``sbit`` is given."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if sbit is not None:
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(np.full((4, 4), value, np.uint16)).save(path, pnginfo=info)
    return path


def test_16bit_png_scale_is_the_bit_depth_not_the_content(tmp_path: Path) -> None:
    from PIL import Image

    from mmaudit.engine.images import png_significant_bits

    # the old rule read 255 as 1.0 (max <= 255: / 255) but 256 as 0.0039
    assert np.allclose(load_image_file(_png16(tmp_path / "a.png", 255)), 255 / 65535)
    assert np.allclose(load_image_file(_png16(tmp_path / "b.png", 256)), 256 / 65535)
    # a 12-bit X-ray: the sBIT chunk says so, or data.image.max_value does
    assert png_significant_bits(_png16(tmp_path / "c.png", 4095, sbit=12)) == 12
    assert png_significant_bits(tmp_path / "a.png") is None
    assert np.allclose(load_image_file(tmp_path / "c.png"), 1.0)
    assert np.allclose(load_image_file(tmp_path / "b.png", max_value=4095), 256 / 4095)
    assert np.allclose(load_image_file(tmp_path / "b.png", max_value=255), 1.0)  # clipped
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(tmp_path / "e.png")
    assert np.allclose(load_image_file(tmp_path / "e.png", max_value=4095), 1.0)  # 8-bit: / 255
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match="32-bit integer image") as err:
        load_image_file(tmp_path / "f.tif")
    assert "set data.image.max_value" in err.value.one_line()
    assert np.allclose(load_image_file(tmp_path / "f.tif", max_value=140000), 0.5)


def test_image_max_value_reaches_the_model_input(tmp_path: Path) -> None:
    _png16(tmp_path / "a.png", 2048)
    pd.DataFrame({"id": ["a", "b"], "image_path": ["a.png", "a.png"], "label": [0, 1]}).to_csv(
        tmp_path / "m.csv", index=False
    )

    def first_pixel(**image: object) -> float:
        cfg = {"column": "image_path", "size": 8, "mean": [0.0], "std": [1.0], **image}
        raw = {"manifest": tmp_path / "m.csv", "target": {"column": "label"}, "image": cfg}
        return float(AuditDataset(DataConfig.model_validate(raw)).load_image(0)[0, 0, 0])

    assert first_pixel() == pytest.approx(2048 / 65535, abs=1e-6)
    assert first_pixel(max_value=4095) == pytest.approx(2048 / 4095, abs=1e-6)
    with pytest.raises(ValueError, match="max_value must be auto or a positive number"):
        first_pixel(max_value=0)


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


def _edited(tiny_manifest: Path, tmp_path: Path, edit: object) -> Path:
    """A copy of the tiny manifest changed by ``edit(df)``, images still found."""
    df = pd.read_csv(tiny_manifest)
    edit(df)  # type: ignore[operator]
    path = tmp_path / "m.csv"
    df.to_csv(path, index=False)
    return path


def _image_at(tiny_manifest: Path) -> dict[str, object]:
    return {"column": "image_path", "root": str(tiny_manifest.parent), "size": 16}


def test_empty_id_is_bad_input_naming_row_and_column(tiny_manifest: Path, tmp_path: Path) -> None:
    def blank(df: pd.DataFrame) -> None:
        df.loc[[3, 8], "id"] = np.nan

    cfg = _cfg(_edited(tiny_manifest, tmp_path, blank), image=_image_at(tiny_manifest))
    with pytest.raises(DataError, match=r"m.csv row 5: empty id in column 'id' \(and 1 more"):
        AuditDataset(cfg)
    problems: list[str] = []
    ds = AuditDataset(cfg, problems=problems)  # validate lists it and reads on
    assert len(problems) == 1 and "row 5: empty id in column 'id'" in problems[0]
    assert len(set(ds.ids)) == 48 and "nan" not in set(ds.ids)


def test_empty_patient_is_its_own_patient_with_a_note(tiny_manifest: Path, tmp_path: Path) -> None:
    """Blank patient cells (30 % here) made an array of str and float that crashed subgroups
    and probing; now each such row is its own patient, named by its id, and a note says so."""

    def blank(df: pd.DataFrame) -> None:
        # integer patients with blanks, written 0, 1, 2 (inferred, they would read as 1.0)
        df["patient"] = pd.array(np.arange(len(df)) // 2, dtype="Int64")
        df.loc[df.index % 3 == 0, "patient"] = pd.NA

    image = _image_at(tiny_manifest)
    ds = AuditDataset(_cfg(_edited(tiny_manifest, tmp_path, blank), image=image))
    patients = ds.patients
    assert patients is not None and all(isinstance(p, str) for p in patients)
    assert list(patients[:5]) == ["s0", "0", "1", "s3", "2"]  # 1.0 -> '1', not '1.0'
    assert np.unique(patients).size == 24 + 16  # sorts (the crash); each blank row its own
    assert len(ds.notes) == 1 and "'patient' is empty in 16 row(s) (first: row 2)" in ds.notes[0]

    def clash(df: pd.DataFrame) -> None:
        df.loc[3, "patient"] = np.nan
        df.loc[1, "patient"] = "s3"  # a real patient named like row 3's id

    ds = AuditDataset(_cfg(_edited(tiny_manifest, tmp_path, clash), image=image))
    assert ds.patients[1] == "s3" and ds.patients[3] == "id:s3"
    clean = AuditDataset(_cfg(tiny_manifest, image=image))
    assert clean.notes == [] and clean.patients[:3].tolist() == ["p0", "p0", "p1"]


def test_continuous_attribute_must_hold_numbers(tiny_manifest: Path, tmp_path: Path) -> None:
    def blank_age(df: pd.DataFrame) -> None:
        df.loc[4, "age"] = np.nan

    image = _image_at(tiny_manifest)
    attributes = {"sex": {"kind": "continuous"}, "age": {"kind": "continuous"}}
    cfg = _cfg(tiny_manifest, image=image, attributes=attributes)
    with pytest.raises(DataError) as err:
        AuditDataset(cfg)
    assert "row 2 (id 's0'): attribute 'sex' (column 'sex') is continuous but holds 'M'" in str(
        err.value
    ) and "(and 47 more non-numeric rows)" in str(err.value)
    assert "kind: categorical" in err.value.one_line()
    problems: list[str] = []
    AuditDataset(cfg, problems=problems)
    assert len(problems) == 1 and "attribute 'sex'" in problems[0]
    # a blank cell in a numeric column is a missing value, not a problem
    path = _edited(tiny_manifest, tmp_path, blank_age)
    ds = AuditDataset(_cfg(path, image=image, attributes={"age": {"kind": "continuous"}}))
    assert np.isnan(ds.attributes["age"].iloc[4]) and ds.attributes["age"].notna().sum() == 47


def test_split_on_a_float_read_fold_column(tiny_manifest: Path, tmp_path: Path) -> None:
    """Folds 0-2 with one blank cell: pandas reads 1.0, 2.0 ... and [1] / ['1'] still select."""

    def folds(df: pd.DataFrame) -> None:
        df["fold"] = np.arange(len(df)) % 3
        df.loc[0, "fold"] = np.nan

    path = _edited(tiny_manifest, tmp_path, folds)
    assert pd.read_csv(path)["fold"].dtype == float
    for values in ([1], ["1"], [1.0]):
        split = {"column": "fold", "values": values}
        ds = AuditDataset(_cfg(path, image=_image_at(tiny_manifest), split=split))
        assert list(ds.ids) == [f"s{i}" for i in range(1, 48, 3)], values
    split = {"column": "fold", "values": [0, 2]}
    assert len(AuditDataset(_cfg(path, image=_image_at(tiny_manifest), split=split))) == 31


def _problems(cfg: DataConfig) -> list[str]:
    problems: list[str] = []
    AuditDataset(cfg, problems=problems)
    return problems


def test_ids_patients_and_levels_are_read_as_written(tiny_manifest: Path, tmp_path: Path) -> None:
    """Type inference made id 000123 '123' and merged patients 007, 7 and 00007 into one (so
    every patient-grouped CI changed); CSV and Parquet now both give the text in the file."""

    def as_written(df: pd.DataFrame) -> None:
        df["id"] = df["id"].astype(object)
        df.loc[0, "id"] = "000123"
        df.loc[[0, 1, 2], "patient"] = ["007", "7", "00007"]
        df["sex"] = np.where(df.index % 2, "01", "1")  # codes, not numbers
        df["fold"] = np.where(df.index < 4, "07", "7")

    image = _image_at(tiny_manifest)
    path = _edited(tiny_manifest, tmp_path, as_written)
    frame = pd.read_csv(path, dtype=str)
    frame.to_parquet(tmp_path / "m.parquet")
    for manifest in (path, tmp_path / "m.parquet"):
        split = {"column": "fold", "values": ["07"]}
        ds = AuditDataset(_cfg(manifest, image=image))
        assert ds.ids[0] == "000123" and list(ds.patients[:3]) == ["007", "7", "00007"]
        assert set(ds.attributes["sex"]) == {"01", "1"}
        assert list(AuditDataset(_cfg(manifest, image=image, split=split)).ids[1:]) == [
            "s1",
            "s2",
            "s3",
        ]


def test_parquet_number_ids_are_text_without_a_trailing_zero(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    df = pd.read_csv(tiny_manifest)
    df["id"] = np.arange(len(df)) + 1000
    df["patient"] = (np.arange(len(df)) // 2).astype(float)  # float, as after a blank cell
    df.loc[3, "patient"] = np.nan
    df.to_parquet(tmp_path / "m.parquet")
    ds = AuditDataset(_cfg(tmp_path / "m.parquet", image=_image_at(tiny_manifest)))
    assert list(ds.ids[:2]) == ["1000", "1001"]
    assert list(ds.patients[:5]) == ["0", "0", "1", "1003", "2"]


def test_blank_lab_text_in_parquet_is_missing_like_a_blank_csv_cell(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    """A Parquet string lab column holding '' was an error while a blank CSV cell is missing."""
    df = pd.read_csv(tiny_manifest)
    df["lab_a"] = df["lab_a"].map(repr)
    df.loc[[4, 6, 8], "lab_a"] = ["", "  ", "NA"]
    df.to_parquet(tmp_path / "m.parquet")
    df.loc[[4, 6, 8], "lab_a"] = np.nan
    df.to_csv(tmp_path / "m.csv", index=False)
    image = _image_at(tiny_manifest)
    parquet = AuditDataset(_cfg(tmp_path / "m.parquet", image=image))
    csv_read = AuditDataset(_cfg(tmp_path / "m.csv", image=image))
    assert parquet.tabular_missing[:, 0].nonzero().flatten().tolist() == [4, 6, 8]
    assert torch.equal(parquet.tabular, csv_read.tabular)
    assert parquet.tabular_stats == csv_read.tabular_stats


def test_non_finite_lab_or_attribute_is_bad_input_naming_id_and_column(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    """One inf lab cell made the statistics inf and every check 'error'; now it is bad input,
    also in a row outside the split (every row feeds the lab statistics)."""

    def infinite(df: pd.DataFrame) -> None:
        df["lab_a"] = df["lab_a"].astype(object)
        df.loc[[3, 9], "lab_a"] = ["inf", "1e400"]
        df.loc[5, "lab_b"] = -np.inf
        df.loc[6, "lab_b"] = 1e39  # finite, but not as the model's float32 input
        df["age"] = df["age"].astype(object)
        df.loc[7, "age"] = "-Infinity"
        df["split"] = np.where(df.index == 5, "train", "test")

    path = _edited(tiny_manifest, tmp_path, infinite)
    image = _image_at(tiny_manifest)
    cfg = _cfg(path, image=image, split={"column": "split", "values": ["test"]})
    with pytest.raises(DataError) as err:
        AuditDataset(cfg)
    assert "m.csv row 5 (id 's3'): tabular column 'lab_a' holds 'inf', not a finite number" in (
        str(err.value)
    )
    assert "(and 1 more non-finite row)" in str(err.value) and err.value.hint
    problems = _problems(cfg)
    assert len(problems) == 3, problems
    assert "row 7 (id 's5'): tabular column 'lab_b' holds '-inf'" in problems[1]
    assert "not audited, but every row feeds the lab statistics" in problems[1]
    assert "row 9 (id 's7'): attribute 'age' (column 'age') holds '-inf'" in problems[2]

    def too_large(df: pd.DataFrame) -> None:
        df.loc[6, "lab_b"] = 1e39

    big = _cfg(_edited(tiny_manifest, tmp_path, too_large), image=image)
    with pytest.raises(
        DataError, match=r"row 8 \(id 's6'\): tabular column 'lab_b' holds '1e\+39'"
    ):
        AuditDataset(big)


def test_non_finite_lab_stops_run_and_is_listed_by_validate(
    tiny_manifest: Path,
    tiny_weights: Path,
    write_config: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def infinite(df: pd.DataFrame) -> None:
        df.loc[3, "lab_a"] = np.inf
        df.loc[4, "age"] = np.inf

    cfg = tiny_config(
        _edited(tiny_manifest, tmp_path, infinite), byo_model_config(tiny_weights / "tiny.pt")
    )
    cfg["data"]["image"]["root"] = str(tiny_manifest.parent)
    path = write_config(cfg)
    out = tmp_path / "report"
    rc, _, err = _cli(["run", str(path), "-o", str(out)], capsys)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "(id 's3'): tabular column 'lab_a' holds 'inf', not a finite number" in err
    assert not out.exists() and not list(tmp_path.glob(".report*"))
    rc, stdout, _ = _cli(["validate", str(path)], capsys)
    assert rc == 2 and "2 problem(s)" in stdout
    assert "(id 's4'): attribute 'age' (column 'age') holds 'inf'" in stdout


def test_report_keeps_ids_as_written(
    tiny_manifest: Path,
    tiny_weights: Path,
    write_config: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def zero_padded(df: pd.DataFrame) -> None:
        df["id"] = [f"{i:06d}" for i in range(len(df))]
        df["patient"] = [f"{i // 2:03d}" for i in range(len(df))]

    cfg = tiny_config(
        _edited(tiny_manifest, tmp_path, zero_padded), byo_model_config(tiny_weights / "tiny.pt")
    )
    cfg["data"]["image"]["root"] = str(tiny_manifest.parent)
    out = tmp_path / "report"
    args = ["run", str(write_config(cfg)), "-o", str(out), "--checks", "performance"]
    rc, _, err = _cli([*args, "--fail-on", "never"], capsys)
    assert rc == 0, err
    ids = pd.read_parquet(out / "samples" / "predictions.parquet")["id"].tolist()
    assert ids[:3] == ["000000", "000001", "000002"]
    tables = list((out / "tables" / "performance").glob("*.csv"))
    assert any("000001" in t.read_text() for t in tables), tables


def test_repeated_column_name_is_refused(tiny_manifest: Path, tmp_path: Path) -> None:
    """pandas renamed a second 'lab_a' to 'lab_a.1' and read on with the first one."""
    header, rest = tiny_manifest.read_text().split("\n", 1)
    assert header.split(",")[6] == "label"
    path = tmp_path / "m.csv"
    path.write_text(header.replace("label", "lab_a", 1) + "\n" + rest)
    with pytest.raises(DataError) as err:
        AuditDataset(_cfg(path, image=_image_at(tiny_manifest)))
    assert "column 'lab_a' appears twice in the header (columns 5 and 7)" in str(err.value)
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_arrays([pa.array(["a"]), pa.array([1]), pa.array([2])], ["id", "x", "x"])
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(DataError, match=r"column 'x' appears twice in the header \(columns 2 and"):
        AuditDataset(_cfg(tmp_path / "m.parquet", image=_image_at(tiny_manifest)))


@pytest.mark.parametrize(("sep", "shown"), [(";", "';'"), ("\t", "'\\t'"), ("|", "'|'")])
def test_other_separator_says_how_to_set_it_and_then_reads(
    tiny_manifest: Path, tmp_path: Path, sep: str, shown: str
) -> None:
    df = pd.read_csv(tiny_manifest)
    path = tmp_path / "m.csv"
    df.to_csv(path, sep=sep, index=False)
    image = _image_at(tiny_manifest)
    hint = f"this looks like {shown}-separated: set data.separator: {shown}"
    with pytest.raises(DataError) as err:
        AuditDataset(_cfg(path, image=image))
    assert "the header reads as one column" in str(err.value) and err.value.hint == hint
    given = "tab" if sep == "\t" else sep
    ds = AuditDataset(_cfg(path, image=image, separator=given))
    assert len(ds) == 48 and ds.ids[0] == "s0"
    assert torch.equal(ds.tabular, AuditDataset(_cfg(tiny_manifest, image=image)).tabular)


def test_semicolon_csv_with_decimal_commas_and_tokenizing_error(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    """European exports: ';' between fields, ',' in numbers, so pandas fails to tokenize."""
    df = pd.read_csv(tiny_manifest)
    path = tmp_path / "m.csv"
    df.to_csv(path, sep=";", decimal=",", index=False)
    image = _image_at(tiny_manifest)
    with pytest.raises(DataError) as err:
        AuditDataset(_cfg(path, image=image))
    assert "cannot read manifest with separator ','" in str(err.value)
    assert err.value.hint == "this looks like ';'-separated: set data.separator: ';'"
    with pytest.raises(DataError) as err:
        AuditDataset(_cfg(path, image=image, separator=";"))
    assert "tabular column 'lab_a' is not a number: '0,56" in str(err.value)
    assert "decimal point" in err.value.hint
    # a header split at the wrong character names no configured column: say why
    path.write_text("id;patient, first seen;label\ns0;p0;1\n")
    with pytest.raises(DataError) as err:
        AuditDataset(_cfg(path, image=image))
    assert "not found" in str(err.value) and "set data.separator: ';'" in err.value.hint


def test_separator_must_be_one_character(tiny_manifest: Path) -> None:
    assert _cfg(tiny_manifest, separator="\\t").separator == "\t"
    with pytest.raises(ValueError, match="data.separator must be one character"):
        _cfg(tiny_manifest, separator=";;")


def test_lab_column_blank_in_every_row_is_bad_input(tiny_manifest: Path, tmp_path: Path) -> None:
    """An all-blank lab used to get mean 0 / sd 1 and zeros for every row, then drop out of
    attribution unseen: it tells the audit nothing, so it is named with what to do."""

    def blank(df: pd.DataFrame) -> None:
        df["lab_b"] = np.nan

    cfg = _cfg(_edited(tiny_manifest, tmp_path, blank), image=_image_at(tiny_manifest))
    with pytest.raises(DataError) as err:
        AuditDataset(cfg)
    assert (
        str(err.value)
        == f"{tmp_path / 'm.csv'}: tabular column 'lab_b' is blank in every row (48 rows)"
    )
    assert err.value.hint.startswith("remove it from data.tabular.columns")
    assert len(_problems(cfg)) == 1  # validate lists it once and reads on


@pytest.mark.parametrize(
    ("labels", "hint"),
    [
        ([0, 1, 2], "these are 3 class codes: set data.target.kind: multiclass"),
        ([1, 2], "set data.target.positive: '2' to name the positive class, or"),
        (["no", "yes"], "set data.target.positive to the positive class name"),
    ],
)
def test_binary_target_that_is_not_0_1_gets_the_fitting_hint(
    tiny_manifest: Path, tmp_path: Path, labels: list[object], hint: str
) -> None:
    def relabel(df: pd.DataFrame) -> None:
        df["label"] = [labels[i % len(labels)] for i in range(len(df))]

    cfg = _cfg(_edited(tiny_manifest, tmp_path, relabel), image=_image_at(tiny_manifest))
    with pytest.raises(DataError, match="binary target 'label' must be 0/1") as err:
        AuditDataset(cfg)
    assert err.value.hint.startswith(hint), err.value.hint


def test_image_path_that_is_a_folder_says_so(tiny_manifest: Path, tmp_path: Path) -> None:
    def folder(df: pd.DataFrame) -> None:
        df.loc[2, "image_path"] = "images"
        df.loc[4, "mask_path"] = "masks/"

    cfg = _cfg(_edited(tiny_manifest, tmp_path, folder))
    cfg.image.root = tiny_manifest.parent  # type: ignore[union-attr]
    problems = _problems(cfg)
    assert len(problems) == 2, problems
    assert "row 4 (id 's2'): image path is a folder, not an image file:" in problems[0]
    assert "row 6 (id 's4'): ROI mask path is a folder, not a ROI mask file:" in problems[1]


def test_manifest_that_is_not_utf8_names_the_line(tiny_manifest: Path, tmp_path: Path) -> None:
    """pandas said "'utf-8' codec can't decode byte 0xe9 in position 50" (a buffer offset);
    the line in the file and how to fix it are what a user can act on."""
    text = tiny_manifest.read_text().splitlines()
    header = text[0].split(",")
    cells = text[3].split(",")
    cells[header.index("sex")] = "fémale"
    text[3] = ",".join(cells)
    path = tmp_path / "latin1.csv"
    path.write_bytes(("\n".join(text) + "\n").encode("latin-1"))
    cfg = _cfg(path, image=_image_at(tiny_manifest))
    with pytest.raises(DataError) as err:
        AuditDataset(cfg)
    assert str(err.value).startswith(f"{path}:4: not UTF-8 text (byte 0xe9 at byte offset")
    assert err.value.hint.startswith("save it as UTF-8")
    path.write_bytes(("\n".join(text) + "\n").encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16 text, not UTF-8"):
        AuditDataset(cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a CUDA device")
def test_batch_pins_every_tensor_for_non_blocking_copies(tiny_manifest: Path) -> None:
    """A DataLoader with pin_memory=True pins a Batch through its pin_memory(); without it the
    batch would stay pageable and ``to(cuda, non_blocking=True)`` would block."""
    ds = AuditDataset(_cfg(tiny_manifest))
    batch = next(iter(ds.batches(4)))
    pinned = batch.pin_memory()
    tensors = [v for v in vars(pinned).values() if isinstance(v, torch.Tensor)]
    assert len(tensors) >= 6 and all(t.is_pinned() for t in tensors)
    assert torch.equal(pinned.to("cuda").image.cpu(), batch.image)  # type: ignore[union-attr]
