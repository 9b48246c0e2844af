"""Are two mmaudit report folders the same audit? ``python scripts/compare_reports.py A B``.

Says "identical" and exits 0 when every metric, finding, status, note, table, figure and
per-sample file of A equals B's, allowing only what differs between two runs of the same
audit: wall-clock timings, the creation time, the folder and config paths, and the digests
that seal those. Otherwise lists each difference (file, key path or line) and exits 1; exit 2
when a folder is not a report.

How it compares:
- ``report.json``: as data, key by key, after dropping ``created``, ``config_path``,
  ``integrity`` (digests), every ``timings`` entry except ``model_calls`` (a count: the
  number of model passes is behaviour) and each check's ``seconds``; in text (notes) a
  duration ``<number> s`` may differ.
- ``index.html``, ``summary.md``, ``junit.xml`` and other text: the same text once both
  folder paths, the config paths, the creation times and durations (``<number> s``) are
  replaced by placeholders; other numbers may differ only where both sides print one of
  their own timings (rounded to 0-4 decimals).
- every other file (figures, tables, per-sample files, config.yaml): byte for byte.

Written for the house redesign (issue 15): save reports before moving code, rerun after,
and this says whether behaviour changed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

TEXT_VIEWS = {".html", ".md", ".xml", ".txt"}
DROPPED_KEYS = {"created", "config_path", "integrity"}
NUMBER = re.compile(r"\d+(?:\.\d+)?")
# a duration written into a note ("8 coalitions ... in 0.02 s (0.003 s per coalition)")
SECONDS = re.compile(r"\b\d+(?:\.\d+)? s\b")
MAX_LISTED = 40


def _load(folder: Path) -> dict[str, Any]:
    path = folder / "report.json"
    if not path.is_file():
        print(f"{folder}: no report.json here; give two mmaudit report folders", file=sys.stderr)
        sys.exit(2)
    return json.loads(path.read_text(encoding="utf-8"))


def _timing_values(report: dict[str, Any]) -> list[float]:
    values = [v for k, v in (report.get("timings") or {}).items() if k != "model_calls"]
    values += [c.get("seconds") for c in (report.get("checks") or {}).values()]
    return [float(v) for v in values if isinstance(v, int | float)]


def _timing_forms(report: dict[str, Any]) -> set[str]:
    """Every way a view may print one of this report's timings."""
    forms: set[str] = set()
    for v in _timing_values(report):
        forms.update(f"{v:.{digits}f}" for digits in range(5))
        forms.update(str(round(v, digits)) for digits in range(1, 5))
        forms.add(repr(v))
    return forms


def _comparable(report: dict[str, Any]) -> dict[str, Any]:
    """report.json without what legitimately differs between two runs of one audit."""
    out = {k: v for k, v in report.items() if k not in DROPPED_KEYS}
    out["timings"] = {"model_calls": (report.get("timings") or {}).get("model_calls")}
    out["checks"] = {
        name: {k: v for k, v in check.items() if k != "seconds"}
        for name, check in (report.get("checks") or {}).items()
    }
    return out


def _json_differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        if list(a) != list(b):
            only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
            if only_a or only_b:
                found.append(f"{where or '.'}: keys only in A {only_a}, only in B {only_b}")
            else:
                found.append(f"{where or '.'}: same keys in another order")
        for key in a:
            if key in b:
                found += _json_differences(a[key], b[key], f"{where}.{key}" if where else key)
        return found
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items in A, {len(b)} in B"]
        found = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found += _json_differences(x, y, f"{where}[{i}]")
        return found
    if isinstance(a, str) and isinstance(b, str) and SECONDS.sub("<s>", a) == SECONDS.sub("<s>", b):
        return []
    if a != b and not (a != a and b != b):  # NaN equals NaN here
        return [f"{where}: A {a!r} != B {b!r}"]
    return []


def _placeholders(text: str, folder: Path, report: dict[str, Any]) -> str:
    swaps = {str(folder.resolve()): "<folder>", str(folder): "<folder>"}
    for key in ("created", "config_path"):
        if isinstance(report.get(key), str) and report[key]:
            swaps[report[key]] = f"<{key}>"
    for old in sorted(swaps, key=len, reverse=True):
        text = text.replace(old, swaps[old])
    return SECONDS.sub("<s>", text)


def _text_differences(rel: str, a: str, b: str, forms_a: set[str], forms_b: set[str]) -> list[str]:
    """Differences between two views, allowing a number to differ only where both sides
    print one of their own timings."""
    lines_a, lines_b = a.splitlines(), b.splitlines()
    if len(lines_a) != len(lines_b):
        return [f"{rel}: {len(lines_a)} lines in A, {len(lines_b)} in B"]
    found = []
    for number, (la, lb) in enumerate(zip(lines_a, lines_b, strict=True), 1):
        if la == lb:
            continue
        if NUMBER.sub("#", la) != NUMBER.sub("#", lb):
            found.append(f"{rel}:{number}: text differs ({_first_gap(la, lb)})")
            continue
        for x, y in zip(NUMBER.findall(la), NUMBER.findall(lb), strict=True):
            if x != y and not (x in forms_a and y in forms_b):
                found.append(f"{rel}:{number}: {x} in A, {y} in B (not a timing)")
                break
    return found


def _first_gap(a: str, b: str) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"A …{a[max(0, i - 30) : i + 50]!r} / B …{b[max(0, i - 30) : i + 50]!r}"


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def compare(folder_a: Path, folder_b: Path) -> list[str]:
    """Every difference between the two report folders beyond timings and paths."""
    report_a, report_b = _load(folder_a), _load(folder_b)
    found = [
        f"report.json: {d}" for d in _json_differences(_comparable(report_a), _comparable(report_b))
    ]
    files_a, files_b = _files(folder_a), _files(folder_b)
    found += [f"{rel}: only in A" for rel in sorted(files_a - files_b)]
    found += [f"{rel}: only in B" for rel in sorted(files_b - files_a)]
    forms_a, forms_b = _timing_forms(report_a), _timing_forms(report_b)
    for rel in sorted(files_a & files_b - {"report.json", ".mmaudit-report"}):
        bytes_a, bytes_b = (folder_a / rel).read_bytes(), (folder_b / rel).read_bytes()
        if bytes_a == bytes_b:
            continue
        if Path(rel).suffix in TEXT_VIEWS:
            text_a = _placeholders(bytes_a.decode("utf-8"), folder_a, report_a)
            text_b = _placeholders(bytes_b.decode("utf-8"), folder_b, report_b)
            found += _text_differences(rel, text_a, text_b, forms_a, forms_b)
        else:
            found.append(f"{rel}: bytes differ ({len(bytes_a)} vs {len(bytes_b)} bytes)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="a report folder (e.g. before a change)")
    parser.add_argument("b", type=Path, help="another report folder (e.g. after it)")
    args = parser.parse_args(argv)
    differences = compare(args.a, args.b)
    n_files = len(_files(args.a))
    n_metrics = sum(len(c.get("metrics") or {}) for c in _load(args.a)["checks"].values())
    if not differences:
        print(
            f"identical: {n_files} files, {n_metrics} metrics; only timings, creation time"
            " and paths differ"
        )
        return 0
    print(f"{len(differences)} difference(s) between {args.a} and {args.b}:")
    for line in differences[:MAX_LISTED]:
        print(f"  {line}")
    if len(differences) > MAX_LISTED:
        print(f"  … and {len(differences) - MAX_LISTED} more")
    return 1


if __name__ == "__main__":
    sys.exit(main())
