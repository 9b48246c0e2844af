"""Tests for the synthetic sample generator: the planted truth must be what README says.

Small ``n`` keeps the module fast; the generator assigns labels by exact counts per
(split, site) cell, so prevalence checks are tight even at ``n = 200``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmaudit.sample.generate import (
    IMAGE_SIZE,
    LAB_COLUMNS,
    MANIFEST_COLUMNS,
    StudySpec,
    generate_sample,
    marker_box,
    prevalence_for_rho,
    render_study,
    train_tokenizer,
)

N = 200
SEED = 3


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("sample")
    return out, generate_sample(out, n=N, seed=SEED)


def _read(root: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(root / rel))


def test_deterministic_for_a_seed(sample: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, df = sample
    again = generate_sample(tmp_path / "again", n=N, seed=SEED)
    pd.testing.assert_frame_equal(df, again)
    # every file, byte for byte: manifest.csv, ground_truth.csv, every image and mask
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file()
    )
    assert {"manifest.csv", "ground_truth.csv"} <= {str(f) for f in files}
    for rel in files:
        assert (root / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    other = generate_sample(tmp_path / "other", n=N, seed=SEED + 1)
    assert not other["label"].equals(df["label"])


def test_columns_and_dtypes(sample: tuple[Path, pd.DataFrame]) -> None:
    root, df = sample
    assert list(df.columns) == list(MANIFEST_COLUMNS)
    assert len(df) == N and df["id"].is_unique
    assert df["id"].str.fullmatch(r"s\d{4}").all()
    assert set(df["label"]) == {0, 1} and df["label"].dtype.kind == "i"
    assert set(df["balanced_train"]) <= {0, 1} and df["balanced_train"].dtype.kind == "i"
    assert set(df["site"]) == {"A", "B"}
    assert set(df["sex"]) == {"F", "M"}
    assert set(df["split"]) == {"train", "test"}
    assert df["age"].between(20, 90).all() and df["age"].dtype.kind == "f"
    for col in LAB_COLUMNS:
        assert df[col].dtype.kind == "f"
    assert (df["spo2"].dropna() <= 100).all()
    for rel in df.image_path[:5]:
        img = Image.open(root / rel)
        assert img.mode == "L" and img.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert set(np.unique(_read(root, df.mask_path[0]))) == {0, 255}
    # the written manifest reads back as the returned frame (empty cells -> NaN)
    back = pd.read_csv(root / "manifest.csv", na_values=[""], keep_default_na=True)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)


def test_marker_exactly_on_site_b_and_outside_lungs(sample: tuple[Path, pd.DataFrame]) -> None:
    root, df = sample
    r0, r1, c0, c1 = marker_box("top-left", 6)
    for row in df.itertuples():
        img = _read(root, row.image_path)
        mask = _read(root, row.mask_path)
        assert not mask[r0:r1, c0:c1].any()
        has_marker = img[r0:r1, c0:c1].mean() > 220
        assert has_marker == (row.site == "B"), row.id


def test_opacity_inside_lung_mask(sample: tuple[Path, pd.DataFrame]) -> None:
    root, df = sample
    truth = pd.read_csv(root / "ground_truth.csv").set_index("id")
    pos = df[df.label == 1]
    assert truth.loc[df.id[df.label == 0], "lesion_row"].isna().all()
    for row in pos.itertuples():
        mask = _read(root, row.mask_path) > 0
        t = truth.loc[row.id]
        assert mask[int(round(t.lesion_row)), int(round(t.lesion_col))], row.id
    # render the same study with and without disease: the difference lives in the lungs
    for i in np.flatnonzero(df.label.to_numpy() == 1)[:15]:
        spec = StudySpec(seed=SEED, index=int(i), sex=str(df.sex[i]), label=1, marker=False)
        sick = render_study(spec)
        healthy = render_study(
            StudySpec(seed=SEED, index=int(i), sex=spec.sex, label=0, marker=False)
        )
        assert np.array_equal(sick.mask, healthy.mask)
        lung = sick.mask > 0
        assert sick.lesion[lung].sum() >= 0.97 * sick.lesion.sum()
        diff = sick.image.astype(int) - healthy.image.astype(int)
        assert diff[~lung].sum() <= 0.03 * diff[lung].sum()
        assert diff.max() >= 10  # visible, not trivial


def test_prevalence_per_site_and_split(sample: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    _, df = sample
    prev = df.groupby(["split", "site"])["label"].mean()
    for split in ("train", "test"):
        assert prev[(split, "A")] == pytest.approx(0.2, abs=0.04)
        assert prev[(split, "B")] == pytest.approx(0.8, abs=0.04)
    custom = generate_sample(
        tmp_path / "c", n=120, seed=1, prevalence=(0.4, 0.6), test_prevalence=(0.6, 0.4)
    )
    prev = custom.groupby(["split", "site"])["label"].mean()
    assert prev[("train", "A")] == pytest.approx(0.4, abs=0.05)
    assert prev[("test", "A")] == pytest.approx(0.6, abs=0.06)
    assert prevalence_for_rho(0.6) == pytest.approx((0.2, 0.8))


def test_split_by_patient(sample: tuple[Path, pd.DataFrame]) -> None:
    _, df = sample
    splits_per_patient = df.groupby("patient_id")["split"].nunique()
    assert (splits_per_patient == 1).all()
    per_patient = df.groupby("patient_id").agg(
        n=("id", "size"), sex=("sex", "nunique"), age=("age", "nunique"), site=("site", "nunique")
    )
    assert (per_patient[["sex", "age", "site"]] == 1).all().all()
    assert set(per_patient["n"]) == {1, 2}
    assert (per_patient["n"] == 2).mean() == pytest.approx(0.15, abs=0.03)
    assert (df.split == "train").mean() == pytest.approx(0.7, abs=0.05)


def test_balanced_train_has_equal_prevalence(sample: tuple[Path, pd.DataFrame]) -> None:
    _, df = sample
    bal = df[df.balanced_train == 1]
    assert (bal.split == "train").all()
    prev = bal.groupby("site")["label"].mean()
    assert prev["A"] == pytest.approx(prev["B"], abs=0.03)
    assert prev["A"] == pytest.approx(0.5, abs=0.03)
    assert len(bal) >= 0.3 * (df.split == "train").sum()


def test_missingness_rates(sample: tuple[Path, pd.DataFrame]) -> None:
    _, df = sample
    assert df["report"].isna().mean() == pytest.approx(0.10, abs=0.06)
    for col in LAB_COLUMNS:
        assert df[col].isna().mean() == pytest.approx(0.10, abs=0.06), col
    for col in ("id", "patient_id", "site", "sex", "age", "label", "image_path", "mask_path"):
        assert df[col].notna().all(), col


def test_variants_site_token_and_marker_position(tmp_path: Path) -> None:
    df = generate_sample(
        tmp_path / "v", n=40, seed=2, site_token_in_report=True, marker_pos="bottom-right"
    )
    reports = df.dropna(subset=["report"])
    assert reports[reports.site == "B"]["report"].str.contains("Riverside").all()
    assert not reports[reports.site == "A"]["report"].str.contains("Riverside").any()
    r0, r1, c0, c1 = marker_box("bottom-right", 6)
    for row in df.itertuples():
        img = _read(tmp_path / "v", row.image_path)
        assert (img[r0:r1, c0:c1].mean() > 220) == (row.site == "B")


def test_tokenizer_loads_from_folder(sample: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    from transformers import AutoTokenizer, BertTokenizerFast

    _, df = sample
    folder = train_tokenizer(df["report"].dropna().tolist(), tmp_path / "tok", vocab_size=500)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        assert (folder / name).is_file()
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id] == [0, 1, 2, 3]
    assert tok.mask_token_id == 4
    ids = tok("Opacity", add_special_tokens=False)["input_ids"]
    assert ids and tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids) == ["opacity"]
    enc = tok("Lungs are clear.")["input_ids"]
    assert enc[0] == tok.cls_token_id and enc[-1] == tok.sep_token_id
    assert tok.unk_token_id not in enc
    fast = BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    assert fast("focal consolidation")["input_ids"] == tok("focal consolidation")["input_ids"]


def test_tokenizer_is_byte_deterministic(sample: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    """Two trainings on the same reports write identical files (the WordPiece trainer did not)."""
    _, df = sample
    texts = df["report"].dropna().tolist()
    a = train_tokenizer(texts, tmp_path / "a")
    b = train_tokenizer(list(reversed(texts)), tmp_path / "b")  # order of the texts is irrelevant
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    vocab = (a / "vocab.txt").read_text().splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # not a constant: other reports give another vocabulary
    c = train_tokenizer(texts[: len(texts) // 4], tmp_path / "c")
    assert (c / "vocab.txt").read_bytes() != (a / "vocab.txt").read_bytes()
