"""Edits of the tiny test manifest (conftest's ``tiny_manifest``) that make bad data: a
missing or undecodable image, a NaN or single-class target, no rows, a missing ROI mask.
Shared by the CLI tests and the bad-input table; each takes the manifest frame and its
folder (a copy) and returns the frame to write."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd

ManifestEdit = Callable[[pd.DataFrame, Path], pd.DataFrame]


def manifest_variant(tiny_manifest: Path, tmp_path: Path, edit: ManifestEdit) -> Path:
    """A copy of the tiny data set under ``tmp_path/data`` with ``edit`` applied."""
    folder = tmp_path / "data"
    shutil.copytree(tiny_manifest.parent, folder)
    df = pd.read_csv(folder / "manifest.csv")
    df = edit(df, folder)
    df.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def drop_image(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    (folder / "images" / "s3.png").unlink()
    return df


def corrupt_image(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    (folder / "images" / "s5.png").write_bytes(b"not a png")
    return df


def drop_mask(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    (folder / "masks" / "s7.png").unlink()
    return df


def nan_target(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    df["label"] = df["label"].astype(float)
    df.loc[4, "label"] = float("nan")
    return df


def one_class(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    df["label"] = 1
    return df


def no_rows(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    return df.iloc[:0]
