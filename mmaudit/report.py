"""The report model and the report folder writer.

``report.json`` is the versioned contract that ``diff`` and ``show`` read. The
folder is written to a temporary sibling and renamed at the end, so an
interrupted run never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from mmaudit.check import CheckOutput, Finding
from mmaudit.errors import MmauditError, ReportError
from mmaudit.stats import Estimate

SCHEMA_VERSION = 1


class CheckReport(BaseModel):
    """One check's result in the report."""

    name: str
    status: str
    reason: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    findings: list[Finding] = Field(default_factory=list)
    figures: dict[str, str] = Field(default_factory=dict)
    tables: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    thresholds: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0
    traceback: str | None = None


class Report(BaseModel):
    """Everything an audit produced, with provenance."""

    schema_version: int = SCHEMA_VERSION
    tool_version: str
    created: str
    config: dict[str, Any]
    config_path: str
    model: dict[str, Any]
    data: dict[str, Any]
    environment: dict[str, Any]
    seed: int
    timings: dict[str, float] = Field(default_factory=dict)
    checks: dict[str, CheckReport] = Field(default_factory=dict)
    status: str = "pass"

    def worst_findings(self, limit: int = 5) -> list[Finding]:
        from mmaudit.findings import SEVERITY_ORDER

        all_findings = [f for c in self.checks.values() for f in c.findings]
        all_findings.sort(key=lambda f: -SEVERITY_ORDER.get(f.severity, 0))
        return all_findings[:limit]


def json_safe(value: Any) -> Any:
    """Estimates to dicts, numpy scalars to Python, NaN / inf to None."""
    if isinstance(value, Estimate):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class ReportWriter:
    """Stages a report folder in a temporary sibling of ``out`` and renames it at the end."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out).resolve()
        if self.out.exists() and not self.out.is_dir():
            raise MmauditError(f"output path exists and is not a folder: {self.out}")
        if (
            self.out.is_dir()
            and any(self.out.iterdir())
            and not (self.out / "report.json").is_file()
        ):
            raise MmauditError(
                f"output folder {self.out} exists and is not an mmaudit report;"
                " refusing to replace it",
                hint="choose another -o folder",
            )
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.stage = Path(
            tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent)
        )

    def add_check(
        self, name: str, output: CheckOutput, *, redact_ids: bool = False
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Write a check's figures and tables; return their report-relative paths."""
        figures: dict[str, str] = {}
        tables: dict[str, str] = {}
        if output.figures:
            import matplotlib.pyplot as plt

            fdir = self.stage / "figures" / name
            fdir.mkdir(parents=True, exist_ok=True)
            for key, fig in output.figures.items():
                path = fdir / f"{_slug(key)}.png"
                fig.savefig(path, dpi=110, bbox_inches="tight")
                plt.close(fig)
                figures[key] = path.relative_to(self.stage).as_posix()
        if output.tables:
            tdir = self.stage / "tables" / name
            tdir.mkdir(parents=True, exist_ok=True)
            for key, frame in output.tables.items():
                path = tdir / f"{_slug(key)}.csv"
                frame.to_csv(path, index=frame.index.name is not None or not _is_range(frame))
                tables[key] = path.relative_to(self.stage).as_posix()
        if output.per_sample is not None and not redact_ids:
            sdir = self.stage / "samples"
            sdir.mkdir(exist_ok=True)
            path = sdir / f"{_slug(name)}.parquet"
            output.per_sample.to_parquet(path, index=False)
            tables["per_sample"] = path.relative_to(self.stage).as_posix()
        return figures, tables

    def finish(self, report: Report, config_yaml: str) -> Path:
        """Write report.json, config.yaml and the rendered views, then move into place."""
        from mmaudit.render import write_views

        (self.stage / "config.yaml").write_text(config_yaml, encoding="utf-8")
        payload = json_safe(report.model_dump(mode="python"))
        (self.stage / "report.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
        write_views(self.stage, report)
        if self.out.exists():
            trash = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            self.out.rename(trash)
            self.stage.rename(self.out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            self.stage.rename(self.out)
        return self.out

    def abort(self) -> None:
        """Remove the staging folder (the previous report, if any, stays untouched)."""
        shutil.rmtree(self.stage, ignore_errors=True)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:120]


def _is_range(frame: Any) -> bool:
    import pandas as pd

    return isinstance(frame.index, pd.RangeIndex)


def load_report(folder: str | Path) -> Report:
    """Read a report folder's report.json; ReportError with one clear line otherwise."""
    folder = Path(folder)
    path = folder / "report.json"
    if not folder.is_dir():
        raise ReportError(f"report folder not found: {folder}")
    if not path.is_file():
        raise ReportError(f"{folder} is not an mmaudit report (no report.json)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON (truncated or edited?): {exc}") from exc
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise ReportError(
            f"{path}: schema_version {version!r}; this mmaudit reads version {SCHEMA_VERSION}",
            hint="re-run the audit with this version of mmaudit",
        )
    try:
        return Report.model_validate(raw)
    except Exception as exc:
        raise ReportError(f"{path}: malformed report: {str(exc).splitlines()[0]}") from exc
