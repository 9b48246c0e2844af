"""``mmaudit diff``: compare two report folders (no model, no GPU).

Metrics are aligned by check and name. A move is *significant* when a paired
bootstrap says so, or else when the two CIs do not overlap (or, for numbers without a
CI, when the move exceeds the tolerance). Paired bootstraps resample whole patients
(when either report saved a patient column) and need both reports to have saved
per-sample values for the same ids: performance metrics are recomputed from
``samples/predictions.parquet``; a metric that is the mean of a column of a check's
``samples/<check>.parquet`` (``PER_SAMPLE_MEANS``, or a check's own ``per_sample_means``)
is paired on that column. Either way the recomputed value must reproduce the stored
one, or the metric falls back to CI overlap.

The *direction* of a metric (higher / lower is better, or neutral) comes from, in
order: the check class's ``metric_directions``, the table ``METRIC_DIRECTIONS`` here,
and the check's threshold rules (``*_below`` limits mean higher is better, ``*_above``
lower). A *regression* is a worse check status (``error`` ranks worst; a check that
judged something in the base audit, pass included, and was skipped, having tested
nothing, in the new one), a check that the base report ran but the new one lacks (unless
ignored with ``ignore_checks``, the CLI's ``--ignore-check``), a new (or more severe)
warn / fail finding, or a significant move in the bad direction beyond the tolerance (an
unpaired one only when the new value crosses its rule; see ``compare._diff_metric``). Findings of
a check that errored or was skipped in the new audit are not counted as resolved:
nothing re-checked them. Representation comparison (linear CKA per layer, prediction
churn, rank correlation of per-sample maps) uses the compact arrays saved in ``samples/``.

Both folders are read through ``load_report``, which refuses one whose report.json or
per-sample files no longer match the digests recorded when it was written (a hand-edited
AUROC would otherwise be compared as if measured); a report from before digests is
compared with a note that it could not be verified.

The package, by concept: ``compare`` (``diff_reports``: statuses, findings, metrics),
``metrics`` (a metric's stored value, direction, rules, tolerance), ``pairing`` (paired
bootstraps from per-sample values), ``samples`` (what a folder saved per sample),
``representation`` (CKA, churn, map correlation), ``comparability`` (whether two audits can
be compared), ``result`` (diff.json's model) and ``output`` (diff.md, the diff folder).
"""

from mmaudit.report.diff.comparability import comparability, threshold_differences
from mmaudit.report.diff.compare import STATUS_RANK, diff_reports
from mmaudit.report.diff.metrics import (
    METRIC_DIRECTIONS,
    metric_direction,
    parse_tolerances,
    tolerance_for,
)
from mmaudit.report.diff.output import (
    diff_markdown,
    moved_metrics,
    representation_lines,
    write_diff,
)
from mmaudit.report.diff.pairing import PER_SAMPLE_MEANS
from mmaudit.report.diff.result import DiffResult, Direction, FindingChange, MetricDelta
from mmaudit.report.diff.samples import Samples, load_samples

__all__ = [
    "METRIC_DIRECTIONS",
    "PER_SAMPLE_MEANS",
    "STATUS_RANK",
    "DiffResult",
    "Direction",
    "FindingChange",
    "MetricDelta",
    "Samples",
    "comparability",
    "diff_markdown",
    "diff_reports",
    "load_samples",
    "metric_direction",
    "moved_metrics",
    "parse_tolerances",
    "representation_lines",
    "threshold_differences",
    "tolerance_for",
    "write_diff",
]
