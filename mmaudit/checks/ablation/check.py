"""Check ``ablation``: how much each modality contributes, how modalities interact, and what
happens when one is missing."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from mmaudit.checks.contract import (
    AuditContext,
    Check,
    CheckOutput,
    Finding,
    Requirements,
    ThresholdRule,
    register,
)
from mmaudit.checks.findings import count_judged
from mmaudit.engine.cache import logits_to_probs
from mmaudit.engine.data import Batch
from mmaudit.methods.shapley import (
    coalition_members,
    emap_projection,
    interaction_index,
    pair_names,
    shapley_values,
)
from mmaudit.methods.stats import Estimate, adjust_pvalues, bootstrap_groups

MetricName = Literal["auroc", "auprc", "accuracy", "balanced_accuracy", "f1", "log_loss", "ece"]
METRICS: tuple[str, ...] = (
    "auroc",
    "auprc",
    "accuracy",
    "balanced_accuracy",
    "f1",
    "log_loss",
    "ece",
)
LOWER_IS_BETTER = frozenset({"log_loss", "ece"})
MAX_MODALITIES = 6
# a pair whose joint removal costs less than this (metric units) is too unimportant for a
# redundancy ratio to mean anything
MIN_JOINT_DROP = 0.01
# per-sample logit interactions smaller than this fraction of the typical |logit| are float
# rounding (float32 eps is 1.2e-7; a game value sums a few rounded logits), not interaction
LOGIT_INTERACTION_RTOL = 1e-5
#: how each removal strategy leaves a removed modality, in words for titles and notes
REMOVAL_WORDS: dict[str, str] = {
    "permute": "shuffled across patients",
    "zero": "zeroed",
    "mean": "set to the dataset mean",
    "missing": "marked missing (the model's own path)",
}


# ----------------------------------------------------------------------------- scoring


def _binary_table(
    y: np.ndarray, p: np.ndarray, which: tuple[str, ...], threshold: float, bins: int
) -> np.ndarray:
    """Binary metrics of every row of ``p`` (C, n) against ``y`` (n,): (C, len(which)).

    Vectorised over rows because the bootstrap evaluates every variant on every resample;
    undefined values (one class) are NaN, never an exception. One sort per row serves both
    AUROC (Mann-Whitney with average ranks for ties, = sklearn) and AUPRC (sklearn's
    step-wise average precision, one step per distinct score); ECE uses equal-width bins
    as ``stats.expected_calibration_error``.
    """
    y = np.asarray(y).astype(bool)
    c, n = p.shape
    n1 = int(y.sum())
    n0 = n - n1
    out = np.full((c, len(which)), np.nan)
    if n == 0:
        return out
    if {"accuracy", "balanced_accuracy", "f1"} & set(which):
        pred = p >= threshold
        tp = (pred & y).sum(1)
        fp = (pred & ~y).sum(1)
        fn = n1 - tp
    if n1 and {"auroc", "auprc"} & set(which):
        order = np.argsort(p, axis=1)
        ps = np.take_along_axis(p, order, 1)
        ys = y[order]
        idx = np.broadcast_to(np.arange(n), (c, n))
        is_start = np.ones((c, n), dtype=bool)
        is_start[:, 1:] = ps[:, 1:] != ps[:, :-1]
        start = np.maximum.accumulate(np.where(is_start, idx, 0), axis=1)
    for k, name in enumerate(which):
        if name == "auroc":
            if n1 and n0:
                is_end = np.ones((c, n), dtype=bool)
                is_end[:, :-1] = is_start[:, 1:]
                end = np.minimum.accumulate(np.where(is_end, idx, n)[:, ::-1], axis=1)[:, ::-1]
                ranks = (start + end) / 2.0 + 1.0
                out[:, k] = ((ranks * ys).sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)
        elif name == "auprc":
            if n1:
                cum = np.cumsum(ys, axis=1)
                before = np.take_along_axis(cum - ys, start, 1)  # positives below the tie group
                precision = (n1 - before) / (n - start)
                out[:, k] = (precision * ys).sum(1) / n1
        elif name == "accuracy":
            out[:, k] = (pred == y).mean(1)
        elif name == "balanced_accuracy":
            if n1 and n0:
                tn = (~pred & ~y).sum(1)
                out[:, k] = (tp / n1 + tn / n0) / 2
        elif name == "f1":
            den = 2 * tp + fp + fn
            out[:, k] = np.where(den > 0, 2 * tp / np.maximum(den, 1), np.nan)
        elif name == "log_loss":
            eps = np.finfo(float).eps
            q = np.clip(p, eps, 1 - eps)
            out[:, k] = -np.where(y, np.log(q), np.log1p(-q)).mean(1)
        elif name == "ece":
            out[:, k] = _binned_ece(y, p, bins)
    return out


def _binned_ece(correct: np.ndarray, conf: np.ndarray, bins: int) -> np.ndarray:
    """Row-wise ECE of (C, n) confidences; ``correct`` is (n,) or (C, n)."""
    c, n = conf.shape
    idx = np.minimum((conf * bins).astype(np.int64), bins - 1) + (np.arange(c) * bins)[:, None]
    hits = np.broadcast_to(correct, conf.shape).astype(float)
    acc = np.bincount(idx.ravel(), weights=hits.ravel(), minlength=c * bins)
    conf_sum = np.bincount(idx.ravel(), weights=conf.ravel(), minlength=c * bins)
    return np.abs(acc - conf_sum).reshape(c, bins).sum(1) / n


class Scorer:
    """Every metric of this check, for a stack of predictions (one row per model variant).

    ``probs`` is (C, n) positive-class probabilities for a binary target, (C, n, K) class
    (multiclass, softmax) or label (multilabel, sigmoid) probabilities otherwise. Multiclass
    AUROC / AUPRC / F1 are macro one-vs-rest, ECE is top-label; multilabel metrics are the
    mean over labels. Lower-is-better metrics (log loss, ECE) are reported as they are;
    :meth:`oriented` flips their sign so that "higher = better" holds for the game values.
    """

    def __init__(self, y: np.ndarray, kind: str, threshold: float = 0.5, bins: int = 15) -> None:
        self.y = np.asarray(y)
        self.kind = kind
        self.threshold = threshold
        self.bins = bins

    def table(
        self, probs: np.ndarray, rows: np.ndarray | None = None, which: tuple[str, ...] = METRICS
    ) -> np.ndarray:
        """(C, len(which)) metric values, on ``rows`` of the data when given (a resample)."""
        y = self.y if rows is None else self.y[rows]
        p = probs if rows is None else probs[:, rows]
        if self.kind == "binary":
            return _binary_table(y, p, which, self.threshold, self.bins)
        if self.kind == "multilabel":
            per_label = [
                _binary_table(y[:, k], p[:, :, k], which, self.threshold, self.bins)
                for k in range(y.shape[1])
            ]
            return _nanmean(np.stack(per_label), axis=0)
        return self._multiclass(y.astype(np.int64), p, which)

    def _multiclass(self, y: np.ndarray, p: np.ndarray, which: tuple[str, ...]) -> np.ndarray:
        c, n, k_classes = p.shape
        out = np.full((c, len(which)), np.nan)
        if n == 0:
            return out
        pred = p.argmax(2)
        for k, name in enumerate(which):
            if name in ("auroc", "auprc"):
                per = [
                    _binary_table((y == j).astype(int), p[:, :, j], (name,), 0.5, self.bins)[:, 0]
                    for j in range(k_classes)
                ]
                out[:, k] = _nanmean(np.stack(per), axis=0)
            elif name == "accuracy":
                out[:, k] = (pred == y).mean(1)
            elif name == "balanced_accuracy":
                recalls = [
                    ((pred == j) & (y == j)).sum(1) / (y == j).sum()
                    for j in range(k_classes)
                    if (y == j).any()
                ]
                out[:, k] = np.mean(recalls, axis=0)
            elif name == "f1":
                scores = []
                for j in range(k_classes):
                    tp = ((pred == j) & (y == j)).sum(1)
                    den = 2 * tp + ((pred == j) & (y != j)).sum(1) + ((pred != j) & (y == j)).sum(1)
                    scores.append(np.where(den > 0, 2 * tp / np.maximum(den, 1), np.nan))
                out[:, k] = _nanmean(np.stack(scores), axis=0)
            elif name == "log_loss":
                eps = np.finfo(float).eps
                picked = np.take_along_axis(p, y[None, :, None], 2)[:, :, 0]
                out[:, k] = -np.log(np.clip(picked, eps, 1.0)).mean(1)
            elif name == "ece":
                out[:, k] = _binned_ece(pred == y, p.max(2), self.bins)
        return out

    @staticmethod
    def oriented(values: Any, which: tuple[str, ...] | str) -> Any:
        """``values`` with the sign of lower-is-better metrics flipped: ``which`` names the
        metric of every entry of the last axis, or the one metric of all of ``values``."""
        if isinstance(which, str):
            return -values if which in LOWER_IS_BETTER else values
        sign = np.array([-1.0 if m in LOWER_IS_BETTER else 1.0 for m in which])
        return np.asarray(values) * sign


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """Mean ignoring NaN; NaN (no warning) where every entry is NaN."""
    ok = np.isfinite(x)
    count = ok.sum(axis)
    total = np.where(ok, x, 0.0).sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def predicted_probs(logits: np.ndarray, kind: str) -> np.ndarray:
    """What :class:`Scorer` takes for one variant: (n,) binary, (n, K) otherwise (float64, so
    that large logits do not saturate into artificial ties)."""
    logits = np.asarray(logits, dtype=np.float64)
    if kind == "binary":
        probs = logits_to_probs(logits)
        return probs[:, -1] if probs.shape[1] > 1 else probs[:, 0]
    if kind == "multiclass" and logits.shape[1] > 1:
        return logits_to_probs(logits, "multiclass")
    return logits_to_probs(logits, "multilabel")


def output_value(logits: np.ndarray, kind: str, reference: np.ndarray | None = None) -> np.ndarray:
    """The per-sample scalar that per-sample Shapley attributes (MM-SHAP style).

    Binary: the log-odds of the positive class. Multiclass: the log-probability of the
    class the full model predicts (``reference``). Multilabel: the mean label logit.
    """
    if kind == "binary":
        return logits[:, 0] if logits.shape[1] == 1 else logits[:, -1] - logits[:, 0]
    if kind == "multiclass" and logits.shape[1] > 1:
        z = logits - logits.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        ref = logits.argmax(1) if reference is None else reference
        return logp[np.arange(len(logp)), ref]
    return logits.mean(1)


# ------------------------------------------------------------------------ estimates


def estimate_from_boot(
    value: float, boot: np.ndarray, n: int, alpha: float, with_p: bool = False
) -> Estimate:
    """Percentile CI from bootstrap replicates (NaN replicates skipped; under half valid: no
    CI); with ``with_p`` also the two-sided bootstrap p-value for "= 0", computed exactly as
    ``stats.paired_bootstrap_diff`` does, so that a drop read from the joint bootstrap table
    equals the paired bootstrap of the two variants for the same seed."""
    value = float(value)
    boot = np.asarray(boot, dtype=float)
    valid = boot[np.isfinite(boot)]
    if not np.isfinite(value) or valid.size == 0 or valid.size < boot.size / 2:
        return Estimate(value, None, None, n)
    lo, hi = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    p = None
    if with_p:
        b = valid.size
        p_le = (1 + np.count_nonzero(valid <= 0)) / (1 + b)
        p_ge = (1 + np.count_nonzero(valid >= 0)) / (1 + b)
        p = float(min(1.0, 2 * min(p_le, p_ge)))
    return Estimate(value, float(lo), float(hi), n, p)


def _adjust(estimates: dict[str, Estimate], method: str) -> dict[str, Estimate]:
    """The same estimates with their null p-values adjusted as one family."""
    names = [k for k, e in estimates.items() if e.null_p is not None]
    if not names or method == "none":
        return estimates
    adjusted = adjust_pvalues([estimates[k].null_p for k in names], method)  # type: ignore[misc]
    out = dict(estimates)
    for k, p in zip(names, adjusted, strict=True):
        out[k] = dataclasses.replace(estimates[k], null_p=float(p))
    return out


# ------------------------------------------------------------------------------ check


@register
class AblationCheck(Check):
    """How much each modality contributes, how modalities interact, what missing data costs.

    What: every coalition of modalities (all 2^M, M <= 6) is evaluated with the other
    modalities removed -- permuted across samples (default; the Perceptual Score protocol of
    Gat et al. 2021), zeroed / emptied, set to the dataset mean, or marked missing the
    model's own way (presence mask / learned missing token, where the model takes
    ``present``). Removal happens at the encoder output when ``model.layers`` names every
    modality encoder (cached encoder outputs are reused, only fusion and head run again),
    else at the input (noted). From the coalition table: AUROC, AUPRC, accuracy, balanced
    accuracy, F1, log loss and ECE of the full model, of each modality removed (leave-one-
    out, LOO) and of each modality alone (keep-one-in, KOI), with drops against the full
    model; exact Shapley values of the chosen metric and their shares; per-sample Shapley
    values of the logit (MM-SHAP-style shares, efficiency exact); the pairwise Shapley
    interaction index; a redundancy ratio; EMAP (Hessel & Lee 2020), the model's best
    additive projection, scored like the model; metric vs drop rate 0-100 % per modality;
    the metric per missingness pattern present in the data. CIs come from one joint
    bootstrap of all variants (resampling patients when ``data.patient`` is set), so every
    drop is a paired comparison; p-values are adjusted per family (Holm by default).
    Why: "fusing X-ray, report and labs beats any one of them" is the claim of most
    multimodal models; many lean on one modality, ignore another, or merely add them up,
    and real data misses modalities at rates that may break them.
    Metrics (``<k>`` any of auroc, auprc, accuracy, balanced_accuracy, f1, log_loss, ece;
    ``<m>`` a modality; the unprefixed ones are in the units of the chosen ``metric``, with
    lower-is-better metrics sign-flipped so that positive = helps):
    ``full.<k>``; ``loo.<m>.<k>``, ``koi.<m>.<k>`` and their ``..._drop`` (positive = worse
    than the full model, paired CI, adjusted ``null_p``); ``drop.loo.<m>``, ``drop.koi.<m>``;
    ``shapley.<m>``, ``shapley.total`` (full minus empty coalition), ``shapley.empty`` (the
    metric with every modality removed), ``share.<m>`` (fraction of the total);
    ``logit_shapley.<m>`` (mean |per-sample value|), ``logit_share.<m>`` (mean MM-SHAP
    share), ``logit_shapley.efficiency_error``; ``interaction.<a>_x_<b>``
    (negative = redundancy, positive = synergy), ``logit_interaction.<a>_x_<b>`` (mean
    |per-sample interaction| over mean sum |per-sample values|; per-sample interactions
    below ``LOGIT_INTERACTION_RTOL`` x the mean |logit| are float rounding and count as 0),
    ``redundancy.<a>_x_<b>``
    (1 - max(LOO drop a, LOO drop b) / drop of removing both, under the neutral removal;
    1 = either alone suffices);
    ``emap.<k>``, ``emap.gap`` (metric of the model minus that of its additive projection,
    built from ``emap_partners`` reference samples instead of all N^2 pairs);
    ``robustness.<m>.realistic_drop`` (at ``robustness.realistic_rate``);
    ``pattern.<present modalities>.n`` / ``.metric``; ``n``, ``n_modalities``; the strings
    ``metric``, ``level`` and ``strategy`` (what actually ran, after any fallback).
    Default thresholds: warn when a modality's LOO drop has CI upper bound < 0.01 (ignored);
    warn when one modality's Shapley share has CI lower bound > 0.8 (carries nearly
    everything; shares are undefined, and never judged, when the CI of ``shapley.total``
    contains 0); warn when a pair's redundancy > 0.9; warn / fail when the drop at the
    realistic missing rate > 0.05 / 0.10 with adjusted p < 0.05; warn when the EMAP gap's CI
    upper bound < 0.005 (no cross-modal interaction used, which a model built to fuse should
    show; a late-fusion model is additive by design, so its gap is reported as
    ``emap.late_fusion_gap`` with a note instead; a concat fusion feeding one linear head is
    additive by construction too, and a note finding says so beside the warning, as it does
    when every per-sample logit interaction is 0 numerically).
    Reading: ``share.<m>`` is a share of *performance* (the metric across patients, removed
    modalities permuted by default), not the attribution check's ``shares.<m>`` (a share of
    each sample's |logit attribution|); ``koi.*`` keeps one modality with the others
    removed as ``strategy`` (permuted: present but another patient's), so it is not "the
    modality alone"; the robustness curve at 100 % uses the missing path / mean instead, so
    its drop differs from ``drop.loo`` (a note gives both per modality).
    Removal details: 'mean' at the input is the per-column mean of the audited labs over
    the rows that have them (in the model's input space) and the mean image; a report has no
    mean, so text 'mean' at the input is the empty report (noted). At the encoder level
    'mean' is the mean encoder output over the samples that have the modality. The
    redundancy ratio always uses a neutral removal (the model's missing path if it takes a
    presence mask, else 'mean'): a permuted modality is a competing signal, under which
    "either alone suffices" cannot show. Per-sample values under 'permute' average
    ``logit_permutations`` permutations at the encoder level (one at the input level). The
    robustness curves by default take the model's missing path, else impute the mean.
    """

    name = "ablation"
    description = (
        "modality contributions: leave-one-out / keep-one-in, exact Shapley, interactions,"
        " EMAP, missing-modality robustness"
    )

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        metric: MetricName = Field(
            default="auroc", description="metric of the Shapley game, interactions, robustness"
        )
        strategy: Literal["permute", "zero", "mean", "missing"] = Field(
            default="permute", description="how a modality is removed from a coalition"
        )
        level: Literal["auto", "encoder", "input"] = Field(
            default="auto", description="remove at the encoder output (auto: where possible)"
        )
        n_boot: int = Field(default=1000, ge=50, description="bootstrap resamples for CIs")
        alpha: float = Field(default=0.05, gt=0, lt=1, description="1 - CI level")
        p_adjust: Literal["holm", "bh", "by", "none"] = Field(
            default="holm", description="multiplicity control within each family of tests"
        )
        threshold: float = Field(default=0.5, gt=0, lt=1, description="decision threshold")
        ece_bins: int = Field(default=15, ge=2, description="bins of the calibration error")
        emap: bool = Field(default=True, description="compute EMAP (cross-sample evaluations)")
        emap_partners: int = Field(
            default=64, ge=2, description="reference samples per EMAP projection (encoder level)"
        )
        emap_partners_input: int = Field(
            default=8, ge=2, description="the same at input level (each reruns the whole model)"
        )
        logit_permutations: int = Field(
            default=8,
            ge=1,
            description="permutations averaged into the per-sample (MM-SHAP) values under"
            " 'permute' at the encoder level (the input level uses one: each reruns the model)",
        )
        robustness_strategy: Literal["auto", "permute", "zero", "mean", "missing"] = Field(
            default="auto",
            description="removal for the robustness curves (auto: the model's own missing path"
            " if it takes a presence mask, else the dataset mean, i.e. imputation)",
        )
        robustness_steps: int = Field(default=11, ge=2, description="drop rates from 0 to 1")
        robustness_draws: int = Field(default=20, ge=1, description="random drop patterns per rate")
        realistic_missing_rate: float = Field(
            default=0.2, gt=0, lt=1, description="drop rate judged by the robustness threshold"
        )

    default_thresholds: ClassVar[dict[str, ThresholdRule]] = {
        "modality_ignored": ThresholdRule(
            metric="drop.loo.*",
            statistic="ci_high",
            warn_below=0.01,
            message="removing this modality changes nothing within the CI: the model ignores it"
            " (or another modality makes it redundant, see redundancy.*)",
        ),
        "one_modality_dominates": ThresholdRule(
            metric="share.*",
            statistic="ci_low",
            warn_above=0.8,
            message="one modality carries nearly all of the model's performance",
        ),
        "redundant_pair": ThresholdRule(
            metric="redundancy.*",
            warn_above=0.9,
            message="either modality of this pair alone gives what both give",
        ),
        "missing_modality_drop": ThresholdRule(
            metric="robustness.*.realistic_drop",
            warn_above=0.05,
            fail_above=0.10,
            max_p=0.05,
            message="performance drops sharply when this modality is missing at a realistic rate",
        ),
        "no_interaction": ThresholdRule(
            metric="emap.gap",
            statistic="ci_high",
            warn_below=0.005,
            message="the model's additive projection (EMAP) does as well as the model: it adds"
            " up one contribution per modality and uses no cross-modal interaction (a note says"
            " when the architecture cannot express one)",
        ),
    }
    requires: ClassVar[Requirements] = Requirements(min_modalities=2)
    layers_wanted: ClassVar[list[str]] = ["image", "text", "tabular"]

    # ------------------------------------------------------------------ run
    def run(self, ctx: AuditContext) -> CheckOutput:
        p: AblationCheck.Params = self.params  # type: ignore[assignment]
        out = CheckOutput()
        ds = ctx.dataset
        kind = ctx.config.data.target.kind
        y = ctx.target
        n = len(y)
        scorer = Scorer(y, kind, p.threshold, p.ece_bins)
        base = ctx.cache.sweep().logits
        out.metrics["n"] = n
        out.metrics["metric"] = p.metric

        players, absent = self._players(ds, out)
        level = self._level(ctx, players, p.level, out)
        strategy = self._strategy(ctx, p.strategy, out)
        out.metrics["level"] = level
        out.metrics["strategy"] = strategy
        out.metrics["n_modalities"] = len(players)
        patterns = self._patterns(ctx, scorer, predicted_probs(base, kind), p, out)
        out.rows_used = n
        if len(players) < 2:
            out.notes.append(
                f"nothing to ablate: {len(players)} modality with data"
                f" ({', '.join(players) or 'none'}); absent for every sample: {', '.join(absent)}"
            )
            out.metrics.update(self._full_only(scorer, base, kind, ctx, p))
            out.judged = 0
            out.skip_reason = (
                f"nothing to ablate: only {len(players)} modality has data"
                f" ({', '.join(players) or 'none'}); absent for every audited row:"
                f" {', '.join(absent)}"
            )
            return out

        # --- every coalition, from the cache (memoised; at the encoder level all coalitions
        # run in one pass on the fusion head, from the cached encoder outputs)
        m_count = len(players)
        masks = np.arange(1 << m_count)
        start = time.perf_counter()
        coal_logits = [
            r.logits for r in ctx.cache.ablated_many(_removals(players, masks, strategy), level)
        ]
        took = time.perf_counter() - start
        out.notes.append(
            f"{len(masks)} coalitions of {', '.join(players)} at the {level} level"
            f" (removal: {strategy}) in {took:.2f} s ({took / len(masks):.3f} s per coalition,"
            " cached sweeps included)"
        )
        if strategy == "mean" and level == "input" and "text" in players:
            out.notes.append(
                "'mean' removal of the report at the input is the empty report (a report has"
                " no mean); images and labs take their dataset mean"
            )
        values = self._sample_game(ctx, coal_logits, players, masks, strategy, level, p, out)
        probs = np.stack([predicted_probs(lg, kind) for lg in coal_logits])

        # --- redundancy needs a neutral removal: a permuted modality is a competing signal,
        # not an absent one, so "either alone suffices" cannot show under 'permute'
        neutral = "missing" if "present" in ctx.adapter.keywords else "mean"
        if neutral == strategy:
            neutral_rows = {int(s): int(s) for s in masks}
            neutral_probs = np.empty((0, *probs.shape[1:]))
        else:
            full_mask = int(masks[-1])
            wanted = sorted(
                {full_mask & ~(1 << j) for j in range(m_count)}
                | {full_mask & ~(1 << j) & ~(1 << k) for j, k, _ in pair_names(players)}
            )
            extra = ctx.cache.ablated_many(_removals(players, np.array(wanted), neutral), level)
            neutral_probs = np.stack([predicted_probs(r.logits, kind) for r in extra])
            first = len(masks) + (1 if p.emap else 0)
            neutral_rows = {full_mask: full_mask}
            neutral_rows.update({s: first + i for i, s in enumerate(wanted)})
        out.notes.append(
            f"redundancy.* is computed with the modalities removed as '{neutral}'"
            + (
                " (the model's own missing-modality path)"
                if neutral == "missing"
                else f" (the dataset mean, at the {level} level)"
            )
            + ": a neutral removal, so that a modality whose information another one carries"
            " shows as redundant"
        )

        # --- EMAP: the additive projection, as one more variant in the bootstrap table
        emap_probs = None
        if p.emap:
            partners = p.emap_partners if level == "encoder" else p.emap_partners_input
            projected, note = emap_logits(ctx, players, level, partners)
            out.notes.append(note)
            emap_probs = predicted_probs(projected, kind)
            variants = np.concatenate([probs, emap_probs[None], neutral_probs])
        else:
            variants = np.concatenate([probs, neutral_probs])

        # --- robustness: drop rate 0..1 per modality, mixing full and dropped predictions
        rob_how = self._robustness_strategy(ctx, p.robustness_strategy, strategy)
        dropped = {
            mod: predicted_probs(ctx.cache.ablated({mod: rob_how}, level).logits, kind)
            for mod in players
        }
        rates = np.linspace(0.0, 1.0, p.robustness_steps)
        curves, realistic = self._robustness(
            ctx, scorer, probs[-1], dropped, players, rates, p, rob_how
        )

        # --- per-sample Shapley values of the output (MM-SHAP shares)
        phi = shapley_values(values)  # (M, n)
        inter = _round_interactions(interaction_index(values), values)  # (M, M, n)
        abs_phi = np.abs(phi)
        tot_abs = abs_phi.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = np.where(tot_abs > 0, abs_phi / np.where(tot_abs > 0, tot_abs, 1), np.nan)
        efficiency = float(np.max(np.abs(phi.sum(0) - (values[-1] - values[0]))))

        # --- one joint bootstrap over every variant
        boot = self._bootstrap(ctx, scorer, variants, realistic, shares, abs_phi, inter, players, p)
        table0 = scorer.table(variants)
        rob0 = {
            mod: float(np.mean(scorer.table(realistic[mod], which=(p.metric,))[:, 0]))
            for mod in players
        }
        metrics, tables = self._summarise(
            table0,
            boot,
            rob0,
            shares,
            abs_phi,
            inter,
            phi,
            players,
            masks,
            n,
            p,
            emap_probs,
            neutral_rows,
            out.notes,
        )
        if emap_probs is not None and _late_fusion(ctx):
            self._late_fusion_gap(metrics, out)
        else:
            self._additive_note(ctx, metrics, inter, out)
        # the Shapley shares first: the report's one-line summary shows the first metrics
        headline = {f"share.{m}": metrics[f"share.{m}"] for m in players}
        out.metrics = {**headline, **out.metrics, **metrics}
        out.metrics["logit_shapley.efficiency_error"] = efficiency
        out.metrics.update(patterns)
        out.tables.update(tables)
        out.tables["robustness"] = curves
        out.per_sample = self._per_sample(ctx, values, phi, shares, players)
        for name in ("coalitions", "contributions", "metrics"):
            tables[name].insert(1, "removal", _removal_words(strategy))
        out.figures.update(self._figures(tables, curves, shares, players, p, strategy, rob_how))
        out.notes.extend(self._notes(ctx, players, level, p, rob_how, absent))
        out.notes.extend(_reading_notes(out.metrics, curves, players, p, strategy, rob_how))
        out.judged = count_judged(out.metrics, self.default_thresholds)
        out.skip_reason = (
            "no contribution could be judged: every drop, share, redundancy and EMAP gap is"
            " undefined on the audited rows (see the notes)"
        )
        return out

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _players(ds: Any, out: CheckOutput) -> tuple[list[str], list[str]]:
        """Modalities with data for at least one sample (the players of the game)."""
        players, absent = [], []
        for col, mod in enumerate(ds.modalities):
            (players if ds.present[:, col].any() else absent).append(mod)
        for mod in absent:
            out.notes.append(
                f"{mod} is missing for every sample: it cannot contribute and is left out of"
                f" the coalitions (check the data.{mod} column)"
            )
        if len(players) > MAX_MODALITIES:
            out.notes.append(f"only the first {MAX_MODALITIES} modalities are ablated")
            players = players[:MAX_MODALITIES]
        return players, absent

    @staticmethod
    def _level(ctx: AuditContext, players: list[str], wanted: str, out: CheckOutput) -> str:
        if wanted == "input":
            return "input"
        lacking = [m for m in players if m not in ctx.adapter.layers]
        if ctx.adapter.supports_hooks and not lacking:
            return "encoder"
        why = (
            "the model does not allow layer hooks"
            if not ctx.adapter.supports_hooks
            else f"model.layers does not name the encoder of {', '.join(lacking)}"
        )
        out.notes.append(
            f"ablation ran at the input, not at the encoder output: {why}; every coalition"
            " reruns the whole model (set model.layers.<modality> to speed this up)"
        )
        return "input"

    @staticmethod
    def _strategy(ctx: AuditContext, wanted: str, out: CheckOutput) -> str:
        if wanted == "missing" and "present" not in ctx.adapter.keywords:
            out.notes.append(
                "strategy 'missing' needs a model that takes a presence mask (model.inputs."
                "present); removed modalities were permuted across samples instead"
            )
            return "permute"
        return wanted

    @staticmethod
    def _robustness_strategy(ctx: AuditContext, wanted: str, strategy: str) -> str:
        """A missing modality in deployment takes the model's own missing path, or else is
        imputed (dataset mean); another patient's data (permute) would be a wrong modality,
        not a missing one."""
        native = "present" in ctx.adapter.keywords
        if wanted == "auto":
            return "missing" if native else "mean"
        if wanted == "missing" and not native:
            return strategy
        return wanted

    @staticmethod
    def _sample_game(
        ctx: AuditContext,
        coal_logits: list[np.ndarray],
        players: list[str],
        masks: np.ndarray,
        strategy: str,
        level: str,
        p: AblationCheck.Params,
        out: CheckOutput,
    ) -> np.ndarray:
        """The per-sample game (2^M, n) of the output value that MM-SHAP attributes.

        Under 'permute' one donor per sample makes every per-sample value a single draw, so
        at the encoder level (fusion head only) the game is averaged over
        ``logit_permutations`` independent permutations; the metric game keeps the shared
        first permutation. Averaging games keeps efficiency exact.
        """
        kind = ctx.config.data.target.kind
        base = ctx.cache.sweep().logits
        ref_class = base.argmax(1) if kind == "multiclass" and base.shape[1] > 1 else None
        values = np.stack([output_value(lg, kind, ref_class) for lg in coal_logits])
        if strategy != "permute":
            return values
        draws = p.logit_permutations if level == "encoder" else 1
        removals = _removals(players, masks, strategy)
        for draw in range(1, draws):
            extra = ctx.cache.ablated_many(removals, "encoder", draw=draw)  # type: ignore[arg-type]
            values = values + np.stack([output_value(r.logits, kind, ref_class) for r in extra])
        out.notes.append(
            f"per-sample (MM-SHAP) values average {draws} permutation(s) of the removed"
            " modalities" + ("" if draws > 1 else " (one donor per sample: single-draw values)")
        )
        return values / draws

    @staticmethod
    def _late_fusion_gap(metrics: dict[str, Any], out: CheckOutput) -> None:
        """Late fusion adds per-modality outputs by design, so an EMAP gap near 0 is expected
        rather than a finding: the gap moves to ``emap.late_fusion_gap`` (not judged by
        ``no_interaction``) and a note says so."""
        gap = metrics.pop("emap.gap")
        metrics["emap.late_fusion_gap"] = gap
        out.findings.append(
            Finding(
                check="ablation",
                rule="no_interaction",
                severity="note",
                message="late fusion: the model combines per-modality outputs additively by"
                f" design, so no cross-modal interaction is expected (EMAP gap {gap.value:.3g},"
                f" CI [{_fmt(gap.ci_low)}, {_fmt(gap.ci_high)}]; reported as"
                " emap.late_fusion_gap, not judged)",
                metric="emap.late_fusion_gap",
                value=None if not np.isfinite(gap.value) else float(gap.value),
            )
        )

    @staticmethod
    def _additive_note(
        ctx: AuditContext, metrics: dict[str, Any], inter: np.ndarray, out: CheckOutput
    ) -> None:
        """Say so when the fused head cannot express interactions: by construction (a
        built-in concat fusion feeding one linear head) or numerically (every per-sample
        logit interaction is 0 within float tolerance). The ``no_interaction`` warning
        stands -- a model presented as fusing that only adds is worth one -- but the reader
        learns that its EMAP gap of 0 is the architecture, not what training chose."""
        pairs = inter[~np.eye(inter.shape[0], dtype=bool)]
        numerically = bool(np.all(np.nan_to_num(pairs) == 0))
        built = _additive_head(ctx)
        averaged = _averaging_head(ctx)
        if built is None and averaged is None and not numerically:
            return
        gap = metrics.get("emap.gap")
        gap_text = (
            ""
            if gap is None
            else f"; EMAP gap {gap.value:.3g}, CI [{_fmt(gap.ci_low)}, {_fmt(gap.ci_high)}]"
        )
        if averaged is not None and built is None:
            message = (
                f"additive by construction wherever the same modalities are present ({averaged}):"
                " with every modality present the logit is a sum of one term per modality, so"
                " interactions come only from changing the set of present modalities (the mean"
                f" is re-weighted when one is absent){gap_text}. The model cannot fuse its"
                " modalities, only average them"
            )
        elif built is not None:
            message = (
                f"additive by construction: the fusion cannot express interactions ({built}:"
                " the logit is a sum of one term per modality encoder), so the EMAP gap and"
                " every per-sample logit interaction are 0 whatever the model learned"
                f" (interactions below {LOGIT_INTERACTION_RTOL:g} x the mean |logit| are float"
                f" rounding, reported as 0{gap_text}). The model cannot fuse its modalities,"
                " only add them"
            )
        else:
            message = (
                "numerically additive: every per-sample logit interaction is 0 within float"
                f" tolerance ({LOGIT_INTERACTION_RTOL:g} x the mean |logit|{gap_text}), so on"
                " these data the fused head adds one term per modality and expresses no"
                " interaction"
            )
        if gap is None:
            out.notes.append(message)
            return
        out.findings.append(
            Finding(
                check="ablation",
                rule="no_interaction",
                severity="note",
                message=message,
                metric="emap.gap",
                value=None if not np.isfinite(gap.value) else float(gap.value),
            )
        )

    # ------------------------------------------------------------------ robustness
    def _robustness(
        self,
        ctx: AuditContext,
        scorer: Scorer,
        full: np.ndarray,
        dropped: dict[str, np.ndarray],
        players: list[str],
        rates: np.ndarray,
        p: AblationCheck.Params,
        how: str,
    ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        """Metric vs drop rate per modality, and the mixed predictions at the realistic rate.

        A sample's prediction does not depend on the other samples, so "modality m dropped
        for a random fraction r of the samples that have it" is a per-sample mix of the full
        and the m-removed predictions: no model run per rate. ``robustness_draws`` random
        drop patterns per rate give the band.
        """
        ds = ctx.dataset
        rows = []
        realistic: dict[str, np.ndarray] = {}
        for mod in players:
            has = ds.present[:, ds.modalities.index(mod)]
            u = ctx.rng(f"ablation.robustness.{mod}").random((p.robustness_draws, len(has)))

            def mixed(
                rate: float,
                u: np.ndarray = u,
                has: np.ndarray = has,
                gone: np.ndarray = dropped[mod],
            ) -> np.ndarray:
                drop = (u < rate) & has[None, :]
                if full.ndim > 1:
                    drop = drop[..., None]
                return np.where(drop, gone[None], full[None])

            for rate in rates:
                vals = scorer.table(mixed(float(rate)), which=(p.metric,))[:, 0]
                ok = vals[np.isfinite(vals)]
                rows.append(
                    {
                        "modality": mod,
                        "drop_rate": float(rate),
                        "removal": how,
                        p.metric: float(np.mean(ok)) if ok.size else np.nan,
                        "band_low": float(np.quantile(ok, 0.025)) if ok.size else np.nan,
                        "band_high": float(np.quantile(ok, 0.975)) if ok.size else np.nan,
                        "n_present": int(has.sum()),
                    }
                )
            realistic[mod] = mixed(p.realistic_missing_rate)
        return pd.DataFrame(rows), realistic

    # ------------------------------------------------------------------ bootstrap
    def _bootstrap(
        self,
        ctx: AuditContext,
        scorer: Scorer,
        variants: np.ndarray,
        realistic: dict[str, np.ndarray],
        shares: np.ndarray,
        abs_phi: np.ndarray,
        inter: np.ndarray,
        players: list[str],
        p: AblationCheck.Params,
    ) -> dict[str, np.ndarray]:
        """Every statistic on the same resamples (patients when given): (B, ...) arrays.

        The resamples are those ``stats.paired_bootstrap_diff`` draws for ``seed=ctx.seed``
        (both go through ``stats.bootstrap_groups``), so each drop here is that function's
        paired bootstrap, but all variants share one set of draws, which keeps Shapley
        values, interactions and drops mutually consistent.
        """
        n = len(ctx.target)
        draws = bootstrap_groups(n, ctx.groups, p.n_boot, np.random.default_rng(ctx.seed))
        pairs = pair_names(players)
        stacked = np.concatenate([realistic[m] for m in players])  # (M * draws, n[, K])
        tables, rob, share_means, logit_inter = [], [], [], []
        for rows in draws:
            tables.append(scorer.table(variants, rows))
            per_draw = scorer.table(stacked, rows, (p.metric,))[:, 0]
            rob.append(_nanmean(per_draw.reshape(len(players), -1), axis=1))
            share_means.append(_nanmean(shares[:, rows], axis=1))
            denom = abs_phi[:, rows].sum(0).mean()
            logit_inter.append(
                [
                    np.abs(inter[j, k, rows]).mean() / denom if denom > 0 else np.nan
                    for j, k, _ in pairs
                ]
            )
        return {
            "table": np.stack(tables),  # (B, variants, metrics)
            "realistic": np.array(rob, dtype=float).reshape(p.n_boot, len(players)),
            "share": np.stack(share_means),  # (B, M)
            "logit_interaction": np.array(logit_inter, dtype=float).reshape(p.n_boot, len(pairs)),
        }

    # ------------------------------------------------------------------ summaries
    def _summarise(
        self,
        table0: np.ndarray,
        boot: dict[str, np.ndarray],
        rob0: dict[str, float],
        shares: np.ndarray,
        abs_phi: np.ndarray,
        inter: np.ndarray,
        phi: np.ndarray,
        players: list[str],
        masks: np.ndarray,
        n: int,
        p: AblationCheck.Params,
        emap_probs: np.ndarray | None,
        neutral_rows: dict[int, int],
        notes: list[str],
    ) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
        """Estimates, adjusted p-values and tables from the point and bootstrap tables.

        ``neutral_rows`` maps the coalitions the redundancy ratio needs to their rows of the
        table under the neutral removal; ``notes`` receives what the reader must know."""
        alpha = p.alpha
        k_primary = METRICS.index(p.metric)
        full_idx = len(masks) - 1
        ori0 = Scorer.oriented(table0, METRICS)  # (V, 7)
        orib = Scorer.oriented(boot["table"], METRICS)  # (B, V, 7)
        est: dict[str, Any] = {}

        def est_of(v0: float, vb: np.ndarray, with_p: bool = False) -> Estimate:
            return estimate_from_boot(v0, vb, n, alpha, with_p)

        # full / LOO / KOI values and drops (all metrics)
        long_rows = []
        for k, metric in enumerate(METRICS):
            est[f"full.{metric}"] = est_of(table0[full_idx, k], boot["table"][:, full_idx, k])
            long_rows.append(_long_row("full", "", metric, est[f"full.{metric}"], None))
            for setting in ("loo", "koi"):
                drops: dict[str, Estimate] = {}
                for j, mod in enumerate(players):
                    idx = (full_idx & ~(1 << j)) if setting == "loo" else (1 << j)
                    est[f"{setting}.{mod}.{metric}"] = est_of(
                        table0[idx, k], boot["table"][:, idx, k]
                    )
                    drops[f"{setting}.{mod}.{metric}_drop"] = est_of(
                        ori0[full_idx, k] - ori0[idx, k],
                        orib[:, full_idx, k] - orib[:, idx, k],
                        with_p=True,
                    )
                drops = _adjust(drops, p.p_adjust)
                est.update(drops)
                for mod in players:
                    long_rows.append(
                        _long_row(
                            setting,
                            mod,
                            metric,
                            est[f"{setting}.{mod}.{metric}"],
                            drops[f"{setting}.{mod}.{metric}_drop"],
                        )
                    )
            if emap_probs is not None:
                e_idx = len(masks)
                est[f"emap.{metric}"] = est_of(table0[e_idx, k], boot["table"][:, e_idx, k])
                long_rows.append(_long_row("emap", "", metric, est[f"emap.{metric}"], None))
        for mod in players:
            est[f"drop.loo.{mod}"] = est[f"loo.{mod}.{p.metric}_drop"]
            est[f"drop.koi.{mod}"] = est[f"koi.{mod}.{p.metric}_drop"]

        # the Shapley game of the chosen metric (higher = better)
        game0 = ori0[: len(masks), k_primary]
        gameb = orib[:, : len(masks), k_primary].T  # (2^M, B)
        phi0 = shapley_values(game0)
        phib = shapley_values(gameb)  # (M, B)
        total0 = game0[-1] - game0[0]
        totalb = gameb[-1] - gameb[0]
        est["shapley.total"] = est_of(total0, totalb)
        est["shapley.empty"] = est_of(table0[0, k_primary], boot["table"][:, 0, k_primary])
        with np.errstate(invalid="ignore", divide="ignore"):
            shareb = np.where(np.abs(totalb) > 1e-12, phib / totalb, np.nan)
        share0 = phi0 / total0 if abs(total0) > 1e-12 else np.full(len(players), np.nan)
        total = est["shapley.total"]
        if total.ci_low is None or total.ci_high is None or total.ci_low <= 0 <= total.ci_high:
            # a share of a total indistinguishable from 0 is noise over noise
            notes.append(
                f"shares undefined: the full model's {p.metric} is not distinguishable from the"
                f" empty coalition's (shapley.total = {total0:.3g}, CI"
                f" [{_fmt(total.ci_low)}, {_fmt(total.ci_high)}] contains 0); the Shapley"
                " values themselves are still reported"
            )
            share0 = np.full(len(players), np.nan)
        contrib_rows = []
        for j, mod in enumerate(players):
            est[f"shapley.{mod}"] = est_of(phi0[j], phib[j])
            est[f"share.{mod}"] = est_of(share0[j], shareb[j])
            est[f"logit_share.{mod}"] = est_of(float(_nanmean(shares[j], 0)), boot["share"][:, j])
            est[f"logit_shapley.{mod}"] = float(abs_phi[j].mean())
            contrib_rows.append(
                {
                    "modality": mod,
                    **_cols("shapley", est[f"shapley.{mod}"]),
                    **_cols("share_pct", est[f"share.{mod}"], 100.0),
                    **_cols("logit_share_pct", est[f"logit_share.{mod}"], 100.0),
                    "logit_shapley_mean": float(phi[j].mean()),
                    "logit_shapley_mean_abs": float(abs_phi[j].mean()),
                    **_cols("loo_drop", est[f"drop.loo.{mod}"]),
                    "loo_drop_p_adj": est[f"drop.loo.{mod}"].null_p,
                    **_cols("koi", est[f"koi.{mod}.{p.metric}"]),
                    **_cols("koi_drop", est[f"drop.koi.{mod}"]),
                }
            )

        # the neutral-removal game: only the coalitions the redundancy ratio reads
        ngame0 = np.full(len(masks), np.nan)
        ngameb = np.full((len(masks), gameb.shape[1]), np.nan)
        for s, row in neutral_rows.items():
            ngame0[s] = ori0[row, k_primary]
            ngameb[s] = orib[:, row, k_primary]

        # interactions and redundancy
        inter0 = interaction_index(game0)
        interb = interaction_index(gameb)
        pairs = pair_names(players)
        inter_est = _adjust(
            {
                f"interaction.{name}": est_of(inter0[j, k], interb[j, k], with_p=True)
                for j, k, name in pairs
            },
            p.p_adjust,
        )
        est.update(inter_est)
        tot = abs_phi.sum(0).mean()
        inter_rows = []
        for a, (j, k, name) in enumerate(pairs):
            li0 = float(np.abs(inter[j, k]).mean() / tot) if tot > 0 else np.nan
            est[f"logit_interaction.{name}"] = est_of(li0, boot["logit_interaction"][:, a])
            both = full_idx & ~(1 << j) & ~(1 << k)
            est[f"redundancy.{name}"] = est_of(
                float(_redundancy(ngame0, full_idx, j, k, both)),
                _redundancy(ngameb, full_idx, j, k, both),
            )
            inter_rows.append(
                {
                    "pair": name,
                    **_cols("interaction", est[f"interaction.{name}"]),
                    "interaction_p_adj": est[f"interaction.{name}"].null_p,
                    **_cols("logit_interaction", est[f"logit_interaction.{name}"]),
                    **_cols("redundancy", est[f"redundancy.{name}"]),
                }
            )

        # EMAP gap: what cross-modal interaction adds over the best additive projection
        if emap_probs is not None:
            e_idx = len(masks)
            est["emap.gap"] = est_of(
                ori0[full_idx, k_primary] - ori0[e_idx, k_primary],
                orib[:, full_idx, k_primary] - orib[:, e_idx, k_primary],
                with_p=True,
            )

        # robustness at the realistic rate
        full_primary = Scorer.oriented(table0[full_idx, k_primary], p.metric)
        fullb = Scorer.oriented(boot["table"][:, full_idx, k_primary], p.metric)
        rob_est = {
            f"robustness.{mod}.realistic_drop": est_of(
                full_primary - Scorer.oriented(rob0[mod], p.metric),
                fullb - Scorer.oriented(boot["realistic"][:, j], p.metric),
                with_p=True,
            )
            for j, mod in enumerate(players)
        }
        est.update(_adjust(rob_est, p.p_adjust))
        est["robustness.realistic_rate"] = float(p.realistic_missing_rate)

        coal_rows = []
        for s in masks:
            kept = coalition_members(int(s), players)
            row: dict[str, Any] = {
                "coalition": "+".join(kept) or "(none)",
                "n_kept": len(kept),
            }
            row.update({metric: table0[s, k] for k, metric in enumerate(METRICS)})
            lo, hi = _quantiles(boot["table"][:, s, k_primary], alpha)
            row[f"{p.metric}_ci_low"], row[f"{p.metric}_ci_high"] = lo, hi
            coal_rows.append(row)
        tables = {
            "coalitions": pd.DataFrame(coal_rows),
            "contributions": pd.DataFrame(contrib_rows),
            "interactions": pd.DataFrame(inter_rows),
            "metrics": pd.DataFrame(long_rows),
        }
        return est, tables

    def _full_only(
        self,
        scorer: Scorer,
        base: np.ndarray,
        kind: str,
        ctx: AuditContext,
        p: AblationCheck.Params,
    ) -> dict[str, Any]:
        """Full-model metrics with CIs when there is nothing to ablate."""
        probs = predicted_probs(base, kind)[None]
        t0 = scorer.table(probs)[0]
        draws = bootstrap_groups(
            len(ctx.target), ctx.groups, p.n_boot, np.random.default_rng(ctx.seed)
        )
        tb = np.stack([scorer.table(probs, rows)[0] for rows in draws])
        return {
            f"full.{m}": estimate_from_boot(t0[k], tb[:, k], len(ctx.target), p.alpha)
            for k, m in enumerate(METRICS)
        }

    def _patterns(
        self,
        ctx: AuditContext,
        scorer: Scorer,
        probs: np.ndarray,
        p: AblationCheck.Params,
        out: CheckOutput,
    ) -> dict[str, Any]:
        """The full model's metrics per missingness pattern present in the data."""
        ds = ctx.dataset
        names = np.array(
            [
                "+".join(m for c, m in enumerate(ds.modalities) if row[c]) or "none"
                for row in ds.present
            ]
        )
        k_primary = METRICS.index(p.metric)
        metrics: dict[str, Any] = {}
        rows = []
        for name in sorted(set(names.tolist()), key=lambda s: (-s.count("+"), s)):
            sel = np.flatnonzero(names == name)
            sub = Scorer(scorer.y[sel], scorer.kind, scorer.threshold, scorer.bins)
            t0 = sub.table(probs[None, sel])[0]
            groups = None if ctx.groups is None else ctx.groups[sel]
            draws = bootstrap_groups(len(sel), groups, p.n_boot, np.random.default_rng(ctx.seed))
            tb = np.array([sub.table(probs[None, sel], r, (p.metric,))[0, 0] for r in draws])
            est = estimate_from_boot(t0[k_primary], tb, len(sel), p.alpha)
            metrics[f"pattern.{name}.n"] = len(sel)
            metrics[f"pattern.{name}.metric"] = est
            if not np.isfinite(t0[k_primary]):
                out.notes.append(
                    f"{p.metric} is undefined for the {len(sel)} samples with pattern {name}"
                    " (one class only, or too few samples): reported as empty"
                )
            rows.append(
                {
                    "pattern": name,
                    "n": len(sel),
                    **{m: t0[k] for k, m in enumerate(METRICS)},
                    f"{p.metric}_ci_low": est.ci_low,
                    f"{p.metric}_ci_high": est.ci_high,
                }
            )
        out.tables["patterns"] = pd.DataFrame(rows)
        return metrics

    @staticmethod
    def _per_sample(
        ctx: AuditContext,
        values: np.ndarray,
        phi: np.ndarray,
        shares: np.ndarray,
        players: list[str],
    ) -> pd.DataFrame:
        target = ctx.target
        frame: dict[str, Any] = {"id": ctx.dataset.ids}
        if target.ndim == 1:
            frame["target"] = target
        frame["output_full"] = values[-1]
        frame["output_empty"] = values[0]
        for j, mod in enumerate(players):
            frame[f"shapley.{mod}"] = phi[j]
        for j, mod in enumerate(players):
            frame[f"share.{mod}"] = shares[j]
        return pd.DataFrame(frame)

    @staticmethod
    def _notes(
        ctx: AuditContext,
        players: list[str],
        level: str,
        p: AblationCheck.Params,
        how: str,
        absent: list[str],
    ) -> list[str]:
        notes = []
        if ctx.groups is not None:
            notes.append(
                f"CIs resample {len(np.unique(ctx.groups))} patients, not {len(ctx.target)} rows;"
                f" p-values adjusted per family ({p.p_adjust})"
            )
        notes.append(
            f"robustness curves remove the modality as '{how}'"
            + (" (the model's own missing-modality path)" if how == "missing" else "")
            + f"; realistic missing rate {p.realistic_missing_rate:.0%}"
        )
        return notes

    # ------------------------------------------------------------------ figures
    def _figures(
        self,
        tables: dict[str, pd.DataFrame],
        curves: pd.DataFrame,
        shares: np.ndarray,
        players: list[str],
        p: AblationCheck.Params,
        strategy: str,
        how: str,
    ) -> dict[str, Any]:
        from mmaudit.checks.plotting import pyplot

        plt = pyplot()
        figs: dict[str, Any] = {}
        contrib = tables["contributions"]
        x = np.arange(len(players))
        removed = REMOVAL_WORDS.get(strategy, strategy)
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.9))
        for ax, col, title in (
            (
                axes[0],
                "share_pct",
                f"share.*: Shapley share of {p.metric} (%)\n(performance"
                " share, not attribution's shares.*)",
            ),
            (axes[1], "loo_drop", f"{p.metric} drop, this modality\n{removed}"),
            (axes[2], "koi", f"{p.metric}, only this modality kept\n(the others {removed})"),
        ):
            val = contrib[col].to_numpy(dtype=float)
            lo = contrib[f"{col}_ci_low"].to_numpy(dtype=float)
            hi = contrib[f"{col}_ci_high"].to_numpy(dtype=float)
            err = np.vstack([np.nan_to_num(val - lo), np.nan_to_num(hi - val)])
            ax.bar(x, val, yerr=np.abs(err), capsize=4, color="#4C72B0")
            ax.axhline(0, color="black", lw=0.6)
            ax.set_xticks(x, players)
            ax.set_title(title, fontsize=10)
        fig.suptitle(
            f"Modality contributions, removed modalities {removed} (95% bootstrap CIs)",
            fontsize=11,
        )
        fig.tight_layout()
        figs["contributions"] = fig

        coal = tables["coalitions"]
        values = coal[list(METRICS)].to_numpy(dtype=float)
        lo, hi = np.nanmin(values, 0), np.nanmax(values, 0)
        span = np.where(hi - lo > 0, hi - lo, 1.0)
        scaled = (values - lo) / span
        scaled[:, [METRICS.index(m) for m in LOWER_IS_BETTER]] *= -1
        scaled[:, [METRICS.index(m) for m in LOWER_IS_BETTER]] += 1
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(coal) + 1.2))
        ax.imshow(np.nan_to_num(scaled, nan=0.5), cmap="RdYlGn", aspect="auto", vmin=0, vmax=1)
        for (r, c), v in np.ndenumerate(values):
            ax.text(
                c,
                r,
                "-" if not np.isfinite(v) else f"{v:.3f}",
                ha="center",
                va="center",
                fontsize=8,
            )
        ax.set_xticks(range(len(METRICS)), METRICS, rotation=30, ha="right")
        ax.set_yticks(range(len(coal)), coal["coalition"])
        ax.set_title(
            f"Metrics per coalition of kept modalities, the others {removed} (green = better)",
            fontsize=10,
        )
        fig.tight_layout()
        figs["coalitions"] = fig

        fig, ax = plt.subplots(figsize=(6, 4))
        for mod in players:
            c = curves[curves["modality"] == mod]
            ax.plot(c["drop_rate"] * 100, c[p.metric], marker="o", ms=3, label=mod)
            ax.fill_between(c["drop_rate"] * 100, c["band_low"], c["band_high"], alpha=0.2)
        ax.axvline(p.realistic_missing_rate * 100, color="grey", ls="--", lw=0.8)
        ax.set_xlabel(f"samples with the modality {REMOVAL_WORDS.get(how, how)}, %")
        ax.set_ylabel(p.metric)
        ax.set_title(
            f"Missing-modality robustness (removal '{how}'; 100% is not drop.loo,"
            f" removal '{strategy}')",
            fontsize=9,
        )
        ax.legend()
        fig.tight_layout()
        figs["robustness"] = fig

        fig, ax = plt.subplots(figsize=(6, 3.6))
        data = [s[np.isfinite(s)] * 100 for s in shares]
        ax.boxplot([d if d.size else np.array([np.nan]) for d in data], showfliers=False)
        ax.set_xticks(range(1, len(players) + 1), players)
        ax.set_ylabel("per-sample share of |logit Shapley|, %")
        ax.set_title("Per-sample modality shares (MM-SHAP)", fontsize=10)
        fig.tight_layout()
        figs["sample_shares"] = fig
        return figs


