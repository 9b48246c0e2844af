"""The per-sample outputs of the ``saliency`` check: one table row per image row (label,
explained class, score, attribute levels, every location statistic, IG delta, occlusion
effects, cluster), and 16x16 map thumbnails in dataset order for ``mmaudit diff``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mmaudit.checks.contract import CheckOutput
from mmaudit.checks.saliency.clusters import Clusters
from mmaudit.checks.saliency.maps import Maps, downsample
from mmaudit.checks.saliency.occlusion import Occlusion
from mmaudit.checks.saliency.setting import Setting
from mmaudit.checks.saliency.subgroups import Levels


def per_sample_outputs(
    s: Setting, main: Maps, levels: Levels, occ: Occlusion | None, clusters: Clusters
) -> CheckOutput:
    """The ``per_sample`` table and the ``map.<m>`` arrays (both private: ids and
    image-like thumbnails)."""
    out = CheckOutput()
    rows = main.rows
    ds = s.ds
    assert main.logits is not None
    frame: dict[str, Any] = {
        "id": ds.ids[rows],
        "target": s.labels(rows),
        "explained_class": s.cls_all[rows],
        "score": s.positive_score(main.logits)
        if main.logits.shape[1] == 1 or s.kind != "multiclass"
        else main.logits.argmax(1),
    }
    groups = s.ctx.groups
    if groups is not None:
        frame["patient"] = groups[rows]
    for attr, lab in levels.labels.items():
        frame[attr] = lab
    for m in s.methods:
        for k, v in main.stats[m].items():
            if k.endswith("_chance"):
                continue
            frame[f"{m}.{k}"] = v
    for k in ("off_roi_chance", "border_chance"):
        for m in s.methods:
            if k in main.stats[m]:
                frame[k] = main.stats[m][k]
                break
    if main.ig_delta is not None:
        frame["ig.delta"] = main.ig_delta
    if occ is not None:
        for c in occ.per_sample.columns:
            frame[f"occlusion.{c}"] = occ.per_sample[c].to_numpy()
    frame["cluster"] = clusters.of
    table = pd.DataFrame(frame)
    out.tables["per_sample"] = table
    out.per_sample = table
    out.private.add("per_sample")
    out.private.add("arrays")  # the 16x16 map.* arrays are image-like thumbnails
    n = len(ds)
    for m, t in main.thumbs.items():
        small = downsample(t, 16) if t.shape[1] > 16 else t
        small = np.where(np.isfinite(t).all(axis=(1, 2))[:, None, None], small, np.nan)
        full = np.full((n, *small.shape[1:]), np.nan, dtype=np.float16)
        full[rows] = small.astype(np.float16)
        out.arrays[f"map.{m}"] = full
    return out
