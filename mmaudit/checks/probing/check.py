"""Check ``probing``: what the embeddings encode about patients and sites, and whether the
model uses it.

A linear probe finds information in a layer; it does not show the model relies on it.
This check measures both and keeps them apart: probes with a permutation null, a
control task and a random-weights baseline say what is *encoded*; erasing the
attribute from the fused embedding (LEACE) and feeding the result to the head says
whether it is *used*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd
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
from mmaudit.checks.plotting import pyplot
from mmaudit.engine.errors import NonFiniteOutputError
from mmaudit.methods.erasure import (
    LinearEraser,
    indicator_matrix,
    leace_fit,
    random_subspace_eraser,
)
from mmaudit.methods.probes import ProbeError, ProbeResult, pool, run_probe, score_estimate
from mmaudit.methods.stats import (
    Estimate,
    adjust_pvalues,
    auroc,
    bootstrap_groups,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mmaudit.engine.cache import InferenceCache

PROBE_LAYERS: tuple[str, ...] = ("embedding", "penultimate", "image", "text", "tabular")
VERDICTS: tuple[str, ...] = ("not_encoded", "encoded_not_used", "encoded_and_used")
# where an attribute's trace in a layer comes from, judged against the random-weights probe
ORIGINS: tuple[str, ...] = ("training", "input", "undetermined")


@dataclass
class Attribute:
    """One attribute ready to probe: values on the rows where it is known."""

    name: str
    kind: str  # categorical | continuous
    known: np.ndarray  # bool (n,)
    values: np.ndarray  # (n_known,) strings or floats
    beyond_target: bool = True  # False: too collinear with the target to condition on it


@dataclass
class ProbeRow:
    """The probe of one attribute on one layer, with its estimate and baseline."""

    attribute: str
    layer: str
    result: ProbeResult
    estimate: Estimate
    p_holm: float = math.nan
    random: Estimate | None = None  # random-weights probe; null_p = its Holm permutation p
    origin: str = ""  # one of ORIGINS once the random-weights probe ran
    marginal: Estimate | None = None  # the plain probe when ``result`` is beyond the target


@dataclass
class ErasureRow:
    """Used-or-only-encoded evidence for one attribute (erasure from the fused embedding)."""

    attribute: str
    rank: int
    dp: Estimate
    dp_random: Estimate
    excess: Estimate
    flip: Estimate
    flip_random: Estimate
    dauroc: Estimate
    dauroc_random: Estimate
    residual: float
    dp_draws: np.ndarray  # mean |dp| of each random draw: the spread the reference comes from
    p_holm: float = math.nan

    def random_upper(self, alpha: float) -> float:
        """The (1 - alpha) quantile of mean |dp| over the random draws: the top of their
        spread, which a used attribute's erasure must exceed."""
        return float(np.quantile(self.dp_draws, 1 - alpha))

    @property
    def dp_random_sd(self) -> float:
        """SD of mean |dp| across the random draws (NaN with one draw)."""
        return float(np.std(self.dp_draws, ddof=1)) if self.dp_draws.size > 1 else math.nan


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
    ``erasure.residual``, ``erasure.rank``; ``verdict.<attr>`` (not_encoded /
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

    default_thresholds: ClassVar[dict[str, ThresholdRule]] = {
        "encoded": ThresholdRule(
            metric="probe_auroc.*",
            warn_above=0.55,
            max_p=0.05,
            message="attribute decodable well above the permutation null (Holm-corrected),"
            " within target classes (beyond the target; plain probe: within_target false or"
            " a multilabel target)",
        ),
        "encoded_r2": ThresholdRule(
            metric="probe_r2.*",
            warn_above=0.05,
            max_p=0.05,
            message="continuous attribute decodable above the permutation null, within"
            " target classes (beyond the target; plain probe: within_target false or a"
            " multilabel target)",
        ),
        "used": ThresholdRule(
            metric="encoded_and_used.*",
            fail_above=0.5,
            message="attribute encoded in the fused embedding and used by the head: erasing"
            " it moves predictions more than erasing a random subspace of the same size",
        ),
    }
    requires: ClassVar[Requirements] = Requirements(hooks=True, layers=["embedding"])
    layers_wanted: ClassVar[list[str]] = list(PROBE_LAYERS)

    # ------------------------------------------------------------------ run
    def run(self, ctx: AuditContext) -> CheckOutput:
        from threadpoolctl import threadpool_limits

        # the numerics here are many small matrix products (folds, erasers, resamples): one
        # BLAS thread is faster for them, and far faster on a busy machine; the model's own
        # threads (torch, OpenMP) are not touched
        with threadpool_limits(limits=1, user_api="blas"):
            return self._run(ctx)

    def _run(self, ctx: AuditContext) -> CheckOutput:
        p: ProbingCheck.Params = self.params  # type: ignore[assignment]
        out = CheckOutput()
        groups = ctx.groups
        layers = self._layers(ctx, out)
        embeddings = {name: pool(ctx.cache.embeddings(name)) for name in layers}
        unprobed: dict[str, str] = {}
        attributes = self._attributes(ctx, out, unprobed)
        penultimate = "penultimate" if "penultimate" in embeddings else "embedding"
        out.metrics["positive_control.layer"] = penultimate
        self._positive_control(ctx, embeddings[penultimate], out)

        rows = self._probes(ctx, attributes, embeddings, out)
        if rows and p.random_baseline:
            self._random_baseline(ctx, attributes, layers, rows, out)
            self._origins(rows, out)
        erasures = self._erasures(ctx, attributes, out) if attributes else []
        verdicts = self._verdicts(attributes, rows, erasures, out)

        self._coverage(ctx, attributes, unprobed, rows, erasures, len(embeddings), out)

        if rows:  # an empty table is no table
            out.tables["probes"] = _probe_table(rows, p.alpha)
        if erasures:
            out.tables["erasure"] = _erasure_table(erasures, verdicts)
        if rows:
            out.figures["probe_heatmap"] = _heatmap(rows, layers, p.alpha)
            out.figures["probe_null"] = _null_figure(rows, layers, p.alpha)
        if erasures:
            out.figures["erasure"] = _erasure_figure(erasures)
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

    # ------------------------------------------------------------------ inputs
    def _layers(self, ctx: AuditContext, out: CheckOutput) -> list[str]:
        p: ProbingCheck.Params = self.params  # type: ignore[assignment]
        captured = [name for name in PROBE_LAYERS if name in ctx.adapter.layers]
        if p.layers is None:
            chosen = captured
        else:
            chosen = []
            for name in p.layers:
                if name in ctx.adapter.layers or "." in name:
                    chosen.append(name)
                else:
                    out.notes.append(f"layer '{name}' is not captured; left out")
        if "embedding" not in chosen:
            chosen.insert(0, "embedding")
        if "penultimate" not in ctx.adapter.layers:
            if ctx.adapter.source.startswith("builtin:"):
                out.notes.append(
                    "built-in model: the fused embedding is the head's input, i.e. the"
                    " penultimate layer; the positive control probes it"
                )
            else:
                out.notes.append(
                    "no model.layers.penultimate: the fused embedding stands in for the"
                    " penultimate layer in the positive control"
                )
        return chosen

    def _attributes(
        self, ctx: AuditContext, out: CheckOutput, unprobed: dict[str, str]
    ) -> list[Attribute]:
        """The attributes to probe; ``unprobed`` receives, per attribute left out, why in a
        few words with its counts (the skip reason and coverage note quote them)."""
        p: ProbingCheck.Params = self.params  # type: ignore[assignment]
        frame = ctx.dataset.attributes
        config = ctx.config.data.attributes
        names = list(frame.columns) if p.attributes is None else list(p.attributes)
        if not names:
            out.notes.append("no data.attributes configured: only the positive control ran")
        attrs: list[Attribute] = []
        for name in names:
            if name not in frame.columns:
                out.notes.append(f"attribute '{name}' is not in data.attributes; left out")
                unprobed[name] = "not in data.attributes"
                continue
            kind = config[name].kind if name in config else "categorical"
            attr, problem = prepare_attribute(
                name, frame[name].to_numpy(), kind, p.max_levels, p.min_level_size
            )
            if problem:
                out.notes.append(problem)
            if attr is None:
                unprobed[name] = unprobed_reason(
                    name, frame[name].to_numpy(), kind, p.max_levels, p.min_level_size
                )
                continue
            attrs.append(attr)
            target_kind = ctx.config.data.target.kind
            if p.within_target and target_kind in ("binary", "multiclass"):
                collinear = collinear_with_target(attr, ctx.target, p.min_level_size)
                if collinear:
                    attr.beyond_target = False
                    out.notes.append(collinear)
            confound = target_association(
                attr, ctx.target, target_kind, p.within_target and attr.beyond_target
            )
            if confound:
                out.notes.append(confound)
        return attrs

    def _coverage(
        self,
        ctx: AuditContext,
        attributes: list[Attribute],
        unprobed: dict[str, str],
        rows: list[ProbeRow],
        erasures: list[ErasureRow],
        n_layers: int,
        out: CheckOutput,
    ) -> None:
        """What the verdict rests on: ``judged`` (probes with a permutation p, and use
        verdicts), ``rows_used``, partial-coverage notes with counts and, when nothing
        could be probed, the skip reason naming each attribute's counts."""
        n = len(ctx.target)
        out.judged = count_judged(out.metrics, self.default_thresholds)
        probed = {r.attribute for r in rows}
        used = np.zeros(n, dtype=bool)
        for attr in attributes:
            if attr.name in probed:
                used |= attr.known
        out.rows_used = int(used.sum())
        failed = {a.name: "its probes failed (see the notes)" for a in attributes}
        left_out = {**unprobed, **{k: v for k, v in failed.items() if k not in probed}}
        if not probed:
            if left_out:
                out.skip_reason = "no attribute could be probed: " + "; ".join(
                    f"{name} ({why})" for name, why in left_out.items()
                )
            else:
                out.skip_reason = "no data.attributes to probe (only the positive control ran)"
            return
        total = len(probed) + len(left_out)
        if left_out:
            out.coverage.append(
                f"{len(probed)} of {total} attributes probed; not probed: "
                + "; ".join(f"{name} ({why})" for name, why in left_out.items())
            )
        for attr in attributes:
            k = int(attr.known.sum())
            if attr.name in probed and k < n:
                out.coverage.append(
                    f"{attr.name} probed on {k} of {n} rows"
                    f" ({_left_out_rows(ctx.dataset.attributes[attr.name].to_numpy(), attr)})"
                )
        if len(rows) < len(attributes) * n_layers:
            out.coverage.append(
                f"{len(rows)} of {len(attributes) * n_layers} attribute x layer probes ran"
                " (the others failed; see the notes)"
            )
        erased = {e.attribute for e in erasures}
        untested = [a.name for a in attributes if a.name in probed and a.name not in erased]
        if untested:
            out.coverage.append(
                f"use (erasure) tested for {len(probed) - len(untested)} of {len(probed)}"
                f" probed attributes; not for {', '.join(untested)} (see the notes)"
            )

    # ------------------------------------------------------------------ probes
    def _probe(
        self,
        ctx: AuditContext,
        x: np.ndarray,
        attr: Attribute,
        permutations: int = 0,
        control: bool = True,
        marginal: bool = False,
    ) -> ProbeResult:
        """One probe; ``permutations`` 0 skips the null and the control task, ``control``
        False only the control task (the random-weights baseline). Beyond the target (within
        target classes) when ``_classes`` gives classes, unless ``marginal``."""
        p: ProbingCheck.Params = self.params  # type: ignore[assignment]
        groups = ctx.groups[attr.known] if ctx.groups is not None else None
        classes = None if marginal or not attr.beyond_target else self._classes(ctx)
        return run_probe(
            x[attr.known],
            attr.values,
            attr.kind,  # type: ignore[arg-type]
            groups=groups,
            n_folds=p.n_folds,
            inner_folds=p.inner_folds,
            n_permutations=permutations,
            n_control=p.n_control if permutations and control else 0,
            seed=ctx.seed,
            within=classes[attr.known] if classes is not None else None,
        )

    def _classes(self, ctx: AuditContext) -> np.ndarray | None:
        """The target class per row when probes go beyond the target (``within_target`` and a
        binary / multiclass target), else None (plain probes)."""
        p: ProbingCheck.Params = self.params  # type: ignore[assignment]
        if not p.within_target or ctx.config.data.target.kind not in ("binary", "multiclass"):
            return None
        return np.asarray(ctx.target)

    def _encoded(self, row: ProbeRow) -> bool:
        """Verdict rule "encoded": Holm p < alpha and the probe score at the floor or above --
        the score beyond the target when the probe is (``row.result.conditional``)."""
        p: ProbingCheck.Params = self.params  # type: ignore[assignment]
        return row.p_holm < p.alpha and row.result.score >= self._floor(row)

    def _floor(self, row: ProbeRow) -> float:
        p: ProbingCheck.Params = self.params  # type: ignore[assignment]
        return p.min_auroc if row.result.metric == "auroc" else p.min_r2

    def _estimate(self, ctx: AuditContext, result: ProbeResult, attr: Attribute) -> Estimate:
        p: ProbingCheck.Params = self.params  # type: ignore[assignment]
        groups = ctx.groups[attr.known] if ctx.groups is not None else None
        return score_estimate(result, groups, p.n_boot, p.alpha, ctx.seed)

    def _probes(
        self,
        ctx: AuditContext,
        attributes: list[Attribute],
        embeddings: dict[str, np.ndarray],
        out: CheckOutput,
    ) -> list[ProbeRow]:
        p: ProbingCheck.Params = self.params  # type: ignore[assignment]
        # Holm's first step needs p <= alpha / m and a permutation p is at least 1 / (P + 1):
        # with many tests, more permutations (they are cheap) so a real effect can be flagged
        tests = len(attributes) * len(embeddings)
        permutations = max(p.n_permutations, math.ceil(4 * tests / p.alpha))
        if permutations > p.n_permutations:
            out.notes.append(
                f"{permutations} permutations (not {p.n_permutations}) so that Holm over"
                f" {tests} tests can reach p < {p.alpha:g}"
            )
        out.metrics["n_permutations"] = permutations
        rows: list[ProbeRow] = []
        for attr in attributes:
            for layer, x in embeddings.items():
                try:
                    result = self._probe(ctx, x, attr, permutations)
                except ProbeError as exc:
                    out.notes.append(f"probe {attr.name} on {layer}: {exc}")
                    continue
                row = ProbeRow(attr.name, layer, result, self._estimate(ctx, result, attr))
                if result.conditional:
                    row.marginal = self._marginal(ctx, x, attr, out, layer)
                rows.append(row)
        adjusted = adjust_pvalues([r.result.p_value for r in rows], "holm")
        for row, p_adj in zip(rows, adjusted, strict=True):
            row.p_holm = float(p_adj)
            e = row.estimate
            row.estimate = Estimate(e.value, e.ci_low, e.ci_high, e.n, row.p_holm)
            key = f"{row.attribute}.{layer_key(row.layer)}"
            out.metrics[f"probe_{row.result.metric}.{key}"] = row.estimate
            out.metrics[f"probe_control.{key}"] = row.result.control
            out.metrics[f"probe_selectivity.{key}"] = row.result.selectivity
        for row in rows:  # after the judged scores, which lead the report's key metrics
            if row.marginal is not None:
                key = f"{row.attribute}.{layer_key(row.layer)}"
                out.metrics[f"probe_{row.result.metric}_marginal.{key}"] = row.marginal
        if any(r.result.conditional for r in rows):
            out.notes.append(
                "probe scores are beyond the target: probe_auroc / probe_r2 (and the"
                " 'encoded' rule, the verdicts, control and random-weights baseline) score"
                " the attribute within target classes -- AUROC over pairs from the same"
                " class, R² of deviations from the class mean -- against a null that"
                " shuffles it within target classes; an attribute tied to the target is not"
                " called encoded only because a layer encodes the target. The plain probe"
                " is reported as probe_auroc_marginal / probe_r2_marginal"
            )
        elif rows and p.within_target and ctx.config.data.target.kind == "multilabel":
            out.notes.append(
                "multilabel target: probes are marginal (not conditioned on the labels), so"
                " an attribute tied to a label can be decoded through it"
            )
        return rows

    def _marginal(
        self, ctx: AuditContext, x: np.ndarray, attr: Attribute, out: CheckOutput, layer: str
    ) -> Estimate | None:
        """The plain (marginal) probe score with its bootstrap CI, reported beside the one
        beyond the target; no null (nothing judges it)."""
        try:
            result = self._probe(ctx, x, attr, marginal=True)
        except ProbeError as exc:
            out.notes.append(f"marginal probe {attr.name} on {layer}: {exc}")
            return None
        return self._estimate(ctx, result, attr)

    def _random_baseline(
        self,
        ctx: AuditContext,
        attributes: list[Attribute],
        layers: list[str],
        rows: list[ProbeRow],
        out: CheckOutput,
    ) -> None:
        try:
            random_embeddings = randomised_embeddings(ctx, layers)
        except NonFiniteOutputError as exc:
            # the re-drawn weights' fault, not the checkpoint's (whose sweep was finite):
            # only the baseline is lost, so the run must not stop blaming the checkpoint
            out.notes.append(
                "random-weights probe not run: the randomised model produced non-finite"
                f" outputs ({exc}); the audited model's outputs are finite, so the probes"
                " and erasure stand, without the input-vs-training origin"
            )
            return
        except Exception as exc:  # an optional baseline must not sink the check
            out.notes.append(f"random-weights baseline not computed ({type(exc).__name__}: {exc})")
            return
        by_name = {a.name: a for a in attributes}
        done: list[tuple[ProbeRow, ProbeResult, Estimate]] = []
        for row in rows:
            attr = by_name[row.attribute]
            try:
                # the trained probe's permutations on the same folds: a p-value for "random
                # weights already expose it" (no control task: selectivity is not asked here)
                x = pool(random_embeddings[row.layer])
                result = self._probe(ctx, x, attr, row.result.null.size, control=False)
            except ProbeError as exc:
                out.notes.append(f"random-weights probe {attr.name} on {row.layer}: {exc}")
                continue
            done.append((row, result, self._estimate(ctx, result, attr)))
        adjusted = adjust_pvalues([result.p_value for _, result, _ in done], "holm")
        for (row, _, e), p_adj in zip(done, adjusted, strict=True):
            row.random = Estimate(e.value, e.ci_low, e.ci_high, e.n, float(p_adj))
            out.metrics[f"probe_random.{row.attribute}.{layer_key(row.layer)}"] = row.random

    def _origins(self, rows: list[ProbeRow], out: CheckOutput) -> None:
        """Per attribute x layer: did training put the attribute there, or does the input
        carry it (``probe_origin``); one note sentence per attribute encoded in the fused
        embedding."""
        p: ProbingCheck.Params = self.params  # type: ignore[assignment]
        for row in rows:
            if row.random is None:
                continue
            row.origin = probe_origin(
                row.estimate, row.random, row.result.chance, self._floor(row), p.alpha
            )
            out.metrics[f"probe_origin.{row.attribute}.{layer_key(row.layer)}"] = row.origin
            if row.layer == "embedding" and self._encoded(row):
                out.notes.append(origin_sentence(row, self._floor(row), p.alpha))

    def _positive_control(self, ctx: AuditContext, x: np.ndarray, out: CheckOutput) -> None:
        """The target must be decodable from the penultimate layer, or the pipeline is broken."""
        p: ProbingCheck.Params = self.params  # type: ignore[assignment]
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
                out.notes.append(f"positive control: {exc}")
                continue
            scores.append(result.score)
            if len(columns) == 1:
                estimate = score_estimate(result, ctx.groups, p.n_boot, p.alpha, ctx.seed)
        if not scores:
            return
        value = float(np.mean(scores))
        probs = _probs(ctx.cache.sweep().logits, kind)
        model_auroc = _task_auroc(y, probs, kind)
        out.metrics["positive_control.auroc"] = estimate or Estimate(value, n=len(y))
        out.metrics["positive_control.model_auroc"] = model_auroc
        floor = min(p.positive_control_min, model_auroc - p.positive_control_margin)
        # "the pipeline is broken" is a strong claim: it needs the whole CI below the floor,
        # not a point estimate that a small test split puts just under it by chance
        best = estimate.ci_high if estimate is not None and estimate.ci_high is not None else value
        passed = best >= floor
        out.metrics["positive_control.passed"] = int(passed)
        if not passed:
            out.findings.append(
                Finding(
                    check=self.name,
                    rule="positive_control",
                    severity="error",
                    message=(
                        f"positive control failed: a probe for the target on"
                        f" '{out.metrics['positive_control.layer']}' reaches AUROC {value:.3f}"
                        f" (CI upper end {best:.3f}; needs {floor:.3f}; the model itself"
                        f" reaches {model_auroc:.3f}). The"
                        " probing pipeline (layer choice, pooling, data) is in doubt, so"
                        " 'not encoded' results below are not evidence of absence"
                    ),
                    metric="positive_control.auroc",
                    value=value,
                    threshold=floor,
                )
            )

    # ------------------------------------------------------------------ erasure
    def _erasures(
        self, ctx: AuditContext, attributes: list[Attribute], out: CheckOutput
    ) -> list[ErasureRow]:
        p: ProbingCheck.Params = self.params  # type: ignore[assignment]
        raw = ctx.cache.embeddings("embedding")
        if raw.ndim != 2:
            out.notes.append(
                f"the fused embedding is not a vector (shape {raw.shape[1:]}): erasure skipped,"
                " so no attribute can be called used or not used"
            )
            return []
        x = raw.astype(np.float64)
        kind = ctx.config.data.target.kind
        y = ctx.target
        base = _probs(ctx.cache.sweep().logits, kind)
        boot = {"groups": ctx.groups, "n_boot": p.n_boot, "alpha": p.alpha, "seed": ctx.seed}

        # erase within target classes: an attribute associated with the target (a site with a
        # higher prevalence) would otherwise take the disease signal with it
        strata = y if kind in ("binary", "multiclass") else None
        if strata is None:
            out.notes.append("multilabel target: erasure is not conditioned on the labels")
        random_probs: dict[int, list[np.ndarray]] = {}
        rows: list[ErasureRow] = []
        for attr in attributes:
            if strata is not None and not attr.beyond_target:
                out.notes.append(
                    f"erasure of {attr.name} skipped: nearly collinear with the target, it"
                    " leaves too few rows within target classes to find its direction apart"
                    " from the label (erasing it across classes would erase the label), so"
                    " whether the head uses it is not tested"
                )
                continue
            z = (
                indicator_matrix(attr.values)
                if attr.kind == "categorical"
                else attr.values.astype(np.float64)
            )
            eraser = leace_fit(
                x[attr.known], z, within=strata[attr.known] if strata is not None else None
            )
            if eraser.rank == 0:
                out.notes.append(f"erasure of {attr.name}: no linear trace to erase (rank 0)")
                continue
            erased = _head_probs(ctx.cache, eraser, x, f"probing:leace:{attr.name}", kind)
            if eraser.rank not in random_probs:
                random_probs[eraser.rank] = [
                    _head_probs(
                        ctx.cache,
                        random_subspace_eraser(
                            x, eraser.rank, ctx.rng(f"probing:erase:{eraser.rank}:{j}"), strata
                        ),
                        x,
                        f"probing:random:{eraser.rank}:{j}",
                        kind,
                    )
                    for j in range(p.erasure_draws)
                ]
            randoms = random_probs[eraser.rank]
            effects = _erasure_effects(y, base, erased, randoms, kind, **boot)
            rows.append(
                ErasureRow(
                    attribute=attr.name,
                    rank=eraser.rank,
                    residual=self._residual(ctx, x, z, strata, attr),
                    dp_draws=np.array([_prob_change(base, r, kind).mean() for r in randoms]),
                    **effects,
                )
            )
        adjusted = adjust_pvalues([_p(r.excess) for r in rows], "holm")
        for row, p_adj in zip(rows, adjusted, strict=True):
            row.p_holm = float(p_adj)
            e = row.excess
            row.excess = Estimate(e.value, e.ci_low, e.ci_high, e.n, row.p_holm)
            a = row.attribute
            out.metrics[f"erasure.rank.{a}"] = row.rank
            out.metrics[f"erasure.dp.{a}"] = row.dp
            out.metrics[f"erasure.dp_random.{a}"] = row.dp_random
            out.metrics[f"erasure.dp_random_sd.{a}"] = row.dp_random_sd
            out.metrics[f"erasure.excess_dp.{a}"] = row.excess
            out.metrics[f"erasure.flip.{a}"] = row.flip
            out.metrics[f"erasure.flip_random.{a}"] = row.flip_random
            out.metrics[f"erasure.dauroc.{a}"] = row.dauroc
            out.metrics[f"erasure.dauroc_random.{a}"] = row.dauroc_random
            out.metrics[f"erasure.residual.{a}"] = row.residual
        return rows

    def _residual(
        self,
        ctx: AuditContext,
        x: np.ndarray,
        z: np.ndarray,
        strata: np.ndarray | None,
        attr: Attribute,
    ) -> float:
        """The probe score left after erasure, out of sample: each outer fold's eraser is fitted
        on its training rows (chance when LEACE did its job; with erasure within target classes
        the part of the attribute the target explains stays decodable)."""
        p: ProbingCheck.Params = self.params  # type: ignore[assignment]
        xk = x[attr.known]
        sk = strata[attr.known] if strata is not None else None

        def eraser_for(train: np.ndarray) -> LinearEraser:
            return leace_fit(xk[train], z[train], within=sk[train] if sk is not None else None)

        groups = ctx.groups[attr.known] if ctx.groups is not None else None
        try:
            return run_probe(
                xk,
                attr.values,
                attr.kind,  # type: ignore[arg-type]
                groups=groups,
                n_folds=p.n_folds,
                inner_folds=p.inner_folds,
                n_permutations=0,
                n_control=0,
                seed=ctx.seed,
                fold_transform=eraser_for,
            ).score
        except ProbeError:
            return math.nan

    # ------------------------------------------------------------------ verdicts
    def _verdicts(
        self,
        attributes: list[Attribute],
        rows: list[ProbeRow],
        erasures: list[ErasureRow],
        out: CheckOutput,
    ) -> dict[str, str]:
        p: ProbingCheck.Params = self.params  # type: ignore[assignment]
        fused = {r.attribute: r for r in rows if r.layer == "embedding"}
        erased = {e.attribute: e for e in erasures}
        verdicts: dict[str, str] = {}
        for attr in attributes:
            row = fused.get(attr.name)
            if row is None:
                out.notes.append(
                    f"{attr.name}: no verdict -- its probe on the fused embedding did not run"
                    f" (see 'probe {attr.name} on embedding'), so whether it is encoded there,"
                    " and used, is not judged"
                    + ("; the erasure effects are still reported" if attr.name in erased else "")
                )
                continue
            encoded = self._encoded(row)
            e = erased.get(attr.name)
            if e is None and encoded:
                verdicts[attr.name] = "encoded_use_untested"
                out.metrics[f"verdict.{attr.name}"] = verdicts[attr.name]
                continue
            used = e is not None and used_by_head(e, p.alpha, p.used_min_dp)
            if e is not None and not used and excess_significant(e, p.alpha, p.used_min_dp):
                out.notes.append(
                    f"{attr.name}: erasing it moves predictions more than the mean random"
                    f" subspace (excess |dp| {e.excess.value:.3f}), but not beyond the spread"
                    f" of the {e.dp_draws.size} random draws (|dp| {e.dp.value:.3f}; random"
                    f" {e.dp_draws.min():.3f} to {e.dp_draws.max():.3f}): not called used"
                )
            verdict = VERDICTS[0] if not encoded else VERDICTS[2] if used else VERDICTS[1]
            verdicts[attr.name] = verdict
            out.metrics[f"verdict.{attr.name}"] = verdict
            out.metrics[f"encoded_and_used.{attr.name}"] = int(verdict == VERDICTS[2])
        return verdicts


# ----------------------------------------------------------------------------- helpers


def prepare_attribute(
    name: str, raw: np.ndarray, kind: str, max_levels: int, min_level_size: int
) -> tuple[Attribute | None, str]:
    """The attribute's known rows and values, or None with the reason (a note for the report).

    Missing values (NaN / empty) are left out and counted; categorical levels with fewer than
    ``min_level_size`` rows are left out; one level, a constant value or too many levels
    leave nothing to probe.
    """
    series = pd.Series(raw)
    known = ~series.isna().to_numpy()
    notes: list[str] = []
    missing = int((~known).sum())
    if missing:
        notes.append(f"{missing} rows with no value left out")
    if kind == "continuous":
        values = pd.to_numeric(series[known], errors="coerce").to_numpy(dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            idx = np.flatnonzero(known)
            known[idx[~finite]] = False
            values = values[finite]
        if values.size < 4 or float(np.std(values)) == 0.0:
            return None, f"attribute {name}: constant or too few values; not probed"
        return Attribute(name, kind, known, values), _joined(name, notes)
    values = series[known].astype(str).to_numpy()
    levels, counts = np.unique(values, return_counts=True)
    if len(levels) > max_levels:
        return None, (
            f"attribute {name}: {len(levels)} levels (more than max_levels={max_levels});"
            " not probed"
        )
    rare = levels[counts < min_level_size]
    if rare.size:
        notes.append(
            f"levels with fewer than {min_level_size} rows left out: "
            + ", ".join(f"{lv} (n={c})" for lv, c in zip(levels, counts, strict=True) if lv in rare)
        )
        keep = ~np.isin(values, rare)
        idx = np.flatnonzero(known)
        known[idx[~keep]] = False
        values = values[keep]
    if np.unique(values).size < 2:
        only = ", ".join(np.unique(values)) or "none"
        return None, _joined(name, [*notes, f"one level only ({only}): not probed"])
    return Attribute(name, kind, known, values), _joined(name, notes)


def unprobed_reason(
    name: str, raw: np.ndarray, kind: str, max_levels: int, min_level_size: int
) -> str:
    """Why ``prepare_attribute`` left an attribute out, in a few words with its counts
    ("A 3 / B 2 rows, each level needs min_level_size = 10"), for the skip reason."""
    series = pd.Series(raw)
    known = series[~series.isna()]
    if known.empty:
        return "no row has a value"
    if kind == "continuous":
        values = pd.to_numeric(known, errors="coerce").to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        distinct = np.unique(values).size
        return f"{values.size} finite value(s), {distinct} distinct (needs 4, not constant)"
    counts = known.astype(str).value_counts(sort=False).sort_index()
    if len(counts) > max_levels:
        return f"{len(counts)} levels (more than max_levels = {max_levels})"
    shown = " / ".join(f"{level} {c}" for level, c in counts.items())
    if len(counts) == 1:
        return f"one level only, {shown} rows"
    return f"{shown} rows, each level needs min_level_size = {min_level_size}"


def _left_out_rows(raw: np.ndarray, attr: Attribute) -> str:
    """Which rows an attribute's probes leave out, with counts: no value, rare levels."""
    series = pd.Series(raw)
    missing = int(series.isna().sum())
    parts = [f"{missing} with no value"] if missing else []
    rare = int((~attr.known).sum()) - missing
    if rare and attr.kind == "continuous":
        parts.append(f"{rare} non-finite")
    elif rare:
        kept = set(np.unique(attr.values).tolist())
        levels = series[~series.isna()].astype(str)
        dropped = levels[~levels.isin(kept)].value_counts().sort_index()
        what = ", ".join(f"{lv} (n={c})" for lv, c in dropped.items())
        parts.append(f"{rare} in levels too rare to probe: {what}")
    return "; ".join(parts) or "rows left out"


def collinear_with_target(attr: Attribute, y: np.ndarray, min_level_size: int) -> str | None:
    """Why the attribute cannot be probed beyond the target, or None when it can.

    Within target classes a categorical attribute needs rows off its majority level: fewer
    than ``min_level_size`` over all classes (the size below which a level is not probed
    at all) and the within-class AUROC rests on a handful of rows. A continuous one needs
    variance left within classes (at least 5 % of its total). Such an attribute is nearly
    the label itself -- a site that is 99 % one class -- so whatever encodes the label
    encodes it: it is judged on the plain probe, its erasure (use) is not tested, and the
    notes say so."""
    target = np.asarray(y)[attr.known]
    if attr.kind == "categorical":
        table = pd.crosstab(attr.values, target)
        off_majority = int((table.sum(axis=0) - table.max(axis=0)).sum())
        if off_majority >= min_level_size:
            return None
        detail = f"only {off_majority} row(s) lie off their class's most common {attr.name}"
    else:
        values = attr.values.astype(np.float64)
        total = float(np.var(values))
        within = float(
            sum(np.var(values[target == c]) * np.mean(target == c) for c in np.unique(target))
        )
        if total == 0 or within >= 0.05 * total:
            return None
        detail = f"{within / total:.1%} of its variance lies within target classes"
    return (
        f"{attr.name} is nearly collinear with the target ({detail}): it cannot be told"
        f" apart from the label, so 'encoded' is judged on the plain probe"
        f" (probe_*.{attr.name}.* = probe_*_marginal.{attr.name}.*) -- a layer that encodes"
        " the label encodes it too; erasure is still done within target classes"
    )


def target_association(
    attr: Attribute, y: np.ndarray, kind: str, within_target: bool = True
) -> str | None:
    """A note when the attribute is associated with the target (p < 0.05): a plain probe can
    then decode it through the disease signal alone. With ``within_target`` the judged
    probes are beyond the target (within target classes) and the note says so; without, it
    warns that layers encoding the target can decode the attribute through it. (The erasure
    is done within target classes either way.)"""
    if kind not in ("binary", "multiclass"):
        return None
    from scipy.stats import chi2_contingency, kruskal

    target = y[attr.known]
    if attr.kind == "categorical":
        table = pd.crosstab(attr.values, target)
        if table.shape[0] < 2 or table.shape[1] < 2:
            return None
        p = float(chi2_contingency(table.to_numpy())[1])
        if kind == "binary":
            rates = (table[table.columns[-1]] / table.sum(axis=1)).round(2)
            detail = "prevalence " + ", ".join(f"{k} {v:.2f}" for k, v in rates.items())
        else:
            detail = f"chi-square p = {p:.2g}"
    else:
        samples = [attr.values[target == c] for c in np.unique(target)]
        if len(samples) < 2 or min(len(v) for v in samples) < 2:
            return None
        p = float(kruskal(*samples).pvalue)
        detail = "mean " + ", ".join(
            f"{c}: {v.mean():.3g}" for c, v in zip(np.unique(target), samples, strict=True)
        )
    if p >= 0.05:
        return None
    head = f"{attr.name} is associated with the target ({detail}; p = {p:.2g}): "
    if within_target:
        return head + (
            f"a plain probe decodes {attr.name} from any layer that encodes the target"
            f" (probe_*_marginal.{attr.name}.*), so 'encoded' is judged within target"
            f" classes (probe_*.{attr.name}.*); erasure is done within target classes so"
            " 'used' is not confounded"
        )
    return head + (
        f"layers that encode the target can decode {attr.name} through it; erasure is done"
        " within target classes so 'used' is not confounded"
    )


def probe_origin(
    trained: Estimate, random: Estimate, chance: float, floor: float, alpha: float
) -> str:
    """Where a layer's trace of an attribute comes from (one of ``ORIGINS``), from the trained
    and the random-weights probe of that layer.

    ``training``: the trained probe's CI lies wholly above the random-weights CI (and above
    chance) -- training put the attribute there, or amplified what the input carried.
    ``input``: otherwise, if a randomly initialised copy of the model already exposes it
    (its Holm-corrected permutation p < alpha -- or, without one, its CI above chance --
    and its score at the verdict floor or above): the input carries it. ``undetermined``:
    neither (the intervals overlap and random weights do not clearly expose it).
    """
    lo, hi = trained.ci_low, random.ci_high
    if lo is not None and hi is not None and lo > max(hi, chance):
        return ORIGINS[0]
    return ORIGINS[1] if random_exposes(random, chance, floor, alpha) else ORIGINS[2]


def random_exposes(random: Estimate, chance: float, floor: float, alpha: float) -> bool:
    """The random-weights probe decodes the attribute: Holm permutation p < alpha (or, without
    one, CI above chance) and a score at the verdict floor or above."""
    if random.null_p is not None and math.isfinite(random.null_p):
        significant = random.null_p < alpha
    else:
        significant = random.ci_low is not None and random.ci_low > chance
    return significant and random.value >= floor


def origin_sentence(row: ProbeRow, floor: float, alpha: float) -> str:
    """The report's sentence on where an attribute encoded in ``row.layer`` comes from."""
    assert row.random is not None
    metric = "AUROC" if row.result.metric == "auroc" else "R²"
    t, r = row.estimate, row.random
    trained = f"{metric} {t.value:.2f} [{_num(t.ci_low)}, {_num(t.ci_high)}]"
    rand = f"{metric} {r.value:.2f} [{_num(r.ci_low)}, {_num(r.ci_high)}], Holm p {_num(r.null_p)}"
    where = f"the {row.layer} layer" if row.layer != "embedding" else "the fused embedding"
    a = row.attribute
    if row.origin == ORIGINS[0]:
        if random_exposes(r, row.result.chance, floor, alpha):
            return (
                f"{a}: training amplified what the input carries -- a randomly initialised"
                f" copy of the model already exposes it in {where} ({rand}), the trained"
                f" model clearly more ({trained})"
            )
        return (
            f"{a}: training put it there -- the trained model encodes it in {where}"
            f" ({trained}) clearly above a randomly initialised copy ({rand})"
        )
    if row.origin == ORIGINS[1]:
        return (
            f"{a}: the input carries it -- a randomly initialised copy of the model already"
            f" exposes it in {where} ({rand}), and the trained model is not clearly above"
            f" that ({trained})"
        )
    return (
        f"{a}: whether the input carries it or training put it there is undetermined --"
        f" trained {trained} vs random weights {rand}: the intervals overlap and random"
        " weights do not clearly expose it"
    )


def _num(v: float | None) -> str:
    """A CI end or p-value for a sentence: two decimals, two significant digits below 0.01."""
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.2g}" if abs(v) < 0.01 else f"{v:.2f}"


def excess_significant(e: ErasureRow, alpha: float, min_dp: float) -> bool:
    """Erasing the attribute moves predictions more than the *mean* random subspace: excess
    |dp| with Holm p < alpha, CI above zero and at least ``min_dp``."""
    return e.p_holm < alpha and e.excess.value >= min_dp and (e.excess.ci_low or 0.0) > 0


def used_by_head(e: ErasureRow, alpha: float, min_dp: float) -> bool:
    """The verdict "used": the excess over the mean random subspace is significant *and* the
    attribute's |dp| lies beyond the spread of the random draws (above their 1 - alpha
    quantile). With many draws the mean is known precisely, so an attribute at, say, the
    70th percentile of random subspaces would pass the first test alone -- yet erasing it
    does no more than erasing a typical direction of that rank."""
    return excess_significant(e, alpha, min_dp) and e.dp.value > e.random_upper(alpha)


def layer_key(layer: str) -> str:
    """A layer name fit for one dotted-metric segment (module paths: dots become ``_``)."""
    return layer.replace(".", "_")


def _joined(name: str, notes: list[str]) -> str:
    return f"attribute {name}: " + "; ".join(notes) if notes else ""


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _p(e: Estimate) -> float:
    return math.nan if e.null_p is None else float(e.null_p)


def _probs(logits: np.ndarray, kind: str) -> np.ndarray:
    """Probabilities: softmax over several columns (multiclass, two-logit binary), else
    sigmoid (one-logit binary, multilabel)."""
    from mmaudit.engine.cache import logits_to_probs

    if logits.shape[1] > 1 and kind in ("multiclass", "binary"):
        return logits_to_probs(logits, "multiclass")  # a two-logit binary head is a softmax
    return logits_to_probs(logits, "multilabel")


def _score(probs: np.ndarray) -> np.ndarray:
    """P(positive) of a binary model (one sigmoid column or the last softmax column)."""
    return probs[:, -1]


def _task_auroc(y: np.ndarray, probs: np.ndarray, kind: str) -> float:
    """AUROC of the model's task: binary, macro one-vs-rest, or macro over labels."""
    if kind == "binary":
        return auroc(y, _score(probs))
    if kind == "multiclass":
        per = [auroc(y == k, probs[:, k]) for k in range(probs.shape[1])]
    else:
        per = [auroc(y[:, k], probs[:, k]) for k in range(probs.shape[1])]
    per = [v for v in per if math.isfinite(v)]
    return float(np.mean(per)) if per else math.nan


def _erasure_effects(
    y: np.ndarray,
    base: np.ndarray,
    erased: np.ndarray,
    randoms: list[np.ndarray],
    kind: str,
    *,
    groups: np.ndarray | None,
    n_boot: int,
    alpha: float,
    seed: int,
) -> dict[str, Estimate]:
    """Every erasure effect with a paired bootstrap CI: the same patient resamples serve the
    attribute's erasure and the random ones, so their difference is paired.

    dp / dp_random: mean per-sample probability change; excess: their difference (with a
    one-sided p-value: does erasing the attribute move predictions more than a random
    subspace?); flip / flip_random: decision flip rates; dauroc / dauroc_random: change in the
    task AUROC. A ``*_random`` value is the mean over the J random draws; each bootstrap
    resample also redraws J of the J draws with replacement, so the reference's CI (and
    the excess's p-value) carry the spread between random subspaces, not only the patient
    sampling -- a few draws that disagree make the reference uncertain. Binary targets:
    each resample's AUROCs come from one weighted rank pass (``_bootstrap``); other targets
    loop over the same patient resamples (``_auroc_boot``).
    """
    n = len(y)
    j = len(randoms)
    dp = _prob_change(base, erased, kind)
    flip = _flips(base, erased, kind).astype(np.float64)
    dp_draws = [_prob_change(base, r, kind) for r in randoms]
    flip_draws = [_flips(base, r, kind).astype(np.float64) for r in randoms]
    means = [dp, flip, *dp_draws, *flip_draws]
    probs = [base, erased, *randoms]
    if kind == "binary":
        scores = [_score(p) for p in probs]
        m_boot, a_boot = _bootstrap(y == 1, means, scores, groups, n_boot, seed)
    else:
        m_boot, _ = _bootstrap(y, means, [], groups, n_boot, seed)
        a_boot = _auroc_boot(y, probs, kind, groups, n_boot, seed)
    # which J of the J random draws each resample uses (its reference is their mean)
    pick = np.random.default_rng([seed, 1]).integers(0, j, (n_boot, j))

    def reference(per_draw: np.ndarray) -> np.ndarray:
        return np.take_along_axis(per_draw, pick, axis=1).mean(axis=1)

    dp_rand = float(np.mean(dp_draws))
    dp_rand_boot = reference(m_boot[:, 2 : 2 + j])
    flip_rand = float(np.mean(flip_draws))
    base_auc = _task_auroc(y, base, kind)
    value = _task_auroc(y, erased, kind) - base_auc
    value_random = float(np.mean([_task_auroc(y, r, kind) for r in randoms])) - base_auc
    return {
        "dp": _from_boot(float(dp.mean()), m_boot[:, 0], n, n_boot, alpha),
        "dp_random": _from_boot(dp_rand, dp_rand_boot, n, n_boot, alpha),
        "excess": _from_boot(
            float(dp.mean()) - dp_rand, m_boot[:, 0] - dp_rand_boot, n, n_boot, alpha, "greater"
        ),
        "flip": _from_boot(float(flip.mean()), m_boot[:, 1], n, n_boot, alpha),
        "flip_random": _from_boot(flip_rand, reference(m_boot[:, 2 + j :]), n, n_boot, alpha),
        "dauroc": _from_boot(value, a_boot[:, 1] - a_boot[:, 0], n, n_boot, alpha, "two-sided"),
        "dauroc_random": _from_boot(
            value_random, reference(a_boot[:, 2:]) - a_boot[:, 0], n, n_boot, alpha
        ),
    }


def _auroc_boot(
    y: np.ndarray,
    probs: list[np.ndarray],
    kind: str,
    groups: np.ndarray | None,
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """The task AUROC of every probability matrix on each patient resample (B, S), for
    multiclass and multilabel targets: the resamples of ``stats.bootstrap_ci`` for the seed,
    one Python step per resample (a macro AUROC has no single weighted rank pass)."""
    out = np.full((n_boot, len(probs)), np.nan)
    draws = bootstrap_groups(len(y), groups, n_boot, np.random.default_rng(seed))
    for b, idx in enumerate(draws):
        out[b] = [_task_auroc(y[idx], p[idx], kind) for p in probs]
    return out


def _bootstrap(
    y: np.ndarray,
    means: list[np.ndarray],
    scores: list[np.ndarray],
    groups: np.ndarray | None,
    n_boot: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each resample's mean of every ``means`` vector (B, M) and AUROC of every score against
    the 0/1 labels ``y`` (B, S), patients drawn whole (the draws of ``stats.bootstrap_ci``).

    A resample is the data with row i repeated w_i times: a mean is ``w @ v / sum(w)``, and
    the Mann-Whitney U is, per block of tied scores, (positive weight in the block) x
    (negative weight below it + half the negative weight in it). Blocks of resamples keep
    memory near 2M weights whatever n is.
    """
    n = len(y)
    rng = np.random.default_rng(seed)
    m_out = np.full((n_boot, len(means)), np.nan)
    a_out = np.full((n_boot, len(scores)), np.nan)
    stacked = np.stack(means, axis=1) if means else np.zeros((n, 0))
    sorted_ = []
    for s in scores:
        order = np.argsort(s, kind="stable")
        ss = s[order]
        ties = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
        sorted_.append((order, ties, np.asarray(y, dtype=np.float64)[order]))
    block = max(1, (1 << 21) // max(n, 1))
    draws = bootstrap_groups(n, groups, n_boot, rng)
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        w = np.stack([np.bincount(next(draws), minlength=n) for _ in range(b)]).astype(np.float64)
        m_out[start : start + b] = (w @ stacked) / w.sum(axis=1, keepdims=True)
        for k, (order, ties, pos) in enumerate(sorted_):
            ws = w[:, order]
            pos_at = np.add.reduceat(ws * pos, ties, axis=1)
            neg_at = np.add.reduceat(ws * (1 - pos), ties, axis=1)
            below = np.cumsum(neg_at, axis=1) - neg_at
            u = (pos_at * (below + 0.5 * neg_at)).sum(axis=1)
            den = pos_at.sum(axis=1) * neg_at.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                a_out[start : start + b, k] = np.where(den > 0, u / den, np.nan)
    return m_out, a_out


def _from_boot(
    value: float,
    boot: np.ndarray,
    n: int,
    n_boot: int,
    alpha: float,
    p_value: Literal["two-sided", "greater"] | None = None,
) -> Estimate:
    """Percentile CI (None under half valid resamples, as in ``stats``) and, if asked, the
    p-value of "no change" from the bootstrap standard error (normal approximation: unlike
    counting resamples beyond zero it is not floored at 2 / (B + 1), which would make Holm
    over many tests unable to flag anything). ``greater`` is one-sided: the alternative is
    a positive value (erasing the attribute moves predictions *more* than a random
    subspace), so a negative value gets p > 0.5, never a small one."""
    valid = boot[np.isfinite(boot)]
    if not math.isfinite(value) or valid.size < 2 or valid.size < n_boot / 2:
        return Estimate(value, None, None, n)
    lo, hi = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    p = None
    if p_value is not None:
        se = float(np.std(valid, ddof=1))
        if se == 0:  # no resampling variation: the sign of the value decides
            beyond = value > 0 if p_value == "greater" else value != 0
            p = 0.0 if beyond else 1.0
        elif p_value == "greater":
            p = 0.5 * math.erfc(value / se / math.sqrt(2))
        else:
            p = math.erfc(abs(value) / se / math.sqrt(2))
    return Estimate(value, float(lo), float(hi), n, p)


def _prob_change(base: np.ndarray, new: np.ndarray, kind: str) -> np.ndarray:
    """Per-sample change: |dp| (binary), total variation (multiclass), mean |dp| (multilabel)."""
    if kind == "binary":
        return np.abs(_score(new) - _score(base))
    if kind == "multiclass":
        return 0.5 * np.abs(new - base).sum(axis=1)
    return np.abs(new - base).mean(axis=1)


def _flips(base: np.ndarray, new: np.ndarray, kind: str) -> np.ndarray:
    """Per-sample: did the decision change (threshold 0.5, arg-max, or any label)."""
    if kind == "binary":
        return (_score(new) >= 0.5) != (_score(base) >= 0.5)
    if kind == "multiclass":
        return new.argmax(axis=1) != base.argmax(axis=1)
    return ((new >= 0.5) != (base >= 0.5)).any(axis=1)


def _head_probs(
    cache: InferenceCache, eraser: LinearEraser, x: np.ndarray, key: str, kind: str
) -> np.ndarray:
    """The head's probabilities on the erased fused embedding (encoders not re-run)."""
    erased = eraser(x).astype(np.float32)
    return _probs(cache.logits_with_layer("embedding", erased, key=key), kind)


def reinitialise(module: Any, seed: int) -> None:
    """Re-draw every weight of ``module`` (CPU) in place, deterministically, leaving the global
    torch RNG as it was: ``reset_parameters()`` where a module has it (its default init),
    N(0, 0.02) for parameters no such module owns (tokens, attention projections)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        touched: set[int] = set()
        for m in module.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
                touched.update(id(q) for q in m.parameters(recurse=False))
        with torch.no_grad():
            for q in module.parameters():
                if id(q) not in touched:
                    q.normal_(0.0, 0.02)


def randomised_embeddings(ctx: AuditContext, layers: list[str]) -> dict[str, np.ndarray]:
    """Layer outputs of a re-initialised copy of the audited model, through the same data.

    A deep copy (moved to the CPU to re-draw the weights, then to the audit device) gets a
    second adapter and cache, so the audited module is never touched; one pass.
    """
    import copy

    from mmaudit.engine.adapter import ModelAdapter
    from mmaudit.engine.cache import InferenceCache

    ad = ctx.adapter
    clone = copy.deepcopy(ad.module).cpu()
    reinitialise(clone, ctx.seed)
    twin = ModelAdapter(
        clone,
        source=f"{ad.source} (random weights)",
        modalities=ad.modalities,
        keywords=ad.keywords,
        layers=ad.layers,
        detected={},
        device=ad.device,
        precision=ad.precision,
        scriptable_hooks=ad.supports_hooks,
        model_modalities=ad.model_modalities,
    )
    cache = InferenceCache(
        twin,
        ctx.dataset,
        batch_size=ctx.cache.batch_size,
        num_workers=ctx.cache.num_workers,
        seed=ctx.seed,
        progress=ctx.cache.progress,
        target_kind=ctx.cache.target_kind,
    )
    cache.request_layers(layers)
    sweep = cache.sweep()
    return {name: sweep.embeddings[name] for name in layers}


# ----------------------------------------------------------------------------- tables


def _probe_table(rows: list[ProbeRow], alpha: float) -> pd.DataFrame:
    records = []
    for r in rows:
        lo, hi = r.result.null_band(alpha)
        records.append(
            {
                "attribute": r.attribute,
                "layer": r.layer,
                "metric": r.result.metric,
                "within_target": r.result.conditional,
                "score": r.estimate.value,
                "ci_low": r.estimate.ci_low,
                "ci_high": r.estimate.ci_high,
                "marginal_score": r.marginal.value if r.marginal else math.nan,
                "marginal_ci_low": _nan(r.marginal.ci_low) if r.marginal else math.nan,
                "marginal_ci_high": _nan(r.marginal.ci_high) if r.marginal else math.nan,
                "ridge_score": r.result.test_score,
                "p_perm": r.result.p_value,
                "p_holm": r.p_holm,
                "null_low": lo,
                "null_high": hi,
                "control": r.result.control,
                "selectivity": r.result.selectivity,
                "random_weights": r.random.value if r.random else math.nan,
                "training_gain": r.estimate.value - r.random.value if r.random else math.nan,
                "random_ci_low": r.random.ci_low if r.random else math.nan,
                "random_ci_high": r.random.ci_high if r.random else math.nan,
                "random_p_holm": _p(r.random) if r.random else math.nan,
                "origin": r.origin,
                "n": r.estimate.n,
                "folds": r.result.n_folds,
                "permuted": r.result.permuted,
            }
        )
    return pd.DataFrame(records)


def _erasure_table(rows: list[ErasureRow], verdicts: dict[str, str]) -> pd.DataFrame:
    records = []
    for r in rows:
        rec: dict[str, Any] = {"attribute": r.attribute, "rank": r.rank}
        for key in ("dp", "dp_random", "excess", "flip", "flip_random", "dauroc", "dauroc_random"):
            e: Estimate = getattr(r, key)
            rec[key] = e.value
            rec[f"{key}_ci_low"] = e.ci_low
            rec[f"{key}_ci_high"] = e.ci_high
        rec["dp_random_sd"] = r.dp_random_sd
        rec["dp_random_min"] = float(r.dp_draws.min())
        rec["dp_random_max"] = float(r.dp_draws.max())
        rec["random_draws"] = r.dp_draws.size
        rec["excess_p_holm"] = r.p_holm
        rec["residual_probe"] = r.residual
        rec["verdict"] = verdicts.get(r.attribute, "")
        records.append(rec)
    return pd.DataFrame(records)


# ----------------------------------------------------------------------------- figures


def heatmap_label(r: ProbeRow, alpha: float) -> str:
    """A heatmap cell's text: the reported score, and the score the permutation test is
    about beside its null band and Holm mark. For a categorical attribute the reported
    score is the logistic AUROC and the tested one the ridge AUROC on the same folds (see
    ``mmaudit.methods.probes``); for a continuous one they are the same ridge R². A probe beyond
    the target adds the plain (marginal) score on a third line."""
    lo, hi = r.result.null_band(alpha)
    star = "*" if r.p_holm < alpha else ""
    null = f"null [{lo:.2f}, {hi:.2f}]"
    if r.result.metric == "auroc":
        text = f"AUROC {r.result.score:.2f}\nridge {r.result.test_score:.2f}{star} vs {null}"
    else:
        text = f"R² {r.result.score:.2f}{star}\nvs {null}"
    if r.marginal is not None:
        text += f"\nmarginal {r.marginal.value:.2f}"
    return text


def _heatmap(rows: list[ProbeRow], layers: list[str], alpha: float) -> Figure:
    """Layer x attribute probe scores; each cell annotated with the tested score and its null
    band (``heatmap_label``)."""
    plt = pyplot()
    attrs = list(dict.fromkeys(r.attribute for r in rows))
    lays = [ly for ly in layers if any(r.layer == ly for r in rows)]
    grid = np.full((len(lays), len(attrs)), np.nan)
    fig, ax = plt.subplots(figsize=(1.9 * len(attrs) + 2.2, 1.1 * len(lays) + 1.6))
    for r in rows:
        i, j = lays.index(r.layer), attrs.index(r.attribute)
        score = r.result.score
        # decodability on one scale: 2 AUROC - 1 (0 = chance) or R^2
        grid[i, j] = 2 * score - 1 if r.result.metric == "auroc" else score
        ax.text(j, i, heatmap_label(r, alpha), ha="center", va="center", fontsize=7)
    image = ax.imshow(np.clip(grid, 0, 1), cmap="Oranges", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(attrs)), attrs)
    ax.set_yticks(range(len(lays)), lays)
    within = any(r.result.conditional for r in rows)
    ax.set_title(
        "probe score per layer and attribute"
        + (" -- within target classes (beyond the target)" if within else "")
        + f"\nnull band and * (Holm p < {alpha:g}): the ridge read-out the permutation test"
        " scores",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, label="decodability (2 AUROC - 1, or R²)")
    fig.tight_layout()
    return fig


def _null_figure(rows: list[ProbeRow], layers: list[str], alpha: float) -> Figure:
    """Per attribute: probe score with CI per layer against the null band, control and the
    random-weights baseline."""
    plt = pyplot()
    attrs = list(dict.fromkeys(r.attribute for r in rows))
    fig, axes = plt.subplots(1, len(attrs), figsize=(3.6 * len(attrs), 3.4), squeeze=False)
    for ax, attr in zip(axes[0], attrs, strict=True):
        mine = [r for r in rows if r.attribute == attr]
        mine.sort(key=lambda r: layers.index(r.layer) if r.layer in layers else 99)
        for i, r in enumerate(mine):
            lo, hi = r.result.null_band(alpha)
            ax.fill_between([i - 0.3, i + 0.3], lo, hi, color="0.85", lw=0)
            e = r.estimate
            err = (
                [[e.value - e.ci_low], [e.ci_high - e.value]]
                if e.ci_low is not None and e.ci_high is not None
                else None
            )
            ax.errorbar(i, e.value, yerr=err, fmt="o", color="C0", capsize=3)
            if r.result.metric == "auroc":  # the statistic the null band is for
                ax.plot(i + 0.15, r.result.test_score, "D", ms=4, color="C1")
            ax.plot(i, r.result.control, "x", color="C3")
            if r.random is not None:
                ax.plot(i, r.random.value, "s", mfc="none", color="C2")
            if r.marginal is not None:
                ax.plot(i - 0.15, r.marginal.value, "+", ms=7, color="0.3")
        ax.set_xticks(range(len(mine)), [r.layer for r in mine], rotation=30)
        ax.set_title(f"{attr} ({mine[0].result.metric})")
        ax.axhline(mine[0].result.chance, color="0.5", lw=0.8, ls=":")
    within = any(r.result.conditional for r in rows)
    axes[0][0].set_ylabel("probe score" + (" within target classes" if within else ""))
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Line2D([], [], marker="o", ls="", color="C0", label="probe (95% CI)"),
        Line2D([], [], marker="D", ms=4, ls="", color="C1", label="ridge read-out (tested)"),
        Patch(color="0.85", label="permutation null of the tested score, 95%"),
        Line2D([], [], marker="x", ls="", color="C3", label="control task"),
        Line2D([], [], marker="s", ls="", mfc="none", color="C2", label="random weights"),
    ]
    if any(r.marginal is not None for r in rows):
        handles.append(
            Line2D([], [], marker="+", ms=7, ls="", color="0.3", label="marginal (not judged)")
        )
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    return fig


def _erasure_figure(rows: list[ErasureRow]) -> Figure:
    """Mean |dp|, flip rate and change in AUROC after erasing each attribute vs a random
    subspace of the same rank; the |dp| panel also marks each random draw."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(5 + 2.1 * len(rows), 3.4))
    names = [r.attribute for r in rows]
    x = np.arange(len(rows))
    for ax, (own, rand, label) in zip(
        axes,
        [
            ("dp", "dp_random", "mean |Δp|"),
            ("flip", "flip_random", "flip rate"),
            ("dauroc", "dauroc_random", "Δ AUROC"),
        ],
        strict=True,
    ):
        for offset, key, colour, text in (
            (-0.18, own, "C3", "attribute erased (LEACE)"),
            (0.18, rand, "0.6", "random subspace, same rank"),
        ):
            est = [getattr(r, key) for r in rows]
            values = np.array([e.value for e in est], dtype=float)
            lo = np.array([e.ci_low if e.ci_low is not None else e.value for e in est], float)
            hi = np.array([e.ci_high if e.ci_high is not None else e.value for e in est], float)
            ax.bar(x + offset, values, width=0.36, color=colour, label=text)
            ax.errorbar(
                x + offset,
                values,
                yerr=[values - lo, hi - values],
                fmt="none",
                ecolor="k",
                capsize=3,
            )
        ax.set_xticks(x, names)
        ax.set_ylabel(label)
        ax.axhline(0, color="0.4", lw=0.8)
    for i, r in enumerate(rows):  # the spread the random reference comes from
        axes[0].plot(
            np.full(r.dp_draws.size, i + 0.18),
            r.dp_draws,
            "_",
            color="k",
            ms=8,
            label="each random draw" if i == 0 else None,
        )
    axes[0].legend(fontsize=8)
    fig.suptitle("used or only encoded: the head's predictions after erasure (95% CI)")
    fig.tight_layout()
    return fig