# ----------------------------------------------------------------------------- helpers


def emap_logits(
    ctx: AuditContext, players: list[str], level: str, partners: int
) -> tuple[np.ndarray, str]:
    """Logits of the model's additive projection (N, K), and a note saying how they were made.

    Each sample's modality ``m`` is combined with every other modality of ``R`` reference
    samples (the same for all samples, drawn with the run seed): N x R x M evaluations
    instead of Hessel & Lee's N^2 x M. At the encoder level the encoders are replaced by
    their cached outputs, so only fusion and head run; at the input level the whole
    model runs on the mixed inputs. The presence flags and raw inputs (e.g. the text
    attention mask an attention fusion reads) travel with their modality.
    """
    ds = ctx.dataset
    n = len(ds)
    adapter = ctx.adapter
    device = adapter.device
    rng = ctx.rng("ablation.emap")
    ref = np.sort(rng.choice(n, size=min(partners, n), replace=False))
    donor = ds.collate([ds[int(j)] for j in ref]).to(device)
    ref_t = torch.from_numpy(ref)
    cached: dict[str, torch.Tensor] = {}
    if level == "encoder":
        cached = {
            # a private in-RAM copy: the cache's arrays may be read-only memory maps, and a
            # model that edits its inputs in place must not write into them
            m: torch.from_numpy(np.array(ctx.cache.embeddings(m))).to(device)
            for m in ds.modalities
            if m in adapter.layers
        }
    current: dict[str, torch.Tensor] = {}

    def evaluate(batch: Batch) -> np.ndarray:
        rows = batch.index.cpu()
        size = len(batch)
        cols: list[list[np.ndarray]] = [[] for _ in players]
        with contextlib.ExitStack() as stack:
            for m in cached:
                stack.enter_context(
                    adapter.substitute(m, lambda m=m: current[m])  # type: ignore[misc]
                )
            for r in range(len(ref)):
                for a, keep in enumerate(players):
                    others = [m for m in players if m != keep]
                    mixed = _mix(batch, donor, r, others)
                    for m in cached:
                        if m in others:
                            current[m] = cached[m][ref_t[r]].expand(size, *cached[m].shape[1:])
                        else:
                            current[m] = cached[m][rows]
                    cols[a].append(adapter.logits(mixed).float().cpu().numpy())
        return np.stack([np.stack(c, axis=1) for c in cols])  # (M, B, R, K)

    start = time.perf_counter()
    parts = ctx.cache.map_batches(evaluate, desc="ablation EMAP")
    cross = np.concatenate(parts, axis=1)
    took = time.perf_counter() - start
    base = ctx.cache.sweep().logits
    note = (
        f"EMAP: each sample's modality combined with the other modalities of {len(ref)}"
        f" reference samples ({cross.shape[0] * cross.shape[1] * cross.shape[2]}"
        f" evaluations at the {level} level, {took:.2f} s) instead of all {n} (N^2 cost);"
        " the projection is exactly additive and reproduces an additive model exactly"
    )
    return emap_projection(base, cross), note


