"""The manifest: one CSV or Parquet row per study, read as text where text is meant.

Ids, patients, category levels, split values and paths are read as written (``007`` stays
``007``); a blank cell or a pandas NA marker means missing in both formats; a file that is not
UTF-8, is separated by another character or repeats a column name is refused with one line.
The dataset (``data.py``) turns the rows into tensors.
"""

from __future__ import annotations

import codecs
import csv
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmaudit.engine.config import DataConfig, cell_text
from mmaudit.engine.errors import DataError

_SAVE_UTF8 = "save it as UTF-8; in Excel: Save As, CSV UTF-8"

# pandas' default missing-value markers: a CSV cell holding one of these is read as missing, so a
# Parquet string cell holding one is too (the same manifest means the same in both formats)
NA_MARKERS = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN"}
    | {"<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)

SEPARATORS = (",", ";", "\t", "|")


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def read_manifest(
    path: Path, text_columns: Iterable[str] = (), separator: str = ","
) -> pd.DataFrame:
    """Read a CSV or Parquet manifest; DataError naming the file otherwise.

    ``text_columns`` (ids, patients, category levels, split and file-path columns) are read
    as the text in the file, never as numbers: id ``000123`` stays ``'000123'`` and patients
    ``007``, ``7`` and ``00007`` stay three patients. A Parquet number column among them
    becomes text without ``.0`` (``123``). A missing cell is NaN / None in every column: a
    blank cell or a pandas missing-value marker (``NA``, ``nan``, ...) in either format.

    Refused, because pandas would read them silently wrong: a header that names a column
    twice (pandas renames the second ``col.1``), and a CSV that reads as one column whose
    header holds another separator (``data.separator`` does not match the file).
    """
    if not path.is_file():
        raise DataError(f"manifest not found: {path}", hint="check data.manifest in the config")
    text = list(dict.fromkeys(text_columns))
    df = _read_parquet(path, text) if _is_parquet(path) else _read_csv(path, text, separator)
    if len(df) == 0:
        raise DataError(f"{path}: the manifest has no rows")
    return df


def _read_csv(path: Path, text: list[str], separator: str) -> pd.DataFrame:
    header = _csv_header(path, separator)
    _refuse_repeated_columns(path, header)
    guess = separator_guess(path, separator)
    try:
        df = pd.read_csv(
            path,
            sep=separator,
            dtype={c: str for c in text if c in header},
            keep_default_na=True,
            na_values=[""],
            low_memory=False,
        )
    except pd.errors.ParserError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{path}: cannot read manifest with separator {separator!r}: {first}",
            hint=guess or "check the quoting of that line",
        ) from exc
    except UnicodeDecodeError as exc:
        raise _not_utf8(path) or DataError(f"{path}: cannot read manifest: {exc}") from exc
    except Exception as exc:  # pandas raises many types for unreadable files
        raise DataError(f"{path}: cannot read manifest: {exc}") from exc
    if len(df.columns) == 1 and guess:
        raise DataError(
            f"{path}: the header reads as one column {str(df.columns[0])[:60]!r} with"
            f" separator {separator!r}",
            hint=guess,
        )
    return df


def _not_utf8(path: Path) -> DataError | None:
    """DataError naming the line and byte of the first byte that is not UTF-8 (pandas' own
    message gives an offset into a read buffer, not into the file); None if it decodes."""
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return DataError(f"{path}: the manifest is UTF-16 text, not UTF-8", hint=_SAVE_UTF8)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at byte offset"
            f" {exc.start}; Latin-1 or Windows-1252?)",
            hint=_SAVE_UTF8,
        )
    return None


