"""The report folder writer: figures, tables, per-sample files, views and the seal.

The folder is written to a temporary sibling and renamed at the end, so an interrupted run
never leaves a folder that looks complete. Under --redact, a ``Redactor`` keeps raw patient
data (ids, report text) out of everything written. The document itself (``Report``,
``report.json``'s schema, ``load_report``) is ``mmaudit.report.document``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmaudit.checks.contract import CheckOutput
from mmaudit.engine.errors import MmauditError
from mmaudit.report.document import Report, json_safe
from mmaudit.report.folder import (
    MARKER,
    check_output_folder,
    lock_folder,
    make_parent,
    not_writable,
    remove_stale_stages,
    resolve_output,
    signals_held,
    stage_prefix,
)
from mmaudit.report.seal import file_sha256, files_under, seal_payload
from mmaudit.report.views import write_baseline_diff, write_views

# A secret shared by audits that are meant to be diffed under --redact. Read from the
# environment, never the config, because the config is copied into the report folder.
REDACT_SALT_ENV = "MMAUDIT_REDACT_SALT"
# Report folders this process finished (moved into place): an interrupt that lands after
# the move must not claim that no report was written.
FINISHED: list[Path] = []


def hash_id(value: str, salt: str) -> str:
    """A pseudonymous stand-in for a sample or patient id: a keyed hash (HMAC-SHA256), so
    low-entropy ids such as record numbers cannot be recovered by hashing guesses."""
    return "h" + hmac.new(salt.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]


class Redactor:
    """Keeps raw patient data (sample and patient ids, report text) out of every table
    written under --redact.

    Ids are hashed with a salt: ``MMAUDIT_REDACT_SALT`` when set (audits run with the same
    secret can be paired by ``mmaudit diff``), otherwise a random one per report (redacted
    reports then cannot be linked to each other, or paired by ``diff``).

    Report text is blanked where a cell holds a whole report, or a piece of one that spans
    words (has whitespace); a single word is vocabulary, not a quote, so word tables keep
    their words ("consolidation" stays even though reports contain it). Check params and
    the config are searched for ids only: they are written by the user, not the patient.

    Limits: ids shorter than ``MIN_ID`` characters are hashed where they are a whole cell
    but not searched for inside other strings (too many false hits); report texts and
    pieces shorter than ``MIN_TEXT`` characters are not blanked.
    """

    MIN_ID = 3
    MIN_TEXT = 12

    def __init__(
        self,
        ids: list[str],
        texts: list[str],
        patients: list[str] | None = None,
        salt: str | None = None,
    ) -> None:
        self.ids = set(ids) | {str(p) for p in patients or []}
        self.texts = [t for t in texts if len(t) >= self.MIN_TEXT]
        shared = salt or os.environ.get(REDACT_SALT_ENV) or None
        self.shared_salt = shared is not None
        self.salt = shared or secrets.token_hex(16)
        # Built once: substring search by set lookup of every window of each id length
        # (a handful of lengths), instead of testing every id against every cell.
        searchable = {i for i in self.ids if len(i) >= self.MIN_ID}
        self._id_lengths = sorted({len(i) for i in searchable}, reverse=True)
        self._searchable = frozenset(searchable)
        # a text inside a cell starts with one of these MIN_TEXT-character prefixes
        self._text_prefixes: dict[str, list[str]] = {}
        for t in self.texts:
            self._text_prefixes.setdefault(t[: self.MIN_TEXT], []).append(t)
        self._all_texts = "\x00".join(self.texts)  # one search for "a cell inside a text"
        self._cells: dict[str, str] = {}  # per-sample columns repeat their values

    def hash(self, value: Any) -> str:
        return hash_id(str(value), self.salt)

    def _id_windows(self, text: str) -> Iterator[str]:
        """Audited ids (at least ``MIN_ID`` characters) inside ``text``, lazily."""
        for n in self._id_lengths:
            for k in range(len(text) - n + 1):
                if text[k : k + n] in self._searchable:
                    yield text[k : k + n]

    def _holds_id(self, value: str) -> bool:
        """Whether an audited id (at least ``MIN_ID`` characters) is inside ``value``."""
        return any(True for _ in self._id_windows(value))

    def _holds_text(self, value: str) -> bool:
        """Whether ``value`` quotes a report text, or is a piece of one spanning words."""
        if len(value) < self.MIN_TEXT:
            return False
        if any(c.isspace() for c in value) and value in self._all_texts:
            return True
        n = self.MIN_TEXT
        for k in range(len(value) - n + 1):
            for t in self._text_prefixes.get(value[k : k + n], ()):
                if value.startswith(t, k):
                    return True
        return False

    def cell(self, value: Any) -> Any:
        """An id as its hash, a string holding an id or report text as ``[redacted]``."""
        if not isinstance(value, str):
            return value
        if value in self.ids:
            return self.hash(value)
        if value not in self._cells:
            leaks = self._holds_text(value) or self._holds_id(value)
            self._cells[value] = "[redacted]" if leaks else value
        return self._cells[value]

    def tree(self, value: Any) -> Any:
        """A config-like value (dicts, lists, strings) with ids hashed where a whole string
        and strings holding one blanked: check params can name studies (e.g.
        ``embedding.exemplar_ids``). Not searched for report text: params such as
        ``attention.clinical_words`` are the user's vocabulary and stay readable."""
        if isinstance(value, dict):
            return {self.tree(k): self.tree(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.tree(v) for v in value]
        if not isinstance(value, str):
            return value
        if value in self.ids:
            return self.hash(value)
        return "[redacted]" if self._holds_id(value) else value

    def frame(self, frame: Any) -> Any:
        out = frame.copy()
        for col in out.columns:
            if col == "patient":  # hashed whatever its values, even when not listed as ids
                out[col] = [self.hash(v) for v in out[col]]
            elif out[col].dtype == object or str(out[col].dtype).startswith("str"):
                out[col] = out[col].map(self.cell)
        if out.index.dtype == object or str(out.index.dtype).startswith("str"):
            out.index = out.index.map(self.cell)
        return out

    def names(self, ids: Any) -> list[str]:
        return [self.hash(i) for i in ids]

    def prose(self, text: str | None) -> str | None:
        """A message (note, finding, error reason, traceback) with every id replaced by its
        hash and every quoted report text blanked: checks name rows in their notes, and an
        exception can quote a value.

        Limits: ids shorter than ``MIN_ID`` characters stay as they are; an id glued to
        letters, digits, ``_`` or ``-`` on either side is not replaced (so ``s0011`` is not
        mistaken for ``s001``); a report text is blanked only when quoted whole and
        verbatim, so texts under ``MIN_TEXT`` characters, a truncated quote or one with
        escaped characters (a ``repr`` of a text with newlines or quotes) are not.
        """
        if not text:
            return text
        for t in self.texts:
            if t in text:
                text = text.replace(t, "[redacted]")
        # longest first, so an id that contains a shorter one is replaced whole
        for i in sorted(set(self._id_windows(text)), key=len, reverse=True):
            text = re.sub(rf"(?<![\w-]){re.escape(i)}(?![\w-])", self.hash(i), text)
        return text

    def report(self, report: Report) -> None:
        """Redact ``report`` in place: the free-text fields (reasons, tracebacks, notes,
        finding and cross-check messages) through ``prose``, the config and every check's
        params through ``tree``."""
        report.config = self.tree(report.config)
        for check in report.checks.values():
            check.params = self.tree(check.params)
            check.reason = self.prose(check.reason)
            check.traceback = self.prose(check.traceback)
            check.notes = [self.prose(n) or "" for n in check.notes]
            check.coverage = [self.prose(n) or "" for n in check.coverage]
            for finding in check.findings:
                finding.message = self.prose(finding.message) or ""
        for cross in report.cross_checks:
            cross.message = self.prose(cross.message) or ""


class ReportWriter:
    """Stages a report folder in a temporary sibling of ``out`` and renames it at the end.

    The staging folder (``.{out}.partial-XXXXXXXX``) is locked (``flock``) while its run
    lives; a new writer removes the unlocked ones, left by runs killed before ``abort``
    could run (SIGKILL, power loss), since they can hold raw patient data.

    With a ``baseline`` (an earlier report folder), ``finish`` also writes diff.json and
    diff.md and records what changed in report.json (``Report.baseline``).

    ``out`` is replaced only when it is an mmaudit report holding nothing else (see
    ``check_output_folder``), and whether it can be is checked here, before any model runs,
    and again just before the swap: mmaudit never deletes a file it did not write.
    """

    def __init__(
        self, out: Path, redactor: Redactor | None = None, baseline: Path | None = None
    ) -> None:
        self.redactor = redactor
        # an earlier report folder (``mmaudit run --baseline``): ``finish`` compares the new
        # report with it as ``mmaudit diff`` does, and the views show what changed
        self.baseline = baseline
        self.out = resolve_output(out)
        check_output_folder(self.out)
        make_parent(self.out)
        remove_stale_stages(self.out)
        try:
            self.stage = Path(tempfile.mkdtemp(prefix=stage_prefix(self.out), dir=self.out.parent))
        except OSError as exc:
            raise not_writable(self.out.parent, exc) from exc
        self._lock = lock_folder(self.stage)

    def add_check(
        self, name: str, output: CheckOutput, ids: Any
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Write a check's figures, tables and per-sample data; return report-relative paths.

        Under --redact, the figures, tables and per-sample arrays the check marked private
        (by key, or all arrays with the key ``"arrays"``) are left out with a note, ids are
        hashed and report text is blanked in every table written.
        """
        import matplotlib.pyplot as plt
        import numpy as np

        figures: dict[str, str] = {}
        tables: dict[str, str] = {}
        red = self.redactor
        shown = set(output.figures) | set(output.tables) | set(output.arrays)
        if output.arrays:
            shown.add("arrays")
        withheld = sorted(output.private & shown) if red else []
        if withheld:
            output.notes.append(
                f"left out under --redact (raw patient data): {', '.join(withheld)}"
            )
        fdir = self.stage / "figures" / name
        for key, fig in output.figures.items():
            if key not in withheld:
                fdir.mkdir(parents=True, exist_ok=True)
                path = fdir / f"{_slug(key)}.png"
                save_figure(fig, path)
                figures[key] = path.relative_to(self.stage).as_posix()
            plt.close(fig)
        tdir = self.stage / "tables" / name
        for key, frame in output.tables.items():
            if key in withheld:
                continue
            tdir.mkdir(parents=True, exist_ok=True)
            path = tdir / f"{_slug(key)}.csv"
            frame = red.frame(frame) if red else frame
            frame.to_csv(path, index=frame.index.name is not None or not _is_range(frame))
            tables[key] = path.relative_to(self.stage).as_posix()
        sdir = self.stage / "samples"
        if output.per_sample is not None:
            sdir.mkdir(exist_ok=True)
            path = sdir / f"{_slug(name)}.parquet"
            per_sample = red.frame(output.per_sample) if red else output.per_sample
            per_sample.to_parquet(path, index=False)
            tables["per_sample"] = path.relative_to(self.stage).as_posix()
        arrays = {
            k: np.asarray(v)
            for k, v in output.arrays.items()
            if k not in withheld and "arrays" not in withheld
        }
        if arrays:
            sdir.mkdir(exist_ok=True)
            path = sdir / f"{_slug(name)}.npz"
            names = red.names(ids) if red else [str(i) for i in ids]
            np.savez_compressed(path, __ids__=np.array(names), **arrays)
            tables["arrays"] = path.relative_to(self.stage).as_posix()
        return figures, tables

    def add_samples(self, frame: Any, embeddings: dict[str, Any], max_mb: float) -> list[str]:
        """samples/predictions.parquet and samples/embeddings.npz (float16, up to ``max_mb``);
        returns the layers left out for size."""
        import numpy as np

        sdir = self.stage / "samples"
        sdir.mkdir(exist_ok=True)
        if self.redactor is not None:
            frame = frame.assign(id=self.redactor.names(frame["id"]))
            if "patient" in frame:
                frame = frame.assign(patient=self.redactor.names(frame["patient"]))
        if len(frame.columns) > 1:  # ids alone: embeddings.npz keeps them (__ids__)
            frame.to_parquet(sdir / "predictions.parquet", index=False)
        kept: dict[str, Any] = {}
        left_out: list[str] = []
        budget = max_mb * 1024 * 1024
        for layer, values in embeddings.items():
            arr = np.asarray(values, dtype=np.float16)
            if arr.nbytes <= budget:
                kept[layer] = arr
                budget -= arr.nbytes
            else:
                left_out.append(layer)
        if kept:
            ids = frame["id"].to_numpy(dtype=str)
            np.savez_compressed(sdir / "embeddings.npz", __ids__=ids, **kept)
        return left_out

    def finish(self, report: Report, config_yaml: str) -> Path:
        """Write config.yaml, the rendered views and report.json (sealed with the digests of
        every file, see ``seal_payload``) and the ownership marker, then move into place.

        The swap of an earlier report for the new one runs with SIGINT / SIGTERM held back,
        so a Ctrl-C cannot leave the folder with neither report."""
        if self.redactor is not None:
            import yaml

            # tells `mmaudit diff` why two redacted reports may share no ids
            report.data["id_hash"] = "shared salt" if self.redactor.shared_salt else "random salt"
            self.redactor.report(report)
            config_yaml = yaml.safe_dump(
                self.redactor.tree(yaml.safe_load(config_yaml)), sort_keys=False
            )
        (self.stage / "config.yaml").write_text(config_yaml, encoding="utf-8")
        if self.baseline is not None:
            seal_folder(self.stage, report)  # diff reads the new report as any report folder
            scrub = None if self.redactor is None else self._scrub
            report.baseline = write_baseline_diff(self.baseline, self.stage, self.out, scrub)
        write_views(self.stage, report)
        seal_folder(self.stage, report)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.stage, 0o777 & ~umask)  # mkdtemp made it private; a report is not
        # out may have changed since the run started (hours ago): check again
        check_output_folder(self.out)
        trash: Path | None = None
        with signals_held():
            try:
                if self.out.exists():
                    trash = Path(
                        tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent)
                    )
                    os.replace(self.out, trash)  # onto the empty folder mkdtemp made
                    try:
                        os.rename(self.stage, self.out)
                    except OSError:
                        os.replace(trash, self.out)  # put the earlier report back
                        raise
                else:
                    os.rename(self.stage, self.out)
            except OSError as exc:
                if trash is not None and trash.is_dir() and not any(trash.iterdir()):
                    trash.rmdir()
                raise MmauditError(
                    f"cannot move the finished report into {self.out}:"
                    f" {exc.strerror or type(exc).__name__}",
                    hint="choose another -o, or make the folder and its parent writable",
                ) from exc
            FINISHED.append(self.out)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)  # checked above: only files mmaudit wrote
        self._unlock()  # only now: until the rename a new writer must not sweep the stage
        return self.out

    def _scrub(self, text: str) -> str:
        assert self.redactor is not None
        return self.redactor.prose(text) or ""

    def abort(self) -> None:
        """Remove the staging folder (the previous report, if any, stays untouched)."""
        shutil.rmtree(self.stage, ignore_errors=True)
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the flock
            self._lock = None


def seal_folder(folder: Path, report: Report) -> None:
    """Write ``folder``'s report.json sealed with the sha256 of every other file in it (see
    ``seal_payload``; ``report.integrity`` is set to the record) and the ownership marker
    naming every file, so a later run knows what it may replace. Call it last, after every
    other file of the folder is written: by the writer, and by tools that update a report
    in place (the detection benchmark's ``--recheck``)."""
    from mmaudit import __version__

    written = [rel for rel in files_under(folder) if rel not in ("report.json", MARKER)]
    files = {rel: file_sha256(folder / rel) for rel in written}
    payload = seal_payload(json_safe(report.model_dump(mode="python")), files)
    report.integrity = payload["integrity"]
    (folder / "report.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    marker = {
        "written_by": "mmaudit",
        "version": __version__,
        "files": sorted([*written, "report.json"]),
    }
    (folder / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")


# the widest a figure is drawn on the page (CSS px): a figure is saved no wider, since the
# page would only scale the extra pixels away
FIGURE_MAX_PX = 1100
FIGURE_DPI = 100


def save_figure(fig: Any, path: Path) -> None:
    """A matplotlib figure as a compact PNG at the resolution the page shows it.

    Drawn at ``FIGURE_DPI`` (lower for a figure wider than ``FIGURE_MAX_PX`` at that dpi),
    flattened onto white and reduced to a 256-colour palette (octree, dithered): plots have
    few colours, so lines and text stay exact, and image overlays keep their look at about a
    third of the bytes of full-colour PNG."""
    import io

    from PIL import Image

    dpi = min(FIGURE_DPI, FIGURE_MAX_PX / max(fig.get_figwidth(), 1e-6))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    buffer.seek(0)
    with Image.open(buffer) as image:
        rgba = image.convert("RGBA")
    flat = Image.new("RGB", rgba.size, "white")
    flat.paste(rgba, mask=rgba.getchannel("A"))
    palette = flat.quantize(256, method=Image.Quantize.FASTOCTREE)
    palette.save(path, format="PNG", optimize=True)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:120]


def _is_range(frame: Any) -> bool:
    import pandas as pd

    return isinstance(frame.index, pd.RangeIndex)
