"""Check ``attribution``: which report words and which lab values the predictions rest on.

The check class: its parameters, thresholds and requirements, and ``run``, which calls
the stages in order -- report words (``text``), labs (``tabular``), modality shares
(``shares``) -- and merges what each returns into the check's output.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mmaudit.checks.attribution.rules import ATTRIBUTION_RULES
from mmaudit.checks.attribution.scope import (
    multilabel_note,
    shares_unavailable,
    tabular_unavailable,
    text_unavailable,
)
from mmaudit.checks.attribution.shares import modality_shares
from mmaudit.checks.attribution.tabular import attribute_labs
from mmaudit.checks.attribution.text import attribute_text
from mmaudit.checks.contract import (
    AuditContext,
    Check,
    CheckOutput,
    Requirements,
    ThresholdRule,
    register,
)
from mmaudit.checks.findings import count_judged
from mmaudit.methods.attribution_target import Target
from mmaudit.methods.memory_budget import MemoryBudget
from mmaudit.methods.text_attribution import DEFAULT_STOPLIST


@register
class AttributionCheck(Check):
    """Which report words and which lab values the model's predictions rest on.

    What: (1) **text** -- Integrated Gradients on the token-embedding layer (the report's
    words moved from ``[PAD]`` to their values; image and labs held at their observed,
    cached encoder outputs), tokens merged into words, and a ranking of words by mean
    attribution per class (words seen in fewer than ``min_count`` reports are not ranked,
    so one rare word with one huge score cannot top it). The completeness error of IG is
    reported. For the words carrying most attribution, a test of whether the word tells
    the *site* apart among reports with the same *label* (the site shuffled within label
    classes ``n_boot`` times; Holm corrected -- see ``SiteGivenLabel`` for why not "site
    better than label", which a site tied to prevalence turns into a coin flip); words
    in a configurable stop-list (institutions, workflow, template
    words) are never clinical findings. (2) **tabular** -- SHAP values of the lab features
    (``shap`` PermutationExplainer by default; captum GradientShap optional) with the
    image and report fixed at their observed values, on a capped sample: mean |SHAP| with
    CIs, a beeswarm summary, dependence plots, importance per subgroup, and the same
    site-within-label test per feature (value and missingness). (3) **shares** -- per
    sample, each modality's share of the total absolute attribution, from Integrated
    Gradients over all encoder outputs at once (MM-SHAP style, one method and one output
    scale for every modality, so the shares are comparable), set in one table beside exact
    per-sample logit Shapley shares over every coalition of encoder outputs (the cache's
    memoised encoder-level ablation, removal = the IG reference by default, so the two
    are the same game and agree exactly for an additive fusion; a gap is interaction).
    Why: reports and labs carry shortcuts as images do (a hospital's template phrase, a
    lab only ordered at one site); a model that reads the hospital name is not reading
    the findings. Attribution says what the model *used* for these predictions; whether
    a word or lab merely *encodes* the site is the site test.
    Scores attributed: the positive-class logit (binary); for a multilabel target every
    label's logit, each label a binary target of its own (report words: one IG pass per
    label, ranked over every report toward the label and toward "not <label>"; the labs and
    the shares explain the label ``target_class`` only, as their cost is per label); for a
    multiclass target each sample's predicted class logit (ranked over the reports
    predicted that class). A binary model's negative-class views (its word ranking, its
    examples) show that attribution negated, i.e. of ``-logit(1)``; the ranking's
    ``direction`` and ``logit_attribution`` columns and each example's title name the score
    shown. Every CI resamples patients.
    Cost bounds: text IG runs on at most ``max_text_samples`` reports (1000), drawn
    stratified by label and site; every IG pass splits samples x path points into chunks
    that fit ``runtime.memory_budget_mb`` (a note records the rows chosen per pass).
    Metrics: ``text.n_samples``, ``text.completeness_error`` (sum |IG - (F(x)-F(ref))| /
    sum |F(x)-F(ref)| over the reports whose score the words change; NaN, with a note, when
    the model ignores the words -- 0/0 is not a convergence problem),
    ``text.top_words.<class>``, ``text.stoplist_share`` (share of |attribution| on
    stop-listed words), ``text.punctuation_share`` (share on punctuation-
    only tokens, which are not ranked as words), ``text.site_word_share.<word>`` (the word's share
    of |attribution|; ``null_p`` = corrected p-value that it says nothing about the site
    within a label class); ``tabular.n_samples``, ``tabular.importance.<feature>`` (mean |SHAP|),
    ``tabular.additivity_error``, ``tabular.site_feature_share.<feature>``;
    ``shares.<modality>``, ``shares.ablation.<modality>`` (coalition-Shapley share),
    ``shares.diff_vs_ablation.<modality>`` (mean per-sample IG share minus Shapley share),
    ``shares.max_abs_diff_vs_ablation``, ``shares.completeness_error``.
    Default thresholds: warn when a word that tells sites apart within label (p < 0.05)
    carries over 5 % of all text attribution, fail over 15 %; the same for a lab feature
    at 25 % / 50 %; warn when stop-listed words carry over 10 % of the text attribution,
    fail over 25 %; warn when IG's completeness error exceeds 5 % (raise ``ig_steps``).
    Untested, not passed: the site test sees a site only through the studies off their
    label class's usual site (positives of the low-prevalence site ...). When the tested
    rows hold fewer than ``min_site_test_rows`` (10) of them, summed over the label
    classes, a word / lab the test does not flag keeps its share but loses its p-value
    (the rule cannot judge it), a coverage line gives the studies per (label, site) cell
    and what to do, and when no candidate is left to judge the rule (``site_word`` /
    ``site_feature``) is exempted: the report shows a "not judged" note in place of a
    pass. A candidate flagged anyway is judged as ever (``site_power``). Why 10: with 5
    per class of a binary label a 1.5-SD site shift in a lab reaches the Holm level of
    the strongest of ten tests (p < 0.005) about 3 times in 4, a 1-SD one half the time;
    with 2 per class (site tied to the label at rho 0.9 in 95 studies) about 1 time in 4
    and 1 in 20.
    """

    name = "attribution"
    description = "Integrated Gradients on report words, SHAP on labs, modality shares"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n_boot: int = Field(
            default=1000, ge=50, description="bootstrap resamples for CIs; site-test shuffles"
        )
        alpha: float = Field(default=0.05, gt=0, lt=1, description="1 - CI level")
        multiplicity: Literal["holm", "bh", "by", "none"] = Field(
            default="holm", description="correction of the site tests across words / features"
        )
        site_attribute: str = Field(
            default="site", description="data.attributes entry used by the site test"
        )
        target_class: int = Field(
            default=0,
            ge=0,
            description="multilabel: the label column whose logit the lab SHAP values and"
            " modality shares explain (report words are ranked for every label)",
        )
        text: bool = Field(default=True, description="attribute report words")
        ig_steps: int = Field(default=32, ge=2, description="Integrated Gradients path points")
        ig_steps_per_pass: int = Field(
            default=16, ge=1, description="path points per forward/backward (memory vs speed)"
        )
        ig_method: Literal["gausslegendre", "riemann_trapezoid"] = Field(
            default="gausslegendre", description="quadrature of the IG path integral"
        )
        baseline_token: Literal["pad", "mask", "unk"] = Field(
            default="pad", description="token that replaces every word in the IG reference"
        )
        max_text_samples: int | None = Field(
            default=1000,
            ge=1,
            description="cap on reports attributed (None: all): a seeded draw stratified by"
            " label and site_attribute, each cell in proportion; text IG costs ig_steps"
            " forward/backward passes per report (docs/checks/attribution.md: the choice)",
        )
        min_count: int = Field(default=5, ge=1, description="reports a word needs to be ranked")
        top_words: int = Field(default=15, ge=1, description="words per class in the ranking")
        report_words: int = Field(
            default=10, ge=1, description="words (most |attribution|) that get the site test"
        )
        min_site_test_rows: int = Field(
            default=10,
            ge=1,
            description="studies off their label class's main site (summed over classes)"
            " the site-within-label test needs to clear a word or lab; below it, one it"
            " does not flag is reported untested (rule exempt, a note), not passed",
        )
        stoplist: list[str] = Field(
            default=list(DEFAULT_STOPLIST),
            description="words that are never clinical findings",
        )
        n_examples: int = Field(default=4, ge=0, description="highlighted example reports")
        tabular: bool = Field(default=True, description="attribute lab features")
        tabular_method: Literal["permutation", "gradient"] = Field(
            default="permutation", description="shap PermutationExplainer or captum GradientShap"
        )
        max_shap_samples: int = Field(
            default=200, ge=1, description="cap on samples explained with SHAP"
        )
        n_background: int = Field(default=50, ge=1, description="SHAP background rows")
        shap_max_evals: int | None = Field(
            default=None, ge=3, description="permutation evaluations per sample (None: 20F+1)"
        )
        gradient_samples: int = Field(
            default=50, ge=1, description="GradientShap samples per explained row"
        )
        dependence_plots: int = Field(
            default=3, ge=0, description="dependence plots for the top features"
        )
        shares: bool = Field(default=True, description="per-sample modality shares")
        share_baseline: Literal["mean", "zero"] = Field(
            default="mean", description="encoder-output reference of the shares' IG path"
        )
        ablation_removal: Literal["auto", "mean", "zero", "permute"] = Field(
            default="auto",
            description="removal in the coalition game set beside the IG shares (auto: the"
            " IG reference, so the two agree on an additive model; permute: the ablation"
            " check's default)",
        )

    default_thresholds: ClassVar[dict[str, ThresholdRule]] = ATTRIBUTION_RULES
    requires: ClassVar[Requirements] = Requirements(any_modality=["text", "tabular"])
    key_figures: ClassVar[tuple[str, ...]] = ("text_word_ranking", "tabular_beeswarm")

    def missing_requirements(self, ctx: AuditContext) -> str | None:
        reason = super().missing_requirements(ctx)
        if reason is not None:
            return reason
        p: AttributionCheck.Params = self.params  # type: ignore[assignment]
        tab = tabular_unavailable(ctx, p.tabular)
        if tab is None:  # labs to attribute: the text probe (a model forward) can wait for run
            return None
        text = text_unavailable(ctx, p.text)
        if text is not None:
            return f"nothing to attribute: text: {text}; tabular: {tab}"
        return None

    def run(self, ctx: AuditContext) -> CheckOutput:
        p: AttributionCheck.Params = self.params  # type: ignore[assignment]
        out = CheckOutput()
        target = Target.of(ctx, label=p.target_class)
        labels = Target.every_label(ctx)
        if target.label is not None:
            out.notes.append(multilabel_note(labels, target, p.target_class))
        out.notes.append(target.sign_note())
        per_sample = pd.DataFrame({"id": ctx.dataset.ids})
        budget = MemoryBudget(ctx.memory_budget_mb)
        for part, reason in (
            ("text", text_unavailable(ctx, p.text)),
            ("tabular", tabular_unavailable(ctx, p.tabular)),
            ("shares", shares_unavailable(ctx, p.shares)),
        ):
            if reason is not None:
                out.notes.append(f"{part}: skipped: {reason}")
            elif part == "text":
                attribute_text(ctx, p, labels, budget).merge_into(out, per_sample)
            elif part == "tabular":
                attribute_labs(ctx, p, target, budget).merge_into(out, per_sample)
            else:
                modality_shares(ctx, p, target, budget).merge_into(out, per_sample)
        out.notes.extend(budget.notes())
        out.per_sample = per_sample
        # the summary shows the first metrics with CIs: modality shares, then lab importance
        first = (
            "shares.image",
            "shares.text",
            "shares.tabular",
            "shares.",
            "tabular.importance.",
            "text.stoplist_share",
        )
        rank = {
            k: next((i for i, f in enumerate(first) if k.startswith(f)), len(first))
            for k in out.metrics
        }
        out.metrics = dict(sorted(out.metrics.items(), key=lambda kv: rank[kv[0]]))
        self._judged(ctx, out)
        return out

    def _judged(self, ctx: AuditContext, out: CheckOutput) -> None:
        """What the verdict rests on: ``judged`` counts the site-word, stop-list and
        site-feature tests the rules can judge (modality shares are descriptive; the IG
        convergence rule checks the method; an exempted rule judges nothing),
        ``rows_used`` the rows attributed, and the skip reason quotes why each judged part
        did not run or was not judged."""
        rules = {k: r for k, r in self.default_thresholds.items() if k != "ig_not_converged"}
        out.judged = count_judged(out.metrics, rules, out.exempt_rules)
        used = [out.metrics.get(f"{part}.n_samples") for part in ("text", "tabular")]
        out.rows_used = max((int(u) for u in used if isinstance(u, int)), default=0)
        why = [n for n in out.notes if ": skipped: " in n or "site test not run" in n]
        why += [f"{rule}: {reason}" for rule, reason in out.exempt_rules.items()]
        out.skip_reason = (
            "no site-word, stop-list or site-feature test could run"
            + (f" ({'; '.join(why)})" if why else "")
            + "; modality shares are reported, not judged"
        )
        for part in ("text", "tabular"):
            n_used = out.metrics.get(f"{part}.n_samples")
            col = ctx.dataset.modalities.index(part) if part in ctx.dataset.modalities else None
            if not isinstance(n_used, int) or col is None:
                continue
            eligible = int(ctx.dataset.present[:, col].sum())
            if n_used < eligible:
                why = (
                    "empty reports left out, or a draw of max_text_samples stratified by label"
                    " and site"
                    if part == "text"
                    else "a seeded sample of max_shap_samples"
                )
                out.coverage.append(
                    f"{part} attribution on {n_used} of {eligible} rows that have {part} ({why})"
                )
