"""What the probing check's verdicts rest on: how many rows the probes used, which
attributes and probes are missing (coverage notes with counts) and, when nothing could be
probed, the skip reason naming each attribute's counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mmaudit.checks.probing.records import Attribute, ErasureRow, ProbeRow

if TYPE_CHECKING:
    from mmaudit.checks.contract import AuditContext


@dataclass
class Coverage:
    """``rows_used``, the partial-coverage notes, and the skip reason when no attribute
    could be probed (then there are no coverage notes)."""

    rows_used: int
    lines: list[str] = field(default_factory=list)
    skip_reason: str | None = None


def describe_coverage(
    ctx: AuditContext,
    attributes: list[Attribute],
    unprobed: dict[str, str],
    rows: list[ProbeRow],
    erasures: list[ErasureRow],
    n_layers: int,
) -> Coverage:
    """``rows_used`` (rows of the probed attributes), partial-coverage notes with counts and,
    when nothing could be probed, the skip reason naming each attribute's counts."""
    n = len(ctx.target)
    probed = {r.attribute for r in rows}
    used = np.zeros(n, dtype=bool)
    for attr in attributes:
        if attr.name in probed:
            used |= attr.known
    coverage = Coverage(rows_used=int(used.sum()))
    failed = {a.name: "its probes failed (see the notes)" for a in attributes}
    left_out = {**unprobed, **{k: v for k, v in failed.items() if k not in probed}}
    if not probed:
        if left_out:
            coverage.skip_reason = "no attribute could be probed: " + "; ".join(
                f"{name} ({why})" for name, why in left_out.items()
            )
        else:
            coverage.skip_reason = "no data.attributes to probe (only the positive control ran)"
        return coverage
    total = len(probed) + len(left_out)
    if left_out:
        coverage.lines.append(
            f"{len(probed)} of {total} attributes probed; not probed: "
            + "; ".join(f"{name} ({why})" for name, why in left_out.items())
        )
    for attr in attributes:
        k = int(attr.known.sum())
        if attr.name in probed and k < n:
            coverage.lines.append(
                f"{attr.name} probed on {k} of {n} rows"
                f" ({_left_out_rows(ctx.dataset.attributes[attr.name].to_numpy(), attr)})"
            )
    if len(rows) < len(attributes) * n_layers:
        coverage.lines.append(
            f"{len(rows)} of {len(attributes) * n_layers} attribute x layer probes ran"
            " (the others failed; see the notes)"
        )
    erased = {e.attribute for e in erasures}
    untested = [a.name for a in attributes if a.name in probed and a.name not in erased]
    if untested:
        coverage.lines.append(
            f"use (erasure) tested for {len(probed) - len(untested)} of {len(probed)}"
            f" probed attributes; not for {', '.join(untested)} (see the notes)"
        )
    return coverage


def _left_out_rows(raw: np.ndarray, attr: Attribute) -> str:
    """Which rows an attribute's probes leave out, with counts: no value, rare levels."""
    series = pd.Series(raw)
    missing = int(series.isna().sum())
    parts = [f"{missing} with no value"] if missing else []
    rare = int((~attr.known).sum()) - missing
    if rare and attr.kind == "continuous":
        parts.append(f"{rare} non-finite")
    elif rare:
        kept = set(np.unique(attr.values).tolist())
        levels = series[~series.isna()].astype(str)
        dropped = levels[~levels.isin(kept)].value_counts().sort_index()
        what = ", ".join(f"{lv} (n={c})" for lv, c in dropped.items())
        parts.append(f"{rare} in levels too rare to probe: {what}")
    return "; ".join(parts) or "rows left out"
