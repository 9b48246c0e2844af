"""Check ``performance``: how well the model does on the audited data, with uncertainty."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mmaudit.checks.contract import (
    AuditContext,
    Check,
    CheckOutput,
    Requirements,
    ThresholdRule,
    register,
)
from mmaudit.checks.findings import count_judged
from mmaudit.methods.classification import accuracy, auprc, macro_auprc, macro_auroc
from mmaudit.methods.stats import (
    auroc,
    auroc_bootstrap,
    bootstrap_ci,
    expected_calibration_error,
    multiclass_ece,
)


@register
class PerformanceCheck(Check):
    """Discrimination, calibration and confusion of the audited model on the audited rows.

    What: AUROC, AUPRC, accuracy and expected calibration error (ECE), each with a
    bootstrap CI (resampled by patient when ``data.patient`` is set); per-class
    confusion counts; per-modality missingness counts.
    Why: every other verdict is read against how good the model is; a shortcut
    finding on a model at chance means something else than on one at AUROC 0.95.
    Metrics: ``auroc``, ``auprc``, ``accuracy``, ``ece`` (binary); ``auroc_macro``,
    ``auprc_macro``, ``accuracy``, ``ece`` (top-label) and one-vs-rest ``auroc.<class>``
    (multiclass); ``auroc.<label>``, ``auprc.<label>``, ``accuracy.<label>``,
    ``ece.<label>``, ``prevalence.<label>``, ``auroc_macro``, ``auprc_macro`` and a
    ``confusion_<label>`` table per label (multilabel); ``missing.<modality>``;
    ``missing.all`` (rows with no input at all, noted when any); ``n``,
    ``prevalence``.
    Default thresholds: warn when AUROC < 0.80, fail when < 0.70 (the usual floor of
    acceptable discrimination; calibrated on benchmarks/detection, where random-weight and
    shuffled-label controls reached up to 0.62 -- an untrained network is a fixed function
    of informative inputs, not a coin -- and trained clean models 0.86-0.88); warn when
    ECE > 0.10.
    """

    name = "performance"
    description = "AUROC, AUPRC, accuracy, ECE with bootstrap CIs; confusion; missingness"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n_boot: int = Field(default=1000, ge=50, description="bootstrap resamples for CIs")
        alpha: float = Field(default=0.05, gt=0, lt=1, description="1 - CI level")
        threshold: float = Field(default=0.5, gt=0, lt=1, description="decision threshold (binary)")
        ece_bins: int = Field(default=15, ge=2, description="bins of the calibration error")
        n_confident_errors: int = Field(
            default=10, ge=0, description="rows of the most confident errors table"
        )

    default_thresholds: ClassVar[dict[str, ThresholdRule]] = {
        "auroc_low": ThresholdRule(
            metric="auroc*",
            warn_below=0.80,
            fail_below=0.70,
            message="discrimination is low",
            found="The model tells positive from negative cases apart poorly",
            next_step="check that the audit data match what the model was trained for (label"
            " definition, preprocessing); improve or retrain the model before relying on the"
            " other checks",
        ),
        "ece_high": ThresholdRule(
            metric="ece",
            warn_above=0.10,
            message="probabilities are poorly calibrated",
            found="The model's predicted probabilities do not match how often the disease is"
            " actually present",
            next_step="recalibrate on held-out data (Platt scaling or isotonic regression) and"
            " re-audit; until then, read the scores as a ranking, not as probabilities",
        ),
    }
    requires: ClassVar[Requirements] = Requirements()

    def run(self, ctx: AuditContext) -> CheckOutput:
        p: PerformanceCheck.Params = self.params  # type: ignore[assignment]
        out = CheckOutput()
        sweep = ctx.cache.sweep()
        kind = ctx.config.data.target.kind
        y = ctx.target
        prob = sweep_probs(sweep.logits, kind)
        groups = ctx.groups
        boot = {"groups": groups, "n_boot": p.n_boot, "alpha": p.alpha, "seed": ctx.seed}
        out.metrics["n"] = len(y)
        if kind == "binary":
            score = prob[:, -1] if prob.shape[1] > 1 else prob[:, 0]
            pred = (score >= p.threshold).astype(int)
            out.metrics["prevalence"] = float(np.mean(y))
            out.metrics["auroc"] = auroc_bootstrap(y, score, **boot)
            out.metrics["auprc"] = bootstrap_ci(auprc, y, score, **boot)
            out.metrics["accuracy"] = bootstrap_ci(accuracy, y, pred, **boot)
            out.metrics["ece"] = bootstrap_ci(
                lambda a, b: expected_calibration_error(a, b, p.ece_bins), y, score, **boot
            )
            out.tables["confusion"] = _confusion(y, pred, ctx.dataset.class_names)
            out.per_sample = pd.DataFrame(
                {"id": ctx.dataset.ids, "target": y, "score": score, "pred": pred}
            )
            wrong = np.flatnonzero(pred != y)
            worst = wrong[np.argsort(-np.abs(score[wrong] - y[wrong]))][: p.n_confident_errors]
            out.tables["confident_errors"] = pd.DataFrame(
                {"id": ctx.dataset.ids[worst], "target": y[worst], "score": score[worst]}
            )
        elif kind == "multiclass":
            pred = prob.argmax(1)
            out.metrics["auroc_macro"] = bootstrap_ci(macro_auroc, y, prob, **boot)
            out.metrics["auprc_macro"] = bootstrap_ci(macro_auprc, y, prob, **boot)
            for k, label in enumerate(ctx.dataset.class_names):
                out.metrics[f"auroc.{label}"] = auroc_bootstrap(
                    (y == k).astype(int), prob[:, k], **boot
                )
                out.metrics[f"prevalence.{label}"] = float(np.mean(y == k))
            out.metrics["accuracy"] = bootstrap_ci(accuracy, y, pred, **boot)
            out.metrics["ece"] = bootstrap_ci(
                lambda a, b: multiclass_ece(a, b, p.ece_bins), y, prob, **boot
            )
            out.tables["confusion"] = _confusion(y, pred, ctx.dataset.class_names)
            out.per_sample = pd.DataFrame({"id": ctx.dataset.ids, "target": y, "pred": pred})
        else:
            pred = (prob >= p.threshold).astype(int)
            for k, label in enumerate(ctx.dataset.class_names):
                yk, pk = y[:, k].astype(int), prob[:, k]
                out.metrics[f"auroc.{label}"] = auroc_bootstrap(yk, pk, **boot)
                out.metrics[f"auprc.{label}"] = bootstrap_ci(auprc, yk, pk, **boot)
                out.metrics[f"accuracy.{label}"] = bootstrap_ci(accuracy, yk, pred[:, k], **boot)
                out.metrics[f"ece.{label}"] = bootstrap_ci(
                    lambda a, b: expected_calibration_error(a, b, p.ece_bins), yk, pk, **boot
                )
                out.metrics[f"prevalence.{label}"] = float(np.mean(yk))
                out.tables[f"confusion_{label}"] = _confusion(
                    yk, pred[:, k], [f"not {label}", str(label)]
                )
            per_label = [auroc(y[:, k], prob[:, k]) for k in range(y.shape[1])]
            out.metrics["auroc_macro"] = float(np.nanmean(per_label))
            out.metrics["auprc_macro"] = macro_auprc(y, prob)
        for col, m in enumerate(ctx.dataset.modalities):
            out.metrics[f"missing.{m}"] = int((~ctx.dataset.present[:, col]).sum())
        out.tables["missingness"] = pd.DataFrame(
            {
                "modality": list(ctx.dataset.modalities),
                "missing": [
                    int((~ctx.dataset.present[:, c]).sum())
                    for c in range(len(ctx.dataset.modalities))
                ],
                "n": len(y),
            }
        )
        no_input = int((~ctx.dataset.present.any(axis=1)).sum())
        out.metrics["missing.all"] = no_input
        if no_input:
            out.notes.append(
                f"{no_input} row(s) have none of the model's inputs (every modality missing):"
                " their predictions come from the missing-data stand-ins alone, the same for"
                " each such row, and they are scored like the rest"
            )
        if groups is not None:
            out.notes.append(f"CIs resample {len(np.unique(groups))} patients, not {len(y)} rows")
        out.judged = count_judged(out.metrics, self.default_thresholds)
        out.rows_used = len(y)
        out.skip_reason = (
            "AUROC and ECE are undefined on the audited rows (a class without rows?), so"
            " discrimination and calibration could not be judged"
        )
        return out


def sweep_probs(logits: np.ndarray, kind: str) -> np.ndarray:
    """Probabilities from logits for the target kind (sigmoid or softmax)."""
    from mmaudit.engine.sweep_outputs import logits_to_probs

    if kind == "multiclass" and logits.shape[1] == 1:
        return logits_to_probs(logits, "multilabel")
    if kind == "binary" and logits.shape[1] == 2:
        return logits_to_probs(logits, "multiclass")  # a two-logit softmax head
    return logits_to_probs(logits, "multilabel" if kind != "multiclass" else "multiclass")


def _confusion(y: np.ndarray, pred: np.ndarray, names: list[str]) -> pd.DataFrame:
    from sklearn.metrics import confusion_matrix

    labels = list(range(len(names)))
    cm = confusion_matrix(y, pred, labels=labels)
    return pd.DataFrame(
        cm, index=[f"true {n}" for n in names], columns=[f"pred {n}" for n in names]
    )