def _csv_header(path: Path, separator: str) -> list[str]:
    """The column names of a CSV's first line as written (before pandas renames repeats)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return next(csv.reader(f, delimiter=separator), [])
    except (UnicodeDecodeError, csv.Error):
        return []  # pandas reads it next and says what is wrong


def separator_guess(path: Path, separator: str) -> str | None:
    """``this looks like ';'-separated: set data.separator: ';'`` when the CSV's first line
    holds another common separator more often than ``separator``; None otherwise (or for
    Parquet)."""
    if _is_parquet(path):
        return None
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            line = f.readline()
    except OSError:
        return None
    counts = {s: line.count(s) for s in SEPARATORS if s != separator}
    best = max(counts, key=lambda s: counts[s])
    if counts[best] <= line.count(separator):
        return None
    return f"this looks like {best!r}-separated: set data.separator: {best!r}"


def _refuse_repeated_columns(path: Path, names: list[str]) -> None:
    """DataError when a (non-blank) column name appears twice: which one is meant is unknown."""
    seen: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if not str(name).strip():
            continue
        if name in seen:
            raise DataError(
                f"{path}: column '{name}' appears twice in the header (columns {seen[name]}"
                f" and {position})",
                hint="rename or drop one of them",
            )
        seen[name] = position


def _read_parquet(path: Path, text: list[str]) -> pd.DataFrame:
    try:
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        _refuse_repeated_columns(path, names)
        df = pd.read_parquet(path)
        wanted = [c for c in text if c in names]
        table = pq.read_table(path, columns=wanted) if wanted else None
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises many types for unreadable files
        raise DataError(f"{path}: cannot read manifest: {exc}") from exc
    for c in wanted:
        cells = table.column(c).to_pylist()  # type: ignore[union-attr]
        df[c] = pd.Series([_parquet_text(v) for v in cells], index=df.index, dtype=object)
    return df


def _parquet_text(value: Any) -> str | None:
    """A Parquet cell as the text a CSV would hold: None when missing, ints without ``.0``."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return None if value.strip() in NA_MARKERS else value
    return cell_text(value)


def is_missing(value: Any) -> bool:
    """An empty cell: None, NaN, pd.NA (nullable Parquet columns) or only whitespace."""
    missing = pd.isna(value)
    if isinstance(missing, bool | np.bool_) and missing:
        return True
    return str(value).strip() == ""


def numbers(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A column's cells as float64 (NaN where missing or not a number) and a mask of the cells
    that hold something other than a number.

    Missing, in CSV and Parquet alike: a blank or whitespace-only cell, null, or a missing-value
    marker (``NA``, ``nan``, ...; see ``NA_MARKERS``). Number text counts as its number, so
    ``'inf'`` and ``'1e400'`` come back as inf: finiteness is the caller's check.
    """
    if pd.api.types.is_numeric_dtype(col.dtype):
        values = col.to_numpy(dtype=float, na_value=np.nan, copy=True)
        return values, np.zeros(len(col), dtype=bool)
    cells = col.tolist()
    blank = np.array(
        [is_missing(v) or (isinstance(v, str) and v.strip() in NA_MARKERS) for v in cells],
        dtype=bool,
    )
    kept = pd.Series([None if b else v for v, b in zip(cells, blank, strict=True)], dtype=object)
    values = pd.to_numeric(kept, errors="coerce").to_numpy(dtype=float, na_value=np.nan, copy=True)
    return values, np.isnan(values) & ~blank


def shown_cell(cell: Any) -> str:
    """A numeric cell as a message shows it: floats as Python writes them (``1e+39``)."""
    return repr(float(cell)) if isinstance(cell, float | np.floating) else str(cell)


def number_hint(cell: Any) -> str:
    """What to do about a cell that is not a number (a decimal comma is the usual cause)."""
    if isinstance(cell, str) and "," in cell:
        return "write numbers with a decimal point: 1.5, not 1,5"
    return "write a number, or leave the cell blank when the value is missing"


def cell_texts(col: pd.Series) -> pd.Series:
    """A column as text (object dtype), blank cells as None.

    ``astype(str)`` is not enough: pandas 3 keeps NaN there, and an integer column with
    one blank cell is read as float, so ``1`` would become ``'1.0'`` (see ``cell_text``).
    """
    return pd.Series(
        [None if is_missing(v) else cell_text(v) for v in col.tolist()],
        index=col.index,
        dtype=object,
    )


def text_columns(cfg: DataConfig) -> list[str]:
    """The columns read as the text in the file: names and codes (ids, patients, category
    levels, split values, class names, file paths), where ``007`` and ``7`` differ."""
    cols = [cfg.id]
    if cfg.patient:
        cols.append(cfg.patient)
    if cfg.target.kind == "multiclass" or cfg.target.positive is not None:
        cols += cfg.target.all_columns
    if cfg.image is not None:
        cols += [cfg.image.column] + ([cfg.image.roi_mask] if cfg.image.roi_mask else [])
    cols += [a.column or n for n, a in cfg.attributes.items() if a.kind == "categorical"]
    if cfg.split is not None:
        cols.append(cfg.split.column)
    return cols


def in_split(col: pd.Series, values: list[str]) -> np.ndarray:
    """Rows whose cell is one of ``values`` as text; a cell ``1.0`` also counts as ``1``,
    because pandas writes an integer column with a blank cell that way (fold ``07`` stays
    apart from fold ``7``)."""
    wanted = set(values)
    return np.array(
        [
            t is not None and (t in wanted or t.removesuffix(".0") in wanted)
            for t in cell_texts(col)
        ],
        dtype=bool,
    )
