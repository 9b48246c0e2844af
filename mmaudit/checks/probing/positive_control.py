"""The probing check's positive control: the target must be decodable from the
penultimate layer, or the probing pipeline (layer choice, pooling, data) is broken and
"not encoded" means nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mmaudit.checks.contract import CheckOutput, Finding
from mmaudit.checks.probing.predictions import probabilities, task_auroc
from mmaudit.methods.probe_bootstrap import score_estimate
from mmaudit.methods.probe_result import ProbeError
from mmaudit.methods.probes import run_probe
from mmaudit.methods.stats import Estimate

if TYPE_CHECKING:
    from mmaudit.checks.contract import AuditContext
    from mmaudit.checks.probing.check import ProbingCheck


def positive_control(
    ctx: AuditContext, p: ProbingCheck.Params, x: np.ndarray, layer: str, check: str
) -> CheckOutput:
    """Probe the target on ``x`` (the penultimate layer, named ``layer``): its AUROC beside
    the model's own, and an ``error`` finding of ``check`` when even the CI's upper end stays
    below the floor."""
    found = CheckOutput()
    y = ctx.target
    kind = ctx.config.data.target.kind
    columns = [y[:, k] for k in range(y.shape[1])] if y.ndim == 2 else [y]
    scores: list[float] = []
    estimate: Estimate | None = None
    for col in columns:
        try:
            result = run_probe(
                x,
                col,
                "categorical",
                groups=ctx.groups,
                n_folds=p.n_folds,
                inner_folds=p.inner_folds,
                n_permutations=0,
                n_control=0,
                seed=ctx.seed,
            )
        except ProbeError as exc:
            found.notes.append(f"positive control: {exc}")
            continue
        scores.append(result.score)
        if len(columns) == 1:
            estimate = score_estimate(result, ctx.groups, p.n_boot, p.alpha, ctx.seed)
    if not scores:
        return found
    value = float(np.mean(scores))
    probs = probabilities(ctx.cache.sweep().logits, kind)
    model_auroc = task_auroc(y, probs, kind)
    found.metrics["positive_control.auroc"] = estimate or Estimate(value, n=len(y))
    found.metrics["positive_control.model_auroc"] = model_auroc
    floor = min(p.positive_control_min, model_auroc - p.positive_control_margin)
    # "the pipeline is broken" is a strong claim: it needs the whole CI below the floor,
    # not a point estimate that a small test split puts just under it by chance
    best = estimate.ci_high if estimate is not None and estimate.ci_high is not None else value
    passed = best >= floor
    found.metrics["positive_control.passed"] = int(passed)
    if not passed:
        found.findings.append(
            Finding(
                check=check,
                rule="positive_control",
                severity="error",
                message=(
                    "A probe cannot read the diagnosis itself from the layer next to the"
                    f" output ('{layer}'): the probing pipeline is in doubt, so its 'not"
                    " encoded' results do not show that anything is absent"
                ),
                evidence=(
                    f"probe AUROC for the target = {value:.2f} (CI upper end {best:.2f});"
                    f" the model itself reaches {model_auroc:.2f}; needed at least {floor:.2f}"
                ),
                next_step=(
                    "check the layer the probes read (model.layers: it should be the"
                    " features the prediction head reads), the pooling of its output and"
                    " the audit data's labels, then run the audit again; until then, read"
                    " only the probing findings that do flag something"
                ),
                detail=(
                    "positive control failed: a probe for the target on the penultimate"
                    " layer stays below the floor (min(positive_control_min, model AUROC -"
                    " positive_control_margin)) even at its CI's upper end; the probing"
                    " pipeline (layer choice, pooling, data) is in doubt, so 'not encoded'"
                    " results are not evidence of absence"
                ),
                figure="probe_heatmap",
                metric="positive_control.auroc",
                value=value,
                threshold=floor,
            )
        )
    return found