def _mix(batch: Batch, donor: Batch, r: int, others: list[str]) -> Batch:
    """``batch`` with the modalities ``others`` (inputs and presence) from donor row ``r``."""
    size = len(batch)
    changes: dict[str, Any] = {}
    present = batch.present.clone()
    for m in others:
        col = batch.modalities.index(m)
        present[:, col] = donor.present[r, col]
        if m == "image" and donor.image is not None:
            changes["image"] = donor.image[r : r + 1].expand(size, *donor.image.shape[1:])
        elif m == "text" and donor.input_ids is not None:
            changes["input_ids"] = donor.input_ids[r : r + 1].expand(size, -1)
            changes["attention_mask"] = donor.attention_mask[r : r + 1].expand(size, -1)  # type: ignore[index]
        elif m == "tabular" and donor.tabular is not None:
            changes["tabular"] = donor.tabular[r : r + 1].expand(size, -1)
            if donor.tabular_missing is not None:
                changes["tabular_missing"] = donor.tabular_missing[r : r + 1].expand(size, -1)
    changes["present"] = present
    return batch.replace(**changes)


def _removals(players: list[str], masks: np.ndarray, how: str) -> list[dict[str, Any]]:
    """The removal of every coalition mask: each player whose bit is clear, removed as ``how``."""
    return [{mod: how for j, mod in enumerate(players) if not (int(s) >> j) & 1} for s in masks]


