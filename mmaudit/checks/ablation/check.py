"""Check ``ablation``: how much each modality contributes, how modalities interact, and what
happens when one is missing.

This module holds the check (parameters, thresholds, requirements) and the order of its
stages; each stage is a module of this package: ``plan`` (players, level, removals),
``full_model`` (missingness patterns), ``coalitions``, ``logit_game`` (per-sample MM-SHAP),
``redundancy`` (neutral removal), ``emap``, ``robustness``, ``bootstrap`` (one joint
bootstrap), ``summary`` (estimates and tables), ``additivity``, ``figures``, ``notes``."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mmaudit.checks.ablation.additivity import additivity
from mmaudit.checks.ablation.bootstrap import joint_bootstrap
from mmaudit.checks.ablation.coalitions import evaluate_coalitions
from mmaudit.checks.ablation.emap import emap_variant
from mmaudit.checks.ablation.figures import ablation_figures
from mmaudit.checks.ablation.full_model import full_model_estimates, pattern_metrics
from mmaudit.checks.ablation.logit_game import logit_shapley, per_sample_frame, sample_game
from mmaudit.checks.ablation.notes import reading_notes, run_notes
from mmaudit.checks.ablation.plan import plan_ablation, removal_words
from mmaudit.checks.ablation.redundancy import neutral_game
from mmaudit.checks.ablation.robustness import robustness_curves
from mmaudit.checks.ablation.rules import ABLATION_RULES
from mmaudit.checks.ablation.scoring import MetricName, Scorer, predicted_probs
from mmaudit.checks.ablation.summary import summarise
from mmaudit.checks.contract import (
    AuditContext,
    Check,
    CheckOutput,
    Requirements,
    ThresholdRule,
    register,
)
from mmaudit.checks.findings import count_judged


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
    additive by construction too, so the rule is exempt for it and a note says why; a note
    finding stands beside the warning when every per-sample logit interaction is 0
    numerically or a projection fusion averages its modalities).
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

    default_thresholds: ClassVar[dict[str, ThresholdRule]] = ABLATION_RULES
    requires: ClassVar[Requirements] = Requirements(min_modalities=2)
    key_figures: ClassVar[tuple[str, ...]] = ("contributions", "coalitions")
    layers_wanted: ClassVar[list[str]] = ["image", "text", "tabular"]

    def run(self, ctx: AuditContext) -> CheckOutput:
        p: AblationCheck.Params = self.params  # type: ignore[assignment]
        out = CheckOutput()
        kind = ctx.config.data.target.kind
        y = ctx.target
        n = len(y)
        scorer = Scorer(y, kind, p.threshold, p.ece_bins)
        base = ctx.cache.sweep().logits
        out.metrics["n"] = n
        out.metrics["metric"] = p.metric

        plan = plan_ablation(ctx, p)
        players = plan.players
        out.notes.extend(plan.notes)
        out.metrics["level"] = plan.level
        out.metrics["strategy"] = plan.strategy
        out.metrics["n_modalities"] = len(players)
        patterns = pattern_metrics(ctx, scorer, predicted_probs(base, kind), p)
        out.notes.extend(patterns.notes)
        out.tables["patterns"] = patterns.table
        out.rows_used = n
        if len(players) < 2:
            out.notes.append(
                f"nothing to ablate: {len(players)} modality with data"
                f" ({', '.join(players) or 'none'}); absent for every sample:"
                f" {', '.join(plan.absent)}"
            )
            out.metrics.update(full_model_estimates(ctx, scorer, base, kind, p))
            out.judged = 0
            out.skip_reason = (
                f"nothing to ablate: only {len(players)} modality has data"
                f" ({', '.join(players) or 'none'}); absent for every audited row:"
                f" {', '.join(plan.absent)}"
            )
            return out

        # every coalition, the per-sample game of the output, the neutral-removal variants
        # of the redundancy ratio, and EMAP: the rows of one joint bootstrap table
        coalitions = evaluate_coalitions(ctx, plan, kind)
        out.notes.extend(coalitions.notes)
        masks, probs = coalitions.masks, coalitions.probs
        sample = sample_game(ctx, coalitions.logits, plan, masks, p)
        out.notes.extend(sample.notes)
        neutral = neutral_game(ctx, plan, masks, probs, kind, p.emap)
        out.notes.extend(neutral.notes)
        emap = emap_variant(ctx, plan, kind, p) if p.emap else None
        out.notes.extend([] if emap is None else emap.notes)
        projection = [] if emap is None else [emap.probs[None]]
        variants = np.concatenate([probs, *projection, neutral.probs])
        robustness = robustness_curves(ctx, scorer, probs[-1], plan, kind, p)
        game = logit_shapley(sample.values)
        boot = joint_bootstrap(ctx, scorer, variants, robustness.realistic, game, players, p)
        summary = summarise(
            scorer.table(variants),
            boot,
            robustness.realistic_metric,
            game,
            players,
            masks,
            n,
            p,
            emap is not None,
            neutral.rows,
        )
        out.notes.extend(summary.notes)
        verdict = additivity(ctx, summary.metrics, game.inter, emap is not None)
        out.findings.extend(verdict.findings)
        out.notes.extend(verdict.notes)
        out.exempt_rules.update(verdict.exempt)
        # the Shapley shares first: the report's one-line summary shows the first metrics
        headline = {f"share.{m}": verdict.metrics[f"share.{m}"] for m in players}
        out.metrics = {**headline, **out.metrics, **verdict.metrics}
        out.metrics["logit_shapley.efficiency_error"] = game.efficiency
        out.metrics.update(patterns.metrics)
        out.tables.update(summary.tables)
        out.tables["robustness"] = robustness.curves
        out.per_sample = per_sample_frame(ctx, game, players)
        for name in ("coalitions", "contributions", "metrics"):
            summary.tables[name].insert(1, "removal", removal_words(plan.strategy))
        how = plan.robustness_removal
        out.figures.update(
            ablation_figures(
                summary.tables, robustness.curves, game.shares, players, p, plan.strategy, how
            )
        )
        out.notes.extend(run_notes(ctx, p, how))
        out.notes.extend(
            reading_notes(out.metrics, robustness.curves, players, p, plan.strategy, how)
        )
        out.judged = count_judged(out.metrics, self.default_thresholds, out.exempt_rules)
        out.skip_reason = (
            "no contribution could be judged: every drop, share, redundancy and EMAP gap is"
            " undefined on the audited rows (see the notes)"
        )
        return out
