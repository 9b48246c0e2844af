"""Stage 4 of ``subgroups``: what the verdict rests on -- the rows of the groups compared,
partial-coverage notes with counts, and the skip reason (with every attribute's group
sizes) when no gap could be judged."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmaudit.checks.subgroups.analysis import GroupResult


@dataclass(frozen=True)
class Coverage:
    """``rows_used``, ``skip_reason`` and ``notes`` (the coverage lines) of the output."""

    rows_used: int
    skip_reason: str | None = None
    notes: list[str] = field(default_factory=list)


def coverage(
    results: list[GroupResult],
    unjudged: dict[str, str],
    *,
    n_rows: int,
    kind: str,
    judged: int,
    min_group_size: int,
    min_class_size: int,
) -> Coverage:
    """The coverage of the gaps: ``judged`` is how many gaps the rules can judge (a
    permutation p and a CI), ``unjudged`` maps each attribute left out before analysis to
    why; attributes analysed without a gap join it with their group sizes."""
    unjudged = dict(unjudged)
    notes: list[str] = []
    skip_reason: str | None = None
    used = np.zeros(n_rows, dtype=bool)
    judged_attrs: list[str] = []
    for res in results:
        sizes = " / ".join(
            f"{label} {size}" for label, size in zip(res.grouping.labels, res.n, strict=True)
        )
        if not res.gaps:
            unjudged[res.grouping.attribute] = f"{sizes} rows"
            continue
        judged_attrs.append(res.grouping.attribute)
        ok = np.flatnonzero(res.judged)
        rows = res.rows[np.isin(res.grouping.codes[res.rows], ok)]
        used[rows] = True
        if len(ok) < len(res.judged) or len(rows) < n_rows:
            small = [
                f"{res.grouping.labels[g]} ({res.reasons[g]})"
                for g in range(len(res.judged))
                if not res.judged[g]
            ]
            notes.append(
                f"{res.grouping.attribute}: {len(ok)} of {len(res.judged)} groups compared,"
                f" on {len(rows)} of {n_rows} rows"
                + (f"; too small to judge: {', '.join(small)}" if small else "")
            )
    need = f"two groups of at least min_group_size = {min_group_size} rows" + (
        f" with at least min_class_size = {min_class_size} positives and negatives each"
        if kind == "binary"
        else ""
    )
    listed = "; ".join(f"{name}: {why}" for name, why in unjudged.items())
    if not judged_attrs:
        skip_reason = f"no gap could be judged: no attribute has {need}" + (
            f" ({listed})" if listed else " (no data.attributes)"
        )
    elif judged == 0:
        skip_reason = (
            f"gaps were computed for {', '.join(judged_attrs)} but none has both a"
            " bootstrap CI and a permutation p to judge (too few usable resamples)"
        )
    if judged_attrs and unjudged:
        notes.append(
            f"gaps judged for {len(judged_attrs)} of {len(judged_attrs) + len(unjudged)}"
            f" attributes; not for {listed} (each needs {need})"
        )
    return Coverage(int(used.sum()), skip_reason, notes)