def _late_fusion(ctx: AuditContext) -> bool:
    """Whether the model declares late fusion (built-in spec), i.e. is additive by design."""
    return getattr(getattr(ctx.adapter.module, "spec", None), "fusion", None) == "late"


def _additive_head(ctx: AuditContext) -> str | None:
    """The architecture, in words, when a built-in model's fused head is additive by
    construction (concat fusion feeding one ``nn.Linear``); None otherwise or unknown."""
    module = ctx.adapter.module
    fusion = getattr(getattr(module, "spec", None), "fusion", None)
    if fusion == "concat" and isinstance(getattr(module, "head", None), torch.nn.Linear):
        return "concat fusion feeding one linear head"
    return None


def _averaging_head(ctx: AuditContext) -> str | None:
    """The architecture, in words, when a built-in model averages its present modalities'
    embeddings into one ``nn.Linear`` (projection fusion): additive as long as the set of
    present modalities stays the same; None otherwise."""
    module = ctx.adapter.module
    fusion = getattr(getattr(module, "spec", None), "fusion", None)
    if fusion == "projection" and isinstance(getattr(module, "head", None), torch.nn.Linear):
        return (
            "projection fusion: the mean of the present modalities' embeddings feeding one"
            " linear head"
        )
    return None


def _round_interactions(inter: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-sample interactions (M, M, n) with float rounding set to exactly 0: entries below
    ``LOGIT_INTERACTION_RTOL`` times the mean |game value| (the logit scale). An additive
    head gives ~1e-7 relative noise, whose bootstrap CI would otherwise "exclude 0"."""
    scale = float(np.mean(np.abs(values))) if values.size else 0.0
    tol = LOGIT_INTERACTION_RTOL * scale
    return np.where(np.abs(inter) < tol, 0.0, inter)


def _removal_words(strategy: str) -> str:
    """The removal strategy with what it does, for table columns (``permute: shuffled ...``)."""
    return f"{strategy}: removed modalities {REMOVAL_WORDS.get(strategy, strategy)}"


def _reading_notes(
    metrics: dict[str, Any],
    curves: pd.DataFrame,
    players: list[str],
    p: AblationCheck.Params,
    strategy: str,
    how: str,
) -> list[str]:
    """What the reader needs to tell this check's numbers apart from look-alikes: the
    Shapley share of performance vs attribution's share of the logit, and leave-one-out
    under ``strategy`` vs the robustness curve at 100 % missing under ``how``."""
    removed = REMOVAL_WORDS.get(strategy, strategy)
    notes = [
        f"share.<m> is each modality's Shapley share of {p.metric} across patients, the"
        f" removed modalities {removed}: a share of performance. It is not the attribution"
        " check's shares.<m> (each sample's share of |Integrated Gradients| on its logit: a"
        " share of the output) nor logit_share.<m> here (per-sample |logit Shapley| share);"
        f" koi.* keeps one modality with the others {removed}, not absent"
    ]
    full = metrics.get(f"full.{p.metric}")
    if how == strategy or not isinstance(full, Estimate):
        return notes
    parts = []
    for mod in players:
        end = curves[(curves["modality"] == mod) & (curves["drop_rate"] == 1.0)]
        loo = metrics.get(f"drop.loo.{mod}")
        if end.empty or not isinstance(loo, Estimate):
            continue
        gone = float(end[p.metric].iloc[0])
        drop = Scorer.oriented(full.value, p.metric) - Scorer.oriented(gone, p.metric)
        # round before printing, so that a drop of -1e-17 does not read "-0.000"
        loo_drop, how_drop = round(loo.value, 3) + 0.0, round(drop, 3) + 0.0
        parts.append(f"{mod} {loo_drop:.3f} ({strategy}) vs {how_drop:.3f} ({how})")
    if parts:
        notes.append(
            f"removing a modality costs {p.metric} differently by how it is removed:"
            f" {'; '.join(parts)}. The first is drop.loo.<m> (the modality {removed}), the"
            f" second the robustness curve at 100% (the modality {REMOVAL_WORDS.get(how, how)}"
            " for every sample). A shuffled modality is another patient's real data, a wrong"
            " signal the model follows; a missing one is a neutral input that leaves the"
            " decision to the other modalities. drop.loo measures how much the model relies on"
            " the modality; the robustness curve how it copes when the modality is absent"
        )
    return notes


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _redundancy(game: np.ndarray, full: int, j: int, k: int, both: int) -> Any:
    """1 - max(drop without j, drop without k, 0) / drop without both (NaN if that is tiny)."""
    d_j = game[full] - game[full & ~(1 << j)]
    d_k = game[full] - game[full & ~(1 << k)]
    d_jk = game[full] - game[both]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = 1.0 - np.maximum(np.maximum(d_j, d_k), 0.0) / d_jk
    return np.where(d_jk > MIN_JOINT_DROP, ratio, np.nan)


def _quantiles(x: np.ndarray, alpha: float) -> tuple[float | None, float | None]:
    ok = x[np.isfinite(x)]
    if ok.size < max(1, x.size / 2):
        return None, None
    lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _cols(prefix: str, est: Estimate, scale: float = 1.0) -> dict[str, float | None]:
    def s(v: float | None) -> float | None:
        return None if v is None or not np.isfinite(v) else float(v) * scale

    return {
        prefix: s(est.value),
        f"{prefix}_ci_low": s(est.ci_low),
        f"{prefix}_ci_high": s(est.ci_high),
    }


def _long_row(
    setting: str, modality: str, metric: str, value: Estimate, drop: Estimate | None
) -> dict[str, Any]:
    row: dict[str, Any] = {"setting": setting, "modality": modality, "metric": metric}
    row.update(_cols("value", value))
    if drop is not None:
        row.update(_cols("drop", drop))
        row["drop_p_adj"] = drop.null_p
    return row
