"""What a report folder saved per sample (predictions, embeddings, per-check tables, the
id -> patient map), read for pairing and representation comparison.
"""

from __future__ import annotations

import itertools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmaudit.engine.errors import ReportError
from mmaudit.report.document import Report


@dataclass
class Samples:
    """What one report folder saved per sample (each part None / empty when absent)."""

    folder: Path
    report: Report
    predictions: Any = None  # DataFrame: id, [patient], target*, logit.k, prob.k
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)  # id -> patient
    _tables: dict[str, Any] = field(default_factory=dict)
    # report-relative paths of per-sample files the report names but the folder lacks (only
    # in a report from before digests: load_report refuses a sealed one missing a file)
    missing: list[str] = field(default_factory=list)

    def table(self, check: str) -> Any:
        """The check's ``samples/<check>.parquet`` as a DataFrame with an ``id`` column; None
        when the check saved none, or the file is gone (trimmed artifact; listed in
        ``missing``)."""
        if check not in self._tables:
            rel = (
                self.report.checks[check].tables.get("per_sample")
                if check in self.report.checks
                else None
            )
            if rel and not (self.folder / rel).is_file():
                self.missing.append(rel)
                rel = None
            frame = _read_parquet(self.folder / rel) if rel else None
            if frame is not None and "id" in frame:
                frame["id"] = frame["id"].astype(str)
            self._tables[check] = frame if frame is not None and "id" in frame else None
        return self._tables[check]


def _read_parquet(path: Path) -> Any:
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for truncated / foreign files
        raise ReportError(
            f"{path}: unreadable parquet (truncated or edited?): {type(exc).__name__}"
        ) from exc


def read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ReportError(
            f"{path}: unreadable npz (truncated or edited?): {type(exc).__name__}"
        ) from exc


def load_samples(folder: Path, report: Report) -> Samples:
    """Predictions, embeddings and the id -> patient map a report saved (ReportError on a
    corrupt file). The patient map comes from predictions.parquet, or else from any
    check's per-sample table that carries one."""
    s = Samples(folder=folder, report=report)
    path = folder / "samples" / "predictions.parquet"
    if path.is_file():
        s.predictions = _read_parquet(path)
        if "id" not in s.predictions:
            raise ReportError(f"{path}: no id column (edited?)")
        s.predictions["id"] = s.predictions["id"].astype(str)
    npz = folder / "samples" / "embeddings.npz"
    if npz.is_file():
        s.embeddings = read_npz(npz)
    # lazily: the first table with a patient column ends the search
    sources = itertools.chain([s.predictions], (s.table(name) for name in report.checks))
    for frame in sources:
        if frame is not None and "patient" in frame and "id" in frame:
            s.patients = dict(
                zip(frame["id"].astype(str), frame["patient"].astype(str), strict=True)
            )
            break
    return s
