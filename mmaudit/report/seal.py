"""Tamper evidence for report folders: report.json records the sha256 of its own content
and of every other file the run wrote; ``show`` and ``diff`` refuse a folder whose files
no longer match. It guards against edited or corrupted reports, not against someone who
recomputes the digests on purpose (there is no secret key).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from mmaudit.engine.errors import ReportError
from mmaudit.report.folder import MARKER


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def files_under(folder: Path) -> list[str]:
    """Every regular file under ``folder``, report-relative with '/' separators, sorted."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink()
    )


def report_digest(payload: dict[str, Any]) -> str:
    """sha256 of report.json's content as canonical JSON (sorted keys, no whitespace),
    without ``integrity.report_sha256`` itself: re-indenting the file keeps the digest,
    changing any value, key or recorded file digest does not."""
    body = dict(payload)
    integrity = body.get("integrity")
    if isinstance(integrity, dict):
        body["integrity"] = {k: v for k, v in integrity.items() if k != "report_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal_payload(payload: dict[str, Any], files: dict[str, str]) -> dict[str, Any]:
    """``payload`` (report.json's content) with its ``integrity`` record: the sha256 of each
    other file of the folder (``files``) and of the payload itself (``report_digest``), so
    ``load_report`` can refuse a report whose values or per-sample files were changed."""
    sealed = {k: v for k, v in payload.items() if k != "integrity"}
    sealed["integrity"] = {"algorithm": "sha256", "files": dict(sorted(files.items()))}
    sealed["integrity"]["report_sha256"] = report_digest(sealed)
    return sealed


_EDITED_HINT = "re-run the audit; a report folder is a record of one run and is not edited"


def verify_report_json(folder: Path, path: Path, raw: dict[str, Any]) -> None:
    """ReportError unless report.json's content matches the digest it recorded (or it
    records none and the folder has no marker: a report from before digests)."""
    integrity = raw.get("integrity")
    if integrity is None:
        if (folder / MARKER).is_file():
            raise ReportError(
                f"{path}: its digests were removed (the folder's {MARKER} says this"
                " mmaudit wrote it, and it records them)",
                hint=_EDITED_HINT,
            )
        return
    files = integrity.get("files") if isinstance(integrity, dict) else None
    if (
        not isinstance(files, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
        or not isinstance(integrity.get("report_sha256"), str)
    ):
        raise ReportError(f"{path}: malformed integrity record (hand-edited?)", hint=_EDITED_HINT)
    if not hmac.compare_digest(report_digest(raw), integrity["report_sha256"]):
        raise ReportError(
            f"{path}: its content does not match the digest recorded when it was written"
            " (edited after the audit?)",
            hint=_EDITED_HINT,
        )


def verify_files(folder: Path, path: Path, files: dict[str, str]) -> None:
    """ReportError naming the first file whose bytes differ from the digest report.json
    records, a recorded file that is gone (a deleted predictions.parquet would silently drop
    ``diff``'s paired test and churn, so a missing file does not match either), or a
    per-sample file report.json does not know."""
    root = folder.resolve()
    for rel, digest in files.items():
        target = (root / rel).resolve()
        if root not in target.parents:
            raise ReportError(
                f"{path}: a recorded file points outside the report folder: {rel}",
                hint="the report was edited or is not from mmaudit; refusing to read it",
            )
        if not target.is_file():
            raise ReportError(
                f"{folder / rel}: recorded in report.json but missing (deleted after the audit?)",
                hint="re-run the audit, or restore the report folder from where it was"
                " archived; a report folder is read whole",
            )
        if not hmac.compare_digest(file_sha256(target), digest):
            raise ReportError(
                f"{folder / rel}: does not match the sha256 that report.json recorded for it"
                " (changed or corrupted after the audit)",
                hint=_EDITED_HINT,
            )
    samples = root / "samples"
    for extra in sorted(samples.rglob("*")) if samples.is_dir() else []:
        rel = extra.relative_to(root).as_posix()
        if extra.is_file() and rel not in files:
            raise ReportError(
                f"{folder / rel}: not written by this audit (report.json records no digest for it)",
                hint="remove it, or re-run the audit",
            )
