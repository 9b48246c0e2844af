"""Check ``probing``: what the embeddings encode about patients and sites, and whether the
model uses it.

A linear probe finds information in a layer; it does not show the model relies on it.
This check measures both and keeps them apart: probes with a permutation null, a
control task and a random-weights baseline say what is *encoded*; erasing the
attribute from the fused embedding (LEACE) and feeding the result to the head says
whether it is *used*.

This module holds the check's parameters and the order of its stages; each stage is a
module of this package and hands back its records and its part of the output.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
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
from mmaudit.checks.probing.attributes import select_attributes
from mmaudit.checks.probing.coverage import describe_coverage
from mmaudit.checks.probing.erasure import erase_attributes
from mmaudit.checks.probing.figures import erasure_figure, heatmap, null_figure
from mmaudit.checks.probing.layers import choose_layers
from mmaudit.checks.probing.origin import trace_origins
from mmaudit.checks.probing.positive_control import positive_control
from mmaudit.checks.probing.power import used_power_output
from mmaudit.checks.probing.probes import run_probes
from mmaudit.checks.probing.random_weights import random_baseline
from mmaudit.checks.probing.records import PROBE_LAYERS, ErasureRow
from mmaudit.checks.probing.rules import PROBING_RULES
from mmaudit.checks.probing.tables import erasure_table, probe_table
from mmaudit.checks.probing.verdicts import judge_attributes
from mmaudit.methods.probes import pool


@register
class ProbingCheck(Check):
    """Linear probes for every attribute on every captured layer; LEACE erasure for use.

    What: for each attribute in ``data.attributes`` and each captured layer (the fused
    ``embedding`` -- for the built-in family also the penultimate layer, the head's input --
    each modality encoder, and ``model.layers.penultimate`` when configured; token outputs
    mean-pooled), a cross-validated linear probe (logistic AUROC, macro one-vs-rest for
    more than two levels; ridge R^2 for continuous attributes) on standardised features,
    folds stratified and grouped by patient, the penalty chosen by inner CV, with a
    bootstrap CI (by patient); a permutation p-value (>= 1000 permutations on fixed folds,
    vectorised through the ridge form of the probe, see ``mmaudit.methods.probes``; raised
    automatically when Holm over many tests needs more), Holm-corrected across the
    attribute x layer family; a control task (a random pseudo-attribute of the same
    balance; selectivity = score - control); and a random-weights baseline (the same
    architecture re-initialised, one extra pass, probed on the same folds with the same
    permutations and a bootstrap CI: does the *input* carry the attribute, or did
    *training* put it there -- ``probe_origin``, see ``probe_origin()``). For a binary or
    multiclass target the judged probe is *beyond the target* (``within_target``, default):
    features centred within target classes, AUROC over pairs of rows from the same target
    class (pooled over classes), R² of the attribute's deviations from its class mean, and
    a null that shuffles the attribute within target classes -- a test of "attribute
    independent of the layer given the target", so an attribute merely tied to the target
    (a site with a higher prevalence) is not called encoded in every layer that encodes
    the target; the plain probe is reported beside it (``probe_*_marginal``). A multilabel
    target keeps plain probes (noted). A positive control
    probes the target on the penultimate layer: an ``error`` finding when even the upper
    end of its bootstrap CI stays below ``positive_control_min`` (or the model's own AUROC
    minus ``positive_control_margin``).
    Then each attribute is erased from the fused embedding with LEACE -- within
    target classes, so that a site with a higher prevalence does not take the disease
    signal with it -- and the head is re-run on the erased embedding (encoders are not
    re-run): mean |change in predicted probability|, flip rate and change in AUROC, each
    with a paired bootstrap CI, against erasing ``erasure_draws`` random subspaces of the
    same rank (each bootstrap resample redraws those draws too, so the reference's CI
    carries their spread); the probe score left after erasure is measured out of sample.
    Verdict per attribute, about the fused embedding: not encoded / encoded but not used /
    encoded and used.
    Why: chest X-ray models encode sex, race and hospital even when nobody asked them to
    (Gichoya 2022, Glocker 2023); a probe alone cannot say whether that matters for the
    predictions. Keeping "encoded" and "used" apart is the point.
    Metrics: ``probe_auroc.<attr>.<layer>`` / ``probe_r2.<attr>.<layer>`` (beyond the
    target when ``within_target``; null_p = Holm-corrected permutation p),
    ``probe_auroc_marginal.*`` / ``probe_r2_marginal.*`` (the plain probe, CI only, not
    judged; only when the judged one is beyond the target), ``probe_control.*``,
    ``probe_selectivity.*``, ``probe_random.*`` (random-weights baseline; null_p = its
    Holm-corrected permutation p over the random-weights family),
    ``probe_origin.<attr>.<layer>`` ("training": the trained CI lies above the
    random-weights CI; "input": random weights already expose it
    and the trained model is not clearly above; else "undetermined"; also the probe
    table's ``origin`` column and one note per attribute encoded in the fused embedding);
    ``positive_control.auroc``, ``positive_control.model_auroc``,
    ``positive_control.passed``, ``positive_control.layer``; per attribute ``erasure.dp``,
    ``erasure.dp_random`` (mean over the random draws), ``erasure.dp_random_sd`` (SD
    across the draws; min and max in the erasure table), ``erasure.excess_dp`` (null_p
    one-sided, Holm-corrected), ``erasure.flip``, ``erasure.flip_random``,
    ``erasure.dauroc``, ``erasure.dauroc_random``,
    ``erasure.residual``, ``erasure.rank``, ``erasure.mde_dp`` (the smallest excess |dp|
    the ``used`` rule detects with power 0.8 at this n; a note per attribute not called
    used says what its pass rules out); ``verdict.<attr>`` (not_encoded /
    encoded_not_used / encoded_and_used) and ``encoded_and_used.<attr>`` (0/1);
    ``n_permutations``.
    Verdict rules (params): encoded = fused-embedding probe (beyond the target when
    ``within_target``) with Holm p < alpha and AUROC >= min_auroc (R^2 >= min_r2); used =
    excess |dp| over the mean random erasure with Holm p < alpha, CI above zero and >=
    used_min_dp, *and* the attribute's |dp| above the 1 - alpha quantile of the random
    draws' |dp| (beyond their spread, not only their mean).
    Default thresholds: warn when an attribute is decodable above the null (probe AUROC >
    0.55, or R^2 > 0.05, with Holm p < 0.05; the ``probe_auroc`` / ``probe_r2`` score, i.e.
    beyond the target when ``within_target``); fail when an attribute is encoded in the fused
    embedding *and* used by the head. A failed positive control is an ``error`` finding:
    the probing pipeline, not the model, is then in doubt.
    """

    name = "probing"
    description = (
        "linear probes (null, control task, random weights) for attributes on every layer;"
        " LEACE erasure: encoded vs used"
    )

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        layers: list[str] | None = Field(
            default=None,
            description="layers to probe (default: embedding, penultimate, image, text, tabular"
            " where captured); dotted module paths allowed",
        )
        attributes: list[str] | None = Field(
            default=None, description="attributes to probe (default: every data.attributes)"
        )
        n_folds: int = Field(default=5, ge=2, description="outer cross-validation folds")
        inner_folds: int = Field(default=3, ge=2, description="inner folds choosing the penalty")
        n_permutations: int = Field(
            default=1000, ge=1000, description="label permutations for the null"
        )
        n_control: int = Field(default=5, ge=1, description="control-task pseudo-attributes")
        n_boot: int = Field(default=1000, ge=50, description="bootstrap resamples for CIs")
        alpha: float = Field(default=0.05, gt=0, lt=1, description="level of tests and CIs")
        random_baseline: bool = Field(
            default=True, description="probe a re-initialised copy of the model too (one pass)"
        )
        random_max_rows: int | None = Field(
            default=1000,
            ge=20,
            description="rows the random-weights baseline runs on (a seeded draw stratified"
            " by target and attributes; a fixed cost, not a second sweep; None: every row)",
        )
        erasure_draws: int = Field(
            default=16,
            ge=1,
            description="random subspaces erased per rank (the comparison; each a head-only pass"
            " over cached embeddings; the bootstrap redraws them, so few draws widen the CI)",
        )
        within_target: bool = Field(
            default=True,
            description="binary / multiclass target: probe each attribute beyond the target"
            " (score, null and control within target classes; 'encoded' judges this score,"
            " the plain one is reported as probe_*_marginal); false: plain probes",
        )
        min_auroc: float = Field(
            default=0.55, gt=0.5, lt=1, description="verdict 'encoded' needs this probe AUROC"
        )
        min_r2: float = Field(
            default=0.05, gt=0, lt=1, description="verdict 'encoded' needs this probe R^2"
        )
        used_min_dp: float = Field(
            default=0.02,
            gt=0,
            lt=1,
            description="verdict 'used' needs mean |dp| this far above random erasure",
        )
        positive_control_min: float = Field(
            default=0.7, gt=0.5, lt=1, description="the target probe must reach this AUROC"
        )
        positive_control_margin: float = Field(
            default=0.1,
            ge=0,
            lt=0.5,
            description="... or come within this of the model's own AUROC (weak models)",
        )
        max_levels: int = Field(
            default=20, ge=2, description="skip categorical attributes with more levels"
        )
        min_level_size: int = Field(
            default=10, ge=2, description="levels with fewer rows are left out (noted)"
        )

    default_thresholds: ClassVar[dict[str, ThresholdRule]] = PROBING_RULES
    requires: ClassVar[Requirements] = Requirements(hooks=True, layers=["embedding"])
    key_figures: ClassVar[tuple[str, ...]] = ("probe_heatmap", "erasure")
    layers_wanted: ClassVar[list[str]] = list(PROBE_LAYERS)

    def run(self, ctx: AuditContext) -> CheckOutput:
        from threadpoolctl import threadpool_limits

        # the numerics here are many small matrix products (folds, erasers, resamples): one
        # BLAS thread is faster for them, and far faster on a busy machine; the model's own
        # threads (torch, OpenMP) are not touched
        with threadpool_limits(limits=1, user_api="blas"):
            return self._run(ctx)

    def _run(self, ctx: AuditContext) -> CheckOutput:
        """The stages in order; each one's metrics, notes and findings are appended as it
        finishes, so the output keeps their order."""
        p: ProbingCheck.Params = self.params  # type: ignore[assignment]
        out = CheckOutput()
        groups = ctx.groups
        layers, found = choose_layers(ctx, p)
        out.extend(found)
        embeddings = {name: pool(ctx.cache.embeddings(name)) for name in layers}
        selection, found = select_attributes(ctx, p)
        out.extend(found)
        attributes = selection.attributes
        penultimate = "penultimate" if "penultimate" in embeddings else "embedding"
        out.metrics["positive_control.layer"] = penultimate
        out.extend(positive_control(ctx, p, embeddings[penultimate], penultimate, self.name))

        rows, found = run_probes(ctx, p, attributes, embeddings)
        out.extend(found)
        if rows and p.random_baseline:
            rows, found = random_baseline(ctx, p, attributes, layers, rows)
            out.extend(found)
            rows, found = trace_origins(p, rows)
            out.extend(found)
        erasures: list[ErasureRow] = []
        if attributes:
            erasures, found = erase_attributes(ctx, p, attributes)
            out.extend(found)
        verdicts, found = judge_attributes(p, attributes, rows, erasures)
        out.extend(found)
        out.extend(used_power_output(erasures, groups, p, verdicts))

        out.judged = count_judged(out.metrics, self.default_thresholds)
        coverage = describe_coverage(
            ctx, attributes, selection.unprobed, rows, erasures, len(embeddings)
        )
        out.rows_used = coverage.rows_used
        out.coverage.extend(coverage.lines)
        out.skip_reason = coverage.skip_reason

        if rows:  # an empty table is no table
            out.tables["probes"] = probe_table(rows, p.alpha)
        if erasures:
            mde = {e.attribute: out.metrics[f"erasure.mde_dp.{e.attribute}"] for e in erasures}
            out.tables["erasure"] = erasure_table(erasures, verdicts, mde)
        if rows:
            out.figures["probe_heatmap"] = heatmap(rows, layers, p.alpha)
            out.figures["probe_null"] = null_figure(rows, layers, p.alpha)
        if erasures:
            out.figures["erasure"] = erasure_figure(erasures)
        if groups is not None:
            out.notes.append(
                f"folds and bootstrap resamples keep each of {len(np.unique(groups))} patients"
                " whole"
            )
        out.notes.append(
            "permutation p-values are for the ridge form of each probe on the same folds"
            " (a matrix product per fold for all permutations); the penalty chosen on the"
            " true labels is reused for every permutation (see mmaudit/probes.py)"
        )
        return out
