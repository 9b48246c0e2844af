"""Manifest rows -> ``AuditDataset`` -> ``Batch``.

The dataset reads the manifest once, validates it row by row with messages that
name the file, the row and the column, and turns each modality into tensors the
model can take. An empty cell for a modality means the modality is missing for
that sample; ``Batch.present`` carries that per sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mmaudit.engine.config import AuditConfig, DataConfig, RuntimeConfig, cell_text
from mmaudit.engine.errors import ConfigError, DataError
from mmaudit.engine.images import image_to_tensor, load_image_file
from mmaudit.engine.manifest import (
    cell_texts,
    in_split,
    is_missing,
    number_hint,
    numbers,
    read_manifest,
    separator_guess,
    shown_cell,
    text_columns,
)

FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Batch:
    """One batch of model inputs plus bookkeeping; every tensor has the batch first."""

    index: torch.Tensor
    present: torch.Tensor
    target: torch.Tensor
    image: torch.Tensor | None = None
    roi_mask: torch.Tensor | None = None
    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    tabular: torch.Tensor | None = None
    tabular_missing: torch.Tensor | None = None
    modalities: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor on ``device``."""
        moved = {
            f.name: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return Batch(**moved)

    def pin_memory(self) -> Batch:
        """A copy with every tensor in pinned (page-locked) host memory, so that ``to(cuda)``
        copies without blocking; a DataLoader with ``pin_memory=True`` calls this."""
        pinned = {
            f.name: (v.pin_memory() if isinstance(v, torch.Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return Batch(**pinned)

    def select(self, rows: torch.Tensor | slice) -> Batch:
        """The sub-batch at ``rows``."""
        picked = {
            f.name: (v[rows] if isinstance(v, torch.Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return Batch(**picked)

    def replace(self, **changes: Any) -> Batch:
        return replace(self, **changes)


class AuditDataset(torch.utils.data.Dataset):
    """The rows of the manifest to audit, with every non-image modality pre-tensorised.

    Images are decoded lazily in ``__getitem__`` (so a DataLoader can use workers);
    text is tokenised once up front; tabular columns are normalised once.

    ``problems``: None (the default) raises the first problem found as a DataError;
    a list collects one line per problem and reads on (``mmaudit validate``). Problems
    that leave nothing to read on from (no manifest, missing columns, no tokenizer)
    raise in both modes.
    """

    def __init__(
        self,
        cfg: DataConfig,
        runtime: RuntimeConfig | None = None,
        problems: list[str] | None = None,
    ) -> None:
        runtime = runtime or RuntimeConfig()
        self.cfg = cfg
        self.problems = problems
        self.manifest_path = Path(cfg.manifest)
        df = read_manifest(self.manifest_path, text_columns(cfg), cfg.separator)
        self._check_columns(df)
        df = df.reset_index(drop=True)
        df["_row"] = np.arange(len(df)) + 2  # 1-based line in a CSV with a header
        # normalisation statistics come from every row, so --max-samples and the split
        # filter never change what a row's inputs are
        every_row = df
        if cfg.split is not None:
            keep = in_split(df[cfg.split.column], cfg.split.values)
            df = df[keep].reset_index(drop=True)
            if len(df) == 0:
                raise DataError(
                    f"{self.manifest_path}: no rows with {cfg.split.column} in {cfg.split.values}"
                )
        if runtime.max_samples is not None and len(df) > runtime.max_samples:
            rng = np.random.default_rng(runtime.seed)
            take = np.sort(rng.choice(len(df), runtime.max_samples, replace=False))
            df = df.iloc[take].reset_index(drop=True)
        self.frame = df
        self.modalities: tuple[str, ...] = tuple(cfg.modalities)
        self.notes: list[str] = []  # things a run should say but that are not errors
        self.ids = self._parse_ids(df)
        self.patients = self._parse_patients(df) if cfg.patient else None
        self.target, self.class_names = self._parse_target(df)
        self.present = np.ones((len(df), len(self.modalities)), dtype=bool)
        self.image_paths: list[Path | None] = []
        self.mask_paths: list[Path | None] = []
        self.texts: list[str] = []
        self.input_ids: torch.Tensor | None = None
        self.attention_mask: torch.Tensor | None = None
        self.tabular: torch.Tensor | None = None
        self.tabular_missing: torch.Tensor | None = None
        self.tabular_stats: dict[str, tuple[float, float]] = {}
        self.tokenizer: Any = None
        # data.missing, filled in by configure_missing() for models without a presence mask
        self.fill_missing = False
        self._fill_image: torch.Tensor | None = None
        self._fill_text: tuple[torch.Tensor, torch.Tensor] | None = None
        self._fill_tabular: torch.Tensor | None = None
        self._tabular_zero_filled: torch.Tensor | None = None  # self.tabular before any fill
        # counts changes to what items and batches hold (configure_missing), so that a loader
        # whose worker processes hold an older copy of the dataset knows to restart them
        self.version = 0
        if cfg.image is not None:
            self._setup_images(df)
        if cfg.text is not None:
            self._setup_text(df)
        if cfg.tabular is not None:
            self._setup_tabular(df, every_row)
        self.attributes = self._parse_attributes(df)

    # ---------------------------------------------------------------- validation
    def _problem(self, message: str, hint: str = "") -> None:
        """Raise the problem as a DataError, or record it and read on when collecting."""
        error = DataError(message, hint=hint)
        if self.problems is None:
            raise error
        self.problems.append(error.one_line())

    def _check_columns(self, df: pd.DataFrame) -> None:
        cfg = self.cfg
        wanted: dict[str, str] = {cfg.id: "data.id"}
        if cfg.patient:
            wanted[cfg.patient] = "data.patient"
        for c in cfg.target.all_columns:
            wanted[c] = "data.target"
        if cfg.image is not None:
            wanted[cfg.image.column] = "data.image.column"
            if cfg.image.roi_mask:
                wanted[cfg.image.roi_mask] = "data.image.roi_mask"
        if cfg.text is not None:
            wanted[cfg.text.column] = "data.text.column"
        if cfg.tabular is not None:
            for c in cfg.tabular.columns:
                wanted[c] = "data.tabular.columns"
        for name, a in cfg.attributes.items():
            wanted[a.column or name] = f"data.attributes.{name}"
        if cfg.split is not None:
            wanted[cfg.split.column] = "data.split.column"
        import difflib

        absent = [col for col in wanted if col not in df.columns]
        guess = separator_guess(self.manifest_path, cfg.separator) if absent else None
        if guess:  # the header was split at the wrong character: every name is off
            raise DataError(
                f"{self.manifest_path}: column(s) {', '.join(map(repr, absent[:3]))} not found",
                hint=guess,
            )
        for col in absent:
            close = difflib.get_close_matches(col, [str(c) for c in df.columns], n=1)
            hint = f"did you mean '{close[0]}'?" if close else "fix the config or the manifest"
            self._problem(
                f"{self.manifest_path}: column '{col}' (from {wanted[col]}) not found", hint=hint
            )
        if absent:
            raise DataError(
                f"{self.manifest_path}: {len(absent)} configured column(s) missing; rows not read"
            )

    def _parse_ids(self, df: pd.DataFrame) -> np.ndarray:
        """Row ids as text; a blank or repeated id is bad input (collecting: a stand-in)."""
        column = self.cfg.id
        ids = cell_texts(df[column])
        blank = ids.isna().to_numpy()
        if blank.any():
            i = int(np.flatnonzero(blank)[0])
            self._problem(
                f"{self.manifest_path} row {df['_row'][i]}: empty id in column '{column}'"
                f"{_more(int(blank.sum()) - 1, 'empty')}",
                hint="every row needs a unique id",
            )
            ids[blank] = [f"<no id, row {r}>" for r in df["_row"][blank]]
        out = ids.to_numpy(dtype=object)
        dup = ids.duplicated().to_numpy()
        if dup.any():
            i = int(np.flatnonzero(dup)[0])
            self._problem(
                f"{self.manifest_path} row {df['_row'][i]}: duplicate id {out[i]!r} in column"
                f" '{column}'{_more(int(dup.sum()) - 1, 'duplicate')}"
            )
        return out

    def _parse_patients(self, df: pd.DataFrame) -> np.ndarray:
        """Patient ids as text. A blank cell makes the row its own patient, named by its row id
        (``id:<row id>`` if that name is taken by a real patient), with a note.

        Not bad input: a missing patient link is common, and treating the row as a patient of
        its own only loses the grouping for that row (its CIs can be a little narrow if it
        does share a patient with another row), which the note says.
        """
        column = self.cfg.patient
        assert column is not None
        patients = cell_texts(df[column])
        blank = patients.isna().to_numpy()
        if blank.any():
            own = pd.Series(self.ids[blank], dtype=object)
            taken = own.isin(set(patients.dropna()))
            own[taken] = "id:" + own[taken]
            patients[blank] = own.to_numpy()
            first = int(np.flatnonzero(blank)[0])
            self.notes.append(
                f"{self.manifest_path}: patient column '{column}' is empty in {int(blank.sum())}"
                f" row(s) (first: row {df['_row'][first]}); each such row is its own patient,"
                " named by its id"
            )
        return patients.to_numpy(dtype=object)

    def _row(self, i: int) -> str:
        return f"{self.manifest_path} row {self.frame['_row'][i]} (id {self.ids[i]!r})"

    def _where(self, frame: pd.DataFrame, k: int) -> str:
        """``file row N (id 'x')`` for position ``k`` of ``frame`` (audited or not)."""
        cell = frame[self.cfg.id].iloc[k]
        name = "<no id>" if is_missing(cell) else cell_text(cell)
        return f"{self.manifest_path} row {frame['_row'].iloc[k]} (id {name!r})"

    def _parse_target(self, df: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        t = self.cfg.target
        cols = t.all_columns
        for c in cols:
            bad = df[c].isna().to_numpy()
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                self._problem(
                    f"{self.manifest_path} row {df['_row'][i]}: target column '{c}' is empty (NaN)"
                    f"{_more(int(bad.sum()) - 1, 'empty')}",
                    hint="drop unlabelled rows or filter them with data.split",
                )
                # collecting: read on with a stand-in label
                df = df.copy()
                df.loc[bad, c] = df[c].dropna().iloc[0] if (~bad).any() else 0
        if t.kind == "multilabel":
            y = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
            if not np.isin(y, (0, 1)).all():
                self._problem(f"{self.manifest_path}: multilabel targets must be 0/1")
                y = (y == 1).astype(np.float32)
            return y, list(cols)
        raw = df[cols[0]]
        unreadable = False  # labels already refused: a class count of stand-ins would mislead
        if t.kind == "binary":
            values = sorted(raw.astype(str).unique().tolist())
            if t.positive is not None:
                y = (raw.astype(str) == t.positive).to_numpy().astype(np.int64)
                names = [f"not {t.positive}", t.positive]
            else:
                num = pd.to_numeric(raw, errors="coerce")
                if num.isna().any() or not num.isin((0, 1)).all():
                    unreadable = True
                    self._problem(
                        f"{self.manifest_path}: binary target '{cols[0]}' must be 0/1 (found"
                        f" {values[:5]})",
                        hint=_binary_hint(num),
                    )
                y = (num == 1).to_numpy().astype(np.int64)
                names = ["0", "1"]
        else:
            classes = t.classes or sorted(raw.astype(str).unique().tolist())
            lookup = {c: k for k, c in enumerate(classes)}
            as_str = raw.astype(str)
            unknown = ~as_str.isin(classes)
            if unknown.any():
                unreadable = True
                i = int(np.flatnonzero(unknown.to_numpy())[0])
                self._problem(
                    f"{self.manifest_path} row {df['_row'][i]}: target {as_str[i]!r} is not in"
                    f" data.target.classes {classes}"
                    f"{_more(int(unknown.sum()) - 1, 'unknown')}"
                )
            y = as_str.map(lookup).fillna(0).to_numpy().astype(np.int64)
            names = list(classes)
        if len(np.unique(y)) < 2 and not unreadable:
            self._problem(
                f"{self.manifest_path}: target '{cols[0]}' has one class only ({names[int(y[0])]})"
                " in the audited rows",
                hint="an audit needs both classes; check data.split and max_samples",
            )
        return y, names

    def _parse_attributes(self, df: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for name, a in self.cfg.attributes.items():
            column = a.column or name
            col = df[column]
            if a.kind == "continuous":
                values, bad = numbers(col)
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    self._problem(
                        f"{self._row(i)}: attribute '{name}' (column '{column}') is continuous"
                        f" but holds {col[i]!r}{_more(int(bad.sum()) - 1, 'non-numeric')}",
                        hint=f"use kind: categorical for data.attributes.{name}",
                    )
                infinite = np.isinf(values)
                if infinite.any():
                    i = int(np.flatnonzero(infinite)[0])
                    self._problem(
                        f"{self._row(i)}: attribute '{name}' (column '{column}') holds"
                        f" {shown_cell(col[i])!r}, not a finite number"
                        f"{_more(int(infinite.sum()) - 1, 'non-finite')}",
                        hint="write the value, or leave the cell blank when it is unknown",
                    )
                    values[infinite] = np.nan
                out[name] = values
            else:
                out[name] = cell_texts(col).astype("string").to_numpy(dtype=object)
        return pd.DataFrame(out, index=self.ids)

    def _resolve(self, value: Any) -> Path:
        p = Path(str(value).strip())
        if p.is_absolute():
            return p
        root = (
            self.cfg.image.root
            if self.cfg.image and self.cfg.image.root
            else self.manifest_path.parent
        )
        return Path(root) / p

    def _setup_images(self, df: pd.DataFrame) -> None:
        img = self.cfg.image
        assert img is not None
        m = self.modalities.index("image")
        hint = "paths are relative to the manifest folder or data.image.root"
        for i, value in enumerate(df[img.column].tolist()):
            if is_missing(value):
                self.image_paths.append(None)
                self.present[i, m] = False
                continue
            path = self._resolve(value)
            if not path.is_file():
                self._problem(f"{self._row(i)}: {_not_a_file('image', path)}", hint=hint)
                path = None
            self.image_paths.append(path)
        if img.roi_mask:
            for i, value in enumerate(df[img.roi_mask].tolist()):
                path = None if is_missing(value) else self._resolve(value)
                if path is not None and not path.is_file():
                    self._problem(f"{self._row(i)}: {_not_a_file('ROI mask', path)}", hint=hint)
                    path = None
                self.mask_paths.append(path)

    def _setup_text(self, df: pd.DataFrame) -> None:
        txt = self.cfg.text
        assert txt is not None
        self.tokenizer = load_tokenizer(txt.tokenizer)
        m = self.modalities.index("text")
        texts = []
        for i, value in enumerate(df[txt.column].tolist()):
            if is_missing(value):
                texts.append("")
                self.present[i, m] = False
            else:
                texts.append(str(value))
        self.texts = texts
        self.input_ids, self.attention_mask = self._tokenize(texts)

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        txt = self.cfg.text
        assert txt is not None
        enc = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=txt.max_length,
            return_tensors="pt",
        )
        return enc["input_ids"].long(), enc["attention_mask"].long()

    def _setup_tabular(self, df: pd.DataFrame, every_row: pd.DataFrame) -> None:
        """Numeric labs, normalised; ``data`` statistics come from ``every_row`` (all rows)."""
        tab = self.cfg.tabular
        assert tab is not None
        rows = df["_row"].to_numpy() - 2  # positions in every_row
        audited = np.zeros(len(every_row), dtype=bool)
        audited[rows] = True
        raw = np.empty((len(every_row), len(tab.columns)), dtype=float)
        for j, c in enumerate(tab.columns):
            col, bad = numbers(every_row[c])
            blank_everywhere = bool((np.isnan(col) & ~bad).all())
            bad &= audited  # text elsewhere is left out of the statistics, as a blank is
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                cell = every_row[c].iloc[k]
                self._problem(
                    f"{self._where(every_row, k)}: tabular column '{c}' is not a number:"
                    f" {cell!r}{_more(int(bad.sum()) - 1, 'non-numeric')}",
                    hint=number_hint(cell),
                )
            # the model takes float32: 1e39 is as unusable as inf
            huge = np.isinf(col) | (np.abs(np.nan_to_num(col)) > FLOAT32_MAX)
            if huge.any():
                k = int(np.flatnonzero(huge)[0])
                elsewhere = (
                    "" if audited[k] else " (not audited, but every row feeds the lab statistics)"
                )
                what = "not a finite number" if np.isinf(col[k]) else "too large for float32"
                self._problem(
                    f"{self._where(every_row, k)}: tabular column '{c}' holds"
                    f" {shown_cell(every_row[c].iloc[k])!r}, {what}{elsewhere}"
                    f"{_more(int(huge.sum()) - 1, 'non-finite')}",
                    hint="write the measured value, or leave the cell blank when it is missing",
                )
                col[huge] = np.nan  # collecting: read on with the cell missing
            if blank_everywhere:
                # mean 0 / sd 1 and an all-zero input would look like a measured column
                self._problem(
                    f"{self.manifest_path}: tabular column '{c}' is blank in every row"
                    f" ({len(every_row)} rows)",
                    hint="remove it from data.tabular.columns; a lab with no values tells the"
                    " audit nothing",
                )
            raw[:, j] = col
        values = raw[rows].astype(np.float32)
        missing = np.isnan(values)
        fill = np.zeros(len(tab.columns), dtype=np.float32)
        for j, c in enumerate(tab.columns):
            everywhere = raw[:, j][~np.isnan(raw[:, j])]
            if tab.normalization == "given":
                mu, sd = tab.mean[c], tab.std[c]
            elif tab.normalization == "none":
                mu, sd = 0.0, 1.0
            else:
                mu = float(everywhere.mean()) if everywhere.size else 0.0
                sd = float(everywhere.std()) if everywhere.size > 1 else 1.0
            sd = sd if sd > 0 else 1.0
            self.tabular_stats[c] = (mu, sd)
            values[:, j] = (values[:, j] - mu) / sd
            if everywhere.size:
                fill[j] = (float(everywhere.mean()) - mu) / sd  # the column mean, normalised
        values[missing] = 0.0
        self.tabular = torch.from_numpy(values)
        self._tabular_zero_filled = self.tabular
        self.tabular_missing = torch.from_numpy(missing)
        self._tabular_column_means = torch.from_numpy(fill)
        self.present[:, self.modalities.index("tabular")] = ~missing.all(axis=1)

    def configure_missing(self, model_takes_present: bool) -> dict[str, Any]:
        """Turn ``data.missing`` on for a model with no presence-mask keyword; the report record.

        A model that takes ``present`` is told what is missing and gets its inputs as they
        are (zeros, empty text); any other model gets the configured stand-in instead:
        ``image: mean`` is the mean normalised image of (up to 512 evenly spaced) audited
        rows, ``tabular: mean`` the column mean over every manifest row, ``text: mask``
        one mask token. ``zero`` / ``empty`` are what the dataset yields anyway.

        The tabular stand-in is written into ``self.tabular`` itself (not only into
        batches), so code that reads the stored values (tabular SHAP, the cache's input
        means) sees what the model sees; ``tabular_missing`` still marks the filled cells.
        """
        miss = self.cfg.missing
        self.version += 1
        self.fill_missing = not model_takes_present
        self._fill_image = self._fill_text = self._fill_tabular = None
        if self.fill_missing:
            if "image" in self.modalities and miss.image == "mean":
                self._fill_image = self._mean_image()
            if "text" in self.modalities and miss.text == "mask":
                mask_token = getattr(self.tokenizer, "mask_token", None)
                if not mask_token:
                    raise ConfigError(
                        "data.missing.text is 'mask' but the tokenizer has no mask token",
                        hint="use data.missing.text: empty",
                    )
                self._fill_text = self._tokenize([mask_token])
            if "tabular" in self.modalities and miss.tabular == "mean":
                self._fill_tabular = self._tabular_column_means
        if self._tabular_zero_filled is not None:
            self.tabular = self._tabular_zero_filled
            if self._fill_tabular is not None:
                self.tabular = torch.where(
                    self.tabular_missing,  # type: ignore[arg-type]
                    self._fill_tabular,
                    self._tabular_zero_filled,
                )
        return {"applied": self.fill_missing, **miss.model_dump()}

    def _mean_image(self) -> torch.Tensor | None:
        m = self.modalities.index("image")
        readable = np.array([p is not None for p in self.image_paths], dtype=bool)
        rows = np.flatnonzero(self.present[:, m] & readable)
        if len(rows) == 0:
            return None
        rows = np.unique(rows[np.linspace(0, len(rows) - 1, min(512, len(rows))).astype(int)])
        return torch.stack([self.load_image(int(i)) for i in rows]).mean(0)

    # ---------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, i: int) -> torch.Tensor:
        """The normalised image tensor of row ``i`` (zeros when the image is missing)."""
        img = self.cfg.image
        assert img is not None
        path = self.image_paths[i]
        if path is None:
            return torch.zeros(img.channels, img.size, img.size)
        white = None if img.max_value == "auto" else float(img.max_value)
        try:
            arr = load_image_file(path, white)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{self._row(i)}: cannot decode image {path}: {exc}") from exc
        t = image_to_tensor(arr, img.size, img.channels)
        mean = torch.tensor(img.mean).view(-1, 1, 1)
        std = torch.tensor(img.std).view(-1, 1, 1)
        return (t - mean) / std

    def load_mask(self, i: int) -> torch.Tensor:
        """The ROI mask of row ``i`` as (1, size, size) in {0, 1}; all NaN when the row has none."""
        img = self.cfg.image
        assert img is not None
        path = self.mask_paths[i] if self.mask_paths else None
        if path is None:
            return torch.full((1, img.size, img.size), float("nan"))
        try:
            arr = load_image_file(path)
        except Exception as exc:
            raise DataError(f"{self._row(i)}: cannot decode ROI mask {path}: {exc}") from exc
        t = image_to_tensor(arr, img.size, 1)
        return (t > 0.5).float()

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"index": i}
        if self.cfg.image is not None:
            item["image"] = self.load_image(i)
            if self.mask_paths:
                item["roi_mask"] = self.load_mask(i)
        return item

    def collate(self, items: list[dict[str, Any]]) -> Batch:
        """Stack items into a Batch, pulling pre-tensorised modalities by index.

        With ``fill_missing`` on (see ``configure_missing``), missing modalities get the
        ``data.missing`` stand-ins (lab values have them in ``self.tabular`` already).
        """
        index = torch.tensor([it["index"] for it in items], dtype=torch.long)
        present = torch.from_numpy(self.present[index.numpy()])
        batch = Batch(
            index=index,
            present=present,
            target=torch.from_numpy(self.target[index.numpy()]),
            modalities=self.modalities,
        )
        if "image" in items[0]:
            batch.image = torch.stack([it["image"] for it in items])
            if self._fill_image is not None:
                absent = ~present[:, self.modalities.index("image")]
                batch.image[absent] = self._fill_image
        if "roi_mask" in items[0]:
            batch.roi_mask = torch.stack([it["roi_mask"] for it in items])
        if self.input_ids is not None:
            batch.input_ids = self.input_ids[index]
            batch.attention_mask = self.attention_mask[index]  # type: ignore[index]
            if self._fill_text is not None:
                absent = ~present[:, self.modalities.index("text")]
                batch.input_ids[absent] = self._fill_text[0]
                batch.attention_mask[absent] = self._fill_text[1]
        if self.tabular is not None:
            batch.tabular = self.tabular[index]
            batch.tabular_missing = self.tabular_missing[index]  # type: ignore[index]
        return batch

    def batches(
        self,
        batch_size: int,
        num_workers: int = 0,
        indices: np.ndarray | None = None,
        chunks: list[np.ndarray] | None = None,
    ) -> Iterator[Batch]:
        """Batches in manifest order (or over ``indices``, or exactly the given ``chunks``)."""
        if chunks is not None:
            sampler = [[int(i) for i in c] for c in chunks if len(c)]
            loader = torch.utils.data.DataLoader(
                self, batch_sampler=sampler, num_workers=num_workers, collate_fn=self.collate
            )
            yield from loader
            return
        subset: torch.utils.data.Dataset = self
        if indices is not None:
            subset = torch.utils.data.Subset(self, [int(i) for i in indices])
        loader = torch.utils.data.DataLoader(
            subset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=self.collate,
        )
        yield from loader

    def validate_all(self) -> list[str]:
        """Decode every image and mask; return one problem line per bad row (nothing raised)."""
        problems: list[str] = []
        for i in range(len(self)):
            if self.cfg.image is not None and self.image_paths[i] is not None:
                try:
                    self.load_image(i)
                except DataError as exc:
                    problems.append(exc.one_line())
            if self.mask_paths and self.mask_paths[i] is not None:
                try:
                    self.load_mask(i)
                except DataError as exc:
                    problems.append(exc.one_line())
        if self.input_ids is not None and self.tokenizer is not None:
            unk = getattr(self.tokenizer, "unk_token_id", None)
            if unk is not None:
                ids = self.input_ids[self.attention_mask.bool()]  # type: ignore[union-attr]
                special = set(getattr(self.tokenizer, "all_special_ids", []))
                content = [int(t) for t in ids.tolist() if int(t) not in special or int(t) == unk]
                if content and sum(t == unk for t in content) / len(content) > 0.5:
                    problems.append(
                        f"{self.cfg.text.tokenizer}: over half of the report tokens are"  # type: ignore[union-attr]
                        " [UNK]; is this the tokenizer the model was trained with?"
                    )
        return problems


def _binary_hint(num: pd.Series) -> str:
    """What to set for a binary target that is not 0/1: integer class codes (0/1/2) mean a
    multiclass target; names (``pneumonia``) or two codes other than 0/1 need the positive
    class named."""
    labels = num.dropna().unique()
    codes = num.notna().all() and bool(np.all(np.equal(np.mod(labels, 1), 0)))
    if codes and len(labels) > 2:
        return f"these are {len(labels)} class codes: set data.target.kind: multiclass"
    if codes:
        high = cell_text(float(max(labels)))
        return (
            f"set data.target.positive: '{high}' to name the positive class, or"
            " data.target.kind: multiclass"
        )
    return "set data.target.positive to the positive class name"


def _not_a_file(what: str, path: Path) -> str:
    """Why ``path`` cannot be read as a ``what`` file: a folder, or nothing there."""
    if path.is_dir():
        return f"{what} path is a folder, not an {what} file: {path}".replace("an ROI", "a ROI")
    return f"{what} file not found: {path}"


def _more(n: int, what: str) -> str:
    """`` (and N more <what> rows)`` when a problem repeats, else nothing."""
    return f" (and {n} more {what} row{'s' if n > 1 else ''})" if n > 0 else ""


def load_tokenizer(folder: Path) -> Any:
    """Load a tokenizer from a local folder (never from a hub)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"tokenizer folder not found: {folder}",
            hint="data.text.tokenizer must be a local folder with tokenizer.json",
        )
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else ""
        files = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise DataError(
            f"{folder}: not a loadable tokenizer folder ({type(exc).__name__}: {first});"
            f" it holds {files}",
            hint="data.text.tokenizer needs the files tokenizer.save_pretrained() writes"
            " (tokenizer.json, tokenizer_config.json)",
        ) from exc


def build_dataset(cfg: AuditConfig, problems: list[str] | None = None) -> AuditDataset:
    """The dataset for an audit config (``problems``: collect instead of raising)."""
    return AuditDataset(cfg.data, cfg.runtime, problems)
