"""Stage 5 of ``subgroups``: its tables -- ``groups`` (every group's metrics with CIs and
whether it is judged) and ``gaps`` (every gap with its CI, Holm-corrected p and the
groups it lies between)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from mmaudit.checks.subgroups.analysis import GroupResult
from mmaudit.checks.subgroups.group_metrics import GAP_METRICS
from mmaudit.methods.stats import percentile_interval


def group_table(results: list[GroupResult], n_boot: int, alpha: float) -> pd.DataFrame:
    """One row per (attribute, group): n, positives, each metric with its percentile CI,
    and whether (and why not) the group is judged."""
    records: list[dict[str, Any]] = []
    for res in results:
        for g, label in enumerate(res.grouping.labels):
            rec: dict[str, Any] = {
                "attribute": res.grouping.attribute,
                "group": label,
                "n": res.n[g],
                "positives": res.n_pos[g] if res.n_pos[g] >= 0 else None,
            }
            for m in GAP_METRICS:
                lo, hi = percentile_interval(res.boot[m][:, g], alpha, n_boot / 2) or (None, None)
                rec[m], rec[f"{m}_ci_low"], rec[f"{m}_ci_high"] = res.values[m][g], lo, hi
            rec["judged"] = res.judged[g]
            rec["why_not_judged"] = res.reasons[g]
            records.append(rec)
    return pd.DataFrame(records)


def gap_table(results: list[GroupResult]) -> pd.DataFrame:
    """One row per (attribute, gap metric): the gap, its CI, its Holm-corrected permutation
    p and the highest and lowest group."""
    records = []
    for res in results:
        for m, e in res.gaps.items():
            pair = res.pairs.get(m, (-1, -1))
            labels = res.grouping.labels
            records.append(
                {
                    "attribute": res.grouping.attribute,
                    "metric": m,
                    "gap": e.value,
                    "ci_low": e.ci_low,
                    "ci_high": e.ci_high,
                    "p_perm_holm": e.null_p,
                    "highest": labels[pair[0]] if pair[0] >= 0 else "",
                    "lowest": labels[pair[1]] if pair[1] >= 0 else "",
                }
            )
    return pd.DataFrame(records)
