"""What the check's output says about the rows: the per-sample table (cluster and first
two principal coordinates of each row in every analysed layer) and what the verdict rests
on (how many results the rules judge, on how many rows, and why nothing could be judged)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mmaudit.checks.embedding.factors import NUISANCE_HINTS
from mmaudit.checks.findings import count_judged

if TYPE_CHECKING:
    from mmaudit.checks.contract import MetricValue, ThresholdRule
    from mmaudit.checks.embedding.factors import Factor
    from mmaudit.checks.embedding.layer import LayerResult


@dataclass(frozen=True)
class Coverage:
    """``judged`` (the identity margins and nuisance-pure cluster shares the rules judge),
    ``rows_used`` (rows of the analysed layers), a coverage note per layer analysed on part
    of the rows, and the skip reason for when nothing could be judged."""

    judged: int
    rows_used: int
    notes: list[str]
    skip_reason: str


def per_sample_frame(ids: np.ndarray, layers: dict[str, LayerResult]) -> pd.DataFrame:
    """One row per dataset row: its id, then per layer its cluster (-1: none or not
    analysed) and its first two principal coordinates (NaN: not analysed)."""
    n = len(ids)
    frame = pd.DataFrame({"id": ids})
    for name, res in layers.items():
        if res.clusters is not None:
            col = np.full(n, -1, dtype=np.int64)
            col[res.rows] = res.clusters
            frame[f"cluster.{name}"] = col
        if res.pca is not None:
            for j in range(min(2, res.pca.shape[1])):
                col = np.full(n, np.nan)
                col[res.rows] = res.pca[:, j]
                frame[f"pc{j + 1}.{name}"] = col
    return frame


def coverage(
    layers: dict[str, LayerResult],
    nuisance: list[Factor],
    n: int,
    metrics: dict[str, MetricValue],
    rules: dict[str, ThresholdRule],
) -> Coverage:
    """What the verdict rests on: the results in ``metrics`` that ``rules`` judge, the rows
    of the analysed layers, a coverage note per layer analysed on part of the rows, and the
    skip reason when nothing could be judged (no nuisance attribute: kNN lifts and
    silhouettes alone are descriptive)."""
    judged = count_judged(metrics, rules)
    notes = []
    used = np.zeros(n, dtype=bool)
    for name, res in layers.items():
        used[res.rows] = True
        if len(res.rows) < n:
            notes.append(
                f"layer {name}: analysed on {len(res.rows)} of {n} rows (the others lack that"
                " modality or have a non-finite embedding; the excluded_rows table names them)"
            )
    if not nuisance:
        skip_reason = (
            "no nuisance attribute to test for a dataset-identity axis: none is named like a"
            f" site / scanner ({', '.join(NUISANCE_HINTS)}) or has two levels here; set"
            " params.nuisance_attributes (kNN lifts and silhouettes are reported, not judged)"
        )
    else:
        skip_reason = (
            f"no identity margin or cluster purity could be computed for"
            f" {', '.join(f.name for f in nuisance)} (no label agreement to compare with;"
            " see the notes)"
        )
    return Coverage(judged, int(used.sum()), notes, skip_reason)
