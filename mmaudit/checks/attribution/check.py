"""Check ``attribution``: which report words and which lab values the predictions rest on."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
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
from mmaudit.checks.plotting import literal_text, pyplot
from mmaudit.methods.integrated_gradients import (
    ScoreFn,
    layer_integrated_gradients,
    scores_with_layers,
)
from mmaudit.methods.shapley import shapley_values
from mmaudit.methods.stats import Estimate, adjust_pvalues, bootstrap_ci
from mmaudit.methods.text_attribution import (
    DEFAULT_STOPLIST,
    SiteGivenLabel,
    association,
    baseline_token_id,
    content_mask,
    find_text_embedding_layer,
    is_word,
    metric_key,
    text_integrated_gradients,
    text_layer_problem,
    word_spans,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mmaudit.engine.cache import RemovalHow
    from mmaudit.engine.data import Batch

#: a tokenizer that maps at least this share of report tokens to [UNK] cannot be attributed
UNK_LIMIT = 0.9


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    """Which scalar of the output is attributed, and the classes words are ranked for.

    * one logit (binary): that logit; the ranking for the positive class is the mean
      attribution, for the negative class its negation (the logit of "not positive");
    * two logits, binary: ``logit[1] - logit[0]``, ranked the same way;
    * one label column of a multilabel target (``label``): that label's logit, as a binary
      target of its own -- ranked toward the label and, negated, toward "not <label>",
      both over every sample (a multilabel sample may be positive for none or several);
    * multiclass: each sample's predicted class (arg-max logit); the ranking for class
      ``c`` uses the samples predicted ``c``.
    """

    mode: Literal["single", "diff", "column"]
    column: np.ndarray  # (N,) logit column per sample (mode "column")
    classes: list[tuple[str, float, np.ndarray | None]]  # name, sign, samples (None: all)

    sign: np.ndarray | None = None  # (N,) +-1 per sample: explain the predicted class
    output: int = 0  # the logit mode "single" attributes
    label: str | None = None  # the multilabel label column attributed (mode "single")

    @classmethod
    def of(cls, ctx: AuditContext, predicted: bool = False, label: int = 0) -> Target:
        """The target for ``ctx``; ``predicted=True`` turns the binary (or label) score
        toward each sample's predicted class (the negated logit where the prediction is
        negative). ``label``: the label column a multilabel target is explained for."""
        if ctx.config.data.target.kind == "multilabel":
            return cls.for_label(ctx, label, predicted)
        logits = ctx.cache.sweep().logits
        names = ctx.dataset.class_names
        n, k = logits.shape
        if ctx.config.data.target.kind != "binary" or k > 2:
            pred = logits.argmax(1).astype(np.int64)
            labels = names if len(names) == k else [str(c) for c in range(k)]
            return cls("column", pred, [(labels[c], 1.0, pred == c) for c in range(k)])
        pos, neg = (names[1], names[0]) if len(names) == 2 else ("1", "0")
        mode: Literal["single", "diff", "column"] = "single" if k == 1 else "diff"
        target = cls(mode, np.zeros(n, np.int64), [(pos, 1.0, None), (neg, -1.0, None)])
        if predicted:
            target.sign = np.where(target.scores(logits) >= 0, 1.0, -1.0)
        return target

    @classmethod
    def for_label(cls, ctx: AuditContext, label: int, predicted: bool = False) -> Target:
        """Label column ``label`` of a multilabel target as a binary target of its own."""
        logits = ctx.cache.sweep().logits
        n, k = logits.shape
        if not 0 <= label < k:
            raise ValueError(f"target_class={label}: the model has {k} label columns (0..{k - 1})")
        names = ctx.dataset.class_names
        name = names[label] if len(names) == k else str(label)
        classes: list[tuple[str, float, np.ndarray | None]] = [
            (name, 1.0, None),
            (f"not {name}", -1.0, None),
        ]
        target = cls("single", np.zeros(n, np.int64), classes, output=label, label=name)
        if predicted:
            target.sign = np.where(target.scores(logits) >= 0, 1.0, -1.0)
        return target

    @classmethod
    def every_label(cls, ctx: AuditContext) -> list[Target]:
        """One binary target per label column (multilabel), else ``[Target.of(ctx)]``."""
        if ctx.config.data.target.kind != "multilabel":
            return [cls.of(ctx)]
        k = ctx.cache.sweep().logits.shape[1]
        return [cls.for_label(ctx, j) for j in range(k)]

    def score_fn(self) -> ScoreFn:
        """The attributed score per row of a batch (rows know their dataset index)."""
        column = torch.from_numpy(self.column)
        sign = None if self.sign is None else torch.from_numpy(self.sign).float()
        output = self.output

        def fn(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
            index = batch.index
            if self.mode == "single":
                score = logits[:, output]
            elif self.mode == "diff":
                score = logits[:, 1] - logits[:, 0]
            else:
                idx = column.to(logits.device)[index]
                score = logits.gather(1, idx[:, None])[:, 0]
            if sign is not None:
                score = score * sign.to(logits.device)[index].to(score.dtype)
            return score

        return fn

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """The attributed score of every sample from a sweep's logits (N, K)."""
        if self.mode == "single":
            score = logits[:, self.output].astype(float)
        elif self.mode == "diff":
            score = (logits[:, 1] - logits[:, 0]).astype(float)
        else:
            score = logits[np.arange(len(logits)), self.column].astype(float)
        return score if self.sign is None else score * self.sign

    @property
    def description(self) -> str:
        if self.label is not None:
            text = f"the logit of label {self.label} (label column {self.output})"
            if self.sign is not None:
                text += f", negated where {self.label} is predicted negative (logit < 0)"
            return text
        if self.sign is not None:
            return "the logit of each sample's predicted class"
        if self.mode == "single":
            return f"the logit of the positive class ({self.classes[0][0]})"
        if self.mode == "diff":
            return "logit[1] - logit[0]"
        return "the logit of each sample's predicted class"

    def score_label(self, name: str, sign: float) -> str:
        """The score a class view shows, in short: the attributed score, negated (sign -1)
        for the negative class of a binary model: ``logit(1)``, ``-logit(1)``,
        ``logit(1) - logit(0)``, ``logit(0) - logit(1)``, or ``logit(c)``."""
        if self.mode == "column":
            return f"logit({name})"
        pos, neg = self.classes[0][0], self.classes[1][0]
        if self.mode == "single":
            return f"logit({pos})" if sign > 0 else f"-logit({pos})"
        return f"logit({pos}) - logit({neg})" if sign > 0 else f"logit({neg}) - logit({pos})"

    def sign_note(self) -> str:
        """The first note of the check: what is attributed and how class views are signed."""
        text = f"attributions explain {self.description}"
        if self.mode == "column" or self.sign is not None:
            return text
        (pos, _, _), (neg, _, _) = self.classes
        return (
            f"{text}; every view toward class {neg} (its rows of word_ranking, its"
            " examples) shows them negated, i.e. the attribution of"
            f" {self.score_label(neg, -1.0)}: a word at +x toward class {neg} moves"
            f" {self.score_label(pos, 1.0)} by -x. Both rankings use every report; the"
            f" direction column of word_ranking and logit_attribution (the attribution of"
            f" {self.score_label(pos, 1.0)} itself) say which is which"
        )


# --------------------------------------------------------------------------- helpers


def _multilabel_note(labels: list[Target], target: Target, target_class: int) -> str:
    """What a multilabel run attributes: every label's logit for the report words, one
    label's for the labs and the modality shares."""
    names = [t.label for t in labels]
    return (
        f"multilabel target: each of the {len(labels)} label columns ({', '.join(map(str, names))})"
        " is explained as a binary target of its own, never the arg-max label. Report words:"
        f" one Integrated Gradients pass per label ({len(labels)} passes over the attributed"
        " reports); word_ranking ranks the words of every report for each label, toward the"
        " label (its logit) and toward 'not <label>' (the logit negated); its direction and"
        " logit_attribution columns and the score column of text_token_attributions name the"
        " logit. text.stoplist_share, text.punctuation_share and text.site_word_share.* pool"
        " every label's |attribution|. Lab SHAP values (tabular.*) and modality shares"
        f" (shares.*) explain label {target.label} only (params.target_class={target_class};"
        " set it for another label)"
    )


def _pooled_score(targets: list[Target]) -> str:
    """The score whose attribution pooled (summed) over ``targets`` is, in words."""
    if len(targets) > 1:
        return "the sum of the label logits"
    target = targets[0]
    if target.mode == "column":
        return "the predicted class's logit"
    return target.score_label(target.classes[0][0], 1.0)


def _cap(rows: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most ``cap`` of ``rows`` (a seeded random subset, in dataset order)."""
    if cap is None or len(rows) <= cap:
        return rows
    return np.sort(rng.choice(rows, size=cap, replace=False))


def _groups(ctx: AuditContext, rows: np.ndarray) -> np.ndarray | None:
    g = ctx.groups
    return None if g is None else np.asarray(g)[rows]


def _site(ctx: AuditContext, name: str) -> tuple[np.ndarray | None, str | None]:
    """The site attribute over the dataset, or None with the reason."""
    attrs = ctx.dataset.attributes
    if name not in attrs.columns:
        return None, f"attribute '{name}' is not configured (data.attributes)"
    values = attrs[name].to_numpy(dtype=object)
    known = np.array(
        [v is not None and not (isinstance(v, float) and math.isnan(v)) for v in values]
    )
    if len({str(v) for v in values[known]}) < 2:
        return None, f"attribute '{name}' has fewer than two values"
    return np.where(known, values.astype(str), ""), None


def _ratio(num: np.ndarray, den: np.ndarray) -> float:
    total = float(np.sum(den))
    return float(np.sum(num)) / total if total > 0 else float("nan")


def _unique_key(base: str, taken: set[str]) -> str:
    key, k = base, 2
    while key in taken:
        key, k = f"{base}_{k}", k + 1
    taken.add(key)
    return key


def text_unavailable(ctx: AuditContext, enabled: bool = True) -> str | None:
    """Why report words cannot be attributed on this model and data, or None."""
    ds, adapter = ctx.dataset, ctx.adapter
    if not enabled:
        return "disabled (params.text: false)"
    if "text" not in ds.modalities or ds.input_ids is None:
        return "the data has no report text"
    if "text" not in adapter.keywords:
        return "the model takes no report text"
    if not adapter.supports_hooks:
        return "needs layer hooks, which a TorchScript model does not allow"
    layer = find_text_embedding_layer(adapter)
    if layer is None:
        return (
            "no token-embedding layer found (name the nn.Embedding that reads the token ids in"
            " model.layers.text_embeddings, e.g. text_encoder.embeddings.word_embeddings)"
        )
    tok = ds.tokenizer
    content = content_mask(ds.input_ids, ds.attention_mask, tok)  # type: ignore[arg-type]
    present = torch.from_numpy(ds.present[:, ds.modalities.index("text")])
    content &= present[:, None]
    if not bool(content.any()):
        return "every report is empty or missing"
    unknown = unknown_tokens(tok, ds.input_ids, content)
    if unknown is not None:
        return unknown
    # one small forward: the layer must give one vector per token (an EmbeddingBag fed
    # flat ids, or a pooled layer named by mistake, cannot be attributed word by word)
    rows = np.flatnonzero(content.any(1).numpy())[:4]
    return text_layer_problem(adapter, layer, next(iter(ds.batches(len(rows), indices=rows))))


def unknown_tokens(tokenizer: Any, input_ids: torch.Tensor, content: torch.Tensor) -> str | None:
    """Why the reports cannot be read word by word: the tokenizer maps at least
    ``UNK_LIMIT`` of the ``content`` tokens to [UNK] (a wrong tokenizer); else None."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not bool(content.any()):
        return None
    share = float((input_ids[content] == int(unk)).float().mean())
    if share >= UNK_LIMIT:
        return (
            f"the tokenizer maps {share:.0%} of report tokens to [UNK]: is"
            " data.text.tokenizer the one the model was trained with?"
        )
    return None


def tabular_unavailable(ctx: AuditContext, enabled: bool = True) -> str | None:
    """Why lab features cannot be attributed on this model and data, or None."""
    ds = ctx.dataset
    if not enabled:
        return "disabled (params.tabular: false)"
    if "tabular" not in ds.modalities or ds.tabular is None:
        return "the data has no tabular columns"
    if "tabular" not in ctx.adapter.keywords:
        return "the model takes no tabular input"
    missing = ds.tabular_missing.numpy() if ds.tabular_missing is not None else None
    if missing is not None and missing.all():
        return "every tabular column is empty in every row"
    if not ds.present[:, ds.modalities.index("tabular")].any():
        return "no sample has any lab value"
    return None


def shares_unavailable(ctx: AuditContext, enabled: bool = True) -> str | None:
    """Why modality shares cannot be computed, or None."""
    if not enabled:
        return "disabled (params.shares: false)"
    if not ctx.adapter.supports_hooks:
        return "needs layer hooks, which a TorchScript model does not allow"
    mods = [m for m in ctx.dataset.modalities if m in ctx.adapter.layers]
    if len(mods) < 2:
        return "needs at least two modality encoder layers (model.layers.image / text / tabular)"
    cols = [ctx.dataset.modalities.index(m) for m in mods]
    if not ctx.dataset.present[:, cols].all(1).any():
        return f"no sample has all of {mods}"
    return None


# --------------------------------------------------------------------------- the check


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
    Metrics: ``text.n_samples``, ``text.completeness_error`` (sum |IG - (F(x)-F(ref))| /
    sum |F(x)-F(ref)|), ``text.top_words.<class>``, ``text.stoplist_share`` (share of
    |attribution| on stop-listed words), ``text.punctuation_share`` (share on punctuation-
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
            default=2000,
            ge=1,
            description="cap on reports attributed, a seeded subset (None: all); keeps large"
            " audits bounded: text IG costs a backward pass per path step",
        )
        min_count: int = Field(default=5, ge=1, description="reports a word needs to be ranked")
        top_words: int = Field(default=15, ge=1, description="words per class in the ranking")
        report_words: int = Field(
            default=10, ge=1, description="words (most |attribution|) that get the site test"
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

    default_thresholds: ClassVar[dict[str, ThresholdRule]] = {
        "site_word": ThresholdRule(
            metric="text.site_word_share.*",
            warn_above=0.05,
            fail_above=0.15,
            max_p=0.05,
            message="a word that tells the site apart within a label class drives predictions",
        ),
        "stoplist_words": ThresholdRule(
            metric="text.stoplist_share",
            warn_above=0.10,
            fail_above=0.25,
            message="non-clinical (stop-listed) words carry much of the text attribution",
        ),
        "site_feature": ThresholdRule(
            metric="tabular.site_feature_share.*",
            warn_above=0.25,
            fail_above=0.50,
            max_p=0.05,
            message="a lab feature that tells the site apart within a label class drives"
            " predictions",
        ),
        "ig_not_converged": ThresholdRule(
            metric="text.completeness_error",
            warn_above=0.05,
            message="Integrated Gradients has not converged; raise ig_steps",
        ),
    }
    requires: ClassVar[Requirements] = Requirements(any_modality=["text", "tabular"])

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
            out.notes.append(_multilabel_note(labels, target, p.target_class))
        out.notes.append(target.sign_note())
        per_sample = pd.DataFrame({"id": ctx.dataset.ids})
        for part, reason in (
            ("text", text_unavailable(ctx, p.text)),
            ("tabular", tabular_unavailable(ctx, p.tabular)),
            ("shares", shares_unavailable(ctx, p.shares)),
        ):
            if reason is not None:
                out.notes.append(f"{part}: skipped: {reason}")
            elif part == "text":
                self._text(ctx, p, labels, out, per_sample)
            elif part == "tabular":
                self._tabular(ctx, p, target, out, per_sample)
            else:
                self._shares(ctx, p, target, out, per_sample)
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
        convergence rule checks the method), ``rows_used`` the rows attributed, and the
        skip reason quotes why each judged part did not run."""
        rules = {k: r for k, r in self.default_thresholds.items() if k != "ig_not_converged"}
        out.judged = count_judged(out.metrics, rules)
        used = [out.metrics.get(f"{part}.n_samples") for part in ("text", "tabular")]
        out.rows_used = max((int(u) for u in used if isinstance(u, int)), default=0)
        why = [n for n in out.notes if ": skipped: " in n or "site test not run" in n]
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
                    "empty reports left out, or a seeded sample of max_text_samples"
                    if part == "text"
                    else "a seeded sample of max_shap_samples"
                )
                out.coverage.append(
                    f"{part} attribution on {n_used} of {eligible} rows that have {part} ({why})"
                )

    # ------------------------------------------------------------------- text
    def _text(
        self,
        ctx: AuditContext,
        p: AttributionCheck.Params,
        targets: list[Target],
        out: CheckOutput,
        per_sample: pd.DataFrame,
    ) -> None:
        """IG of every target's score over the report tokens (one pass per target: one for
        a binary or multiclass model, one per label column of a multilabel one); the word
        ranking per target, the |attribution| shares (stop-list, punctuation, site words)
        pooled over the targets."""
        ds, adapter = ctx.dataset, ctx.adapter
        tok = ds.tokenizer
        assert ds.input_ids is not None and ds.attention_mask is not None
        layer = find_text_embedding_layer(adapter)
        assert layer is not None
        content_all = content_mask(ds.input_ids, ds.attention_mask, tok)
        present = ds.present[:, ds.modalities.index("text")]
        eligible = np.flatnonzero(present & content_all.any(1).numpy())
        rows = _cap(eligible, p.max_text_samples, ctx.rng("attribution.text"))
        if len(rows) < len(eligible):
            out.notes.append(
                f"text: IG on {len(rows)} of {len(eligible)} reports"
                f" (max_text_samples={p.max_text_samples})"
            )
        fixed = {
            m: torch.from_numpy(np.array(ctx.cache.embeddings(m)))  # writable copy of a memmap
            for m in ds.modalities
            if m != "text" and m in adapter.layers
        }
        token_id = baseline_token_id(tok, p.baseline_token)
        score_fns = [t.score_fn() for t in targets]

        def attribute(b: Batch) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            assert b.input_ids is not None and b.attention_mask is not None
            content = content_mask(b.input_ids, b.attention_mask, tok)
            held = {m: t[b.index.cpu()].to(adapter.device) for m, t in fixed.items()}
            result = []
            for score_fn in score_fns:
                attr, fx, fb = text_integrated_gradients(
                    adapter,
                    b,
                    layer,
                    score_fn,
                    content,
                    token_id,
                    n_steps=p.ig_steps,
                    steps_per_pass=p.ig_steps_per_pass,
                    method=p.ig_method,
                    fixed=held,
                )
                result.append((attr.detach().cpu().numpy(), fx.cpu().numpy(), fb.cpu().numpy()))
            return result

        parts = ctx.cache.map_batches(attribute, grad=True, desc="text IG", indices=rows)
        # (targets, reports, tokens) and (targets, reports)
        attr = np.stack([np.concatenate([q[t][0] for q in parts]) for t in range(len(targets))])
        fx = np.stack([np.concatenate([q[t][1] for q in parts]) for t in range(len(targets))])
        fb = np.stack([np.concatenate([q[t][2] for q in parts]) for t in range(len(targets))])
        err = attr.sum(2) - (fx - fb)
        out.metrics["text.n_samples"] = len(rows)
        out.metrics["text.completeness_error"] = _ratio(np.abs(err), np.abs(fx - fb))
        for t, target in enumerate(targets):
            suffix = "" if target.label is None else f".{target.label}"
            per_sample.loc[rows, f"text_attribution_sum{suffix}"] = attr[t].sum(1)
            per_sample.loc[rows, f"text_score_change{suffix}"] = fx[t] - fb[t]

        spans = word_spans(
            tok, [ds.texts[i] for i in rows], ds.input_ids[rows], ds.input_ids.shape[1]
        )
        tokens = []
        for t, target in enumerate(targets):
            table = _token_table(ctx, rows, spans, attr[t])
            table["score"] = target.score_label(target.classes[0][0], 1.0)
            tokens.append(table)
        out.tables["text_token_attributions"] = pd.concat(tokens, ignore_index=True)
        out.private |= {"text_token_attributions"}
        records = [
            (t, d, word, float(attr[t, d, pos].sum()))
            for t in range(len(targets))
            for d, doc in enumerate(spans)
            for word, pos in doc
        ]
        occ = pd.DataFrame(records, columns=["target", "doc", "word", "attribution"])
        occ = occ.groupby(["target", "doc", "word"], as_index=False, sort=False)[
            "attribution"
        ].sum()
        occ["abs"] = occ["attribution"].abs()
        groups = _groups(ctx, rows)
        boot: dict[str, Any] = {"n_boot": p.n_boot, "alpha": p.alpha, "seed": ctx.seed}

        rankings = [
            self._word_ranking(
                ctx,
                p,
                target,
                rows,
                occ[(occ["target"] == t) & occ["word"].map(is_word)],
                groups,
                boot,
                out,
            )
            for t, target in enumerate(targets)
        ]
        ranking = pd.concat(rankings, ignore_index=True) if len(rankings) > 1 else rankings[0]
        out.tables["word_ranking"] = ranking

        # shares of |attribution| pool the targets: per (report, word) the sum of its
        # |attribution| toward each target (one target: just its |attribution|)
        pooled = occ.groupby(["doc", "word"], as_index=False, sort=False)[
            ["attribution", "abs"]
        ].sum()
        n_docs = len(rows)
        doc_total = pooled.groupby("doc")["abs"].sum().reindex(range(n_docs), fill_value=0.0)
        words = pooled[pooled["word"].map(is_word)]
        stop = {w.lower() for w in p.stoplist}
        stop_abs = (
            pooled[pooled["word"].isin(stop)]
            .groupby("doc")["abs"]
            .sum()
            .reindex(range(n_docs), fill_value=0.0)
        )
        out.metrics["text.stoplist_share"] = bootstrap_ci(
            _ratio, stop_abs.to_numpy(), doc_total.to_numpy(), groups=groups, **boot
        )
        self._punctuation(pooled, doc_total.to_numpy(), groups, boot, _pooled_score(targets), out)

        out.tables["word_site_test"] = self._site_words(
            ctx, p, rows, words, doc_total.to_numpy(), groups, stop, boot, out
        )
        self._examples(ctx, p, targets, rows, spans, attr, fx, out)
        if not ranking.empty:
            # a panel per class; with more than two labels, the toward-label panels only
            panels = [name for t in targets for name, _, _ in t.classes]
            if len(targets) > 2:
                panels = [t.classes[0][0] for t in targets]
            out.figures["text_word_ranking"] = _ranking_figure(ranking, p.top_words, panels[:4])
        else:
            out.notes.append(
                f"text: no word occurs in min_count={p.min_count} reports: nothing is ranked"
                " (lower min_count or attribute more reports)"
            )

    def _word_ranking(
        self,
        ctx: AuditContext,
        p: AttributionCheck.Params,
        target: Target,
        rows: np.ndarray,
        words: pd.DataFrame,
        groups: np.ndarray | None,
        boot: dict[str, Any],
        out: CheckOutput,
    ) -> pd.DataFrame:
        """Words ranked per class by their mean attribution per report toward the class
        (``mean_attribution``, CI by patient). ``direction`` names the score that is, and
        ``logit_attribution`` is the attribution of the attributed score itself, the same
        for a word's rows of both classes of a binary model (there the negative class's
        ranking is the positive class's, negated and read from the other end)."""
        table = []
        for name, sign, mask in target.classes:
            sub = words if mask is None else words[mask[rows[words["doc"].to_numpy()]]]
            direction = f"toward {name}: {target.score_label(name, sign)}"
            if mask is not None:
                direction += f" (reports predicted {name})"
            if sub.empty:
                continue
            g = sub.groupby("word")
            stats = pd.DataFrame(
                {"count": g["doc"].nunique(), "mean": sign * g["attribution"].mean()}
            )
            stats = stats[stats["count"] >= p.min_count].sort_values(
                ["mean", "count"], ascending=[False, False], kind="stable"
            )
            top = stats.head(p.top_words)
            for rank, (word, row) in enumerate(top.iterrows(), start=1):
                mine = sub[sub["word"] == word]
                values = sign * mine["attribution"].to_numpy()
                g_w = None if groups is None else groups[mine["doc"].to_numpy()]
                est = bootstrap_ci(np.mean, values, groups=g_w, **boot)
                table.append(
                    {
                        "class": name,
                        "rank": rank,
                        "word": word,
                        "count": int(row["count"]),
                        "mean_attribution": float(row["mean"]),
                        "ci_low": est.ci_low,
                        "ci_high": est.ci_high,
                        "direction": direction,
                        "logit_attribution": sign * float(row["mean"]),
                    }
                )
            key = metric_key(name)
            out.metrics[f"text.top_words.{key}"] = ", ".join(top.index[:5].tolist())
        return pd.DataFrame(
            table,
            columns=[
                "class",
                "rank",
                "word",
                "count",
                "mean_attribution",
                "ci_low",
                "ci_high",
                "direction",
                "logit_attribution",
            ],
        )

    @staticmethod
    def _punctuation(
        occ: pd.DataFrame,
        doc_total: np.ndarray,
        groups: np.ndarray | None,
        boot: dict[str, Any],
        score: str,
        out: CheckOutput,
    ) -> None:
        """``text.punctuation_share``: the share of all text |attribution| on punctuation-only
        tokens, which the word ranking and the site test leave out (``is_word``); a note names
        the largest with its mean attribution on ``score``. A model leaning on '.' reads the
        report's layout (sentence count, length), not its findings, and the ranking alone
        would hide it."""
        punct = occ[~occ["word"].map(is_word)]
        per_doc = punct.groupby("doc")["abs"].sum().reindex(range(len(doc_total)), fill_value=0)
        share = bootstrap_ci(_ratio, per_doc.to_numpy(), doc_total, groups=groups, **boot)
        out.metrics["text.punctuation_share"] = share
        if punct.empty:
            return
        total = float(doc_total.sum())
        by_token = punct.groupby("word").agg(abs=("abs", "sum"), mean=("attribution", "mean"))
        top = by_token.sort_values("abs", ascending=False).head(3)
        parts = [
            f"'{w}' {r['abs'] / total:.1%} (mean {r['mean']:+.2f} on {score} per report)"
            for w, r in top.iterrows()
        ]
        ci = (
            ""
            if share.ci_low is None or share.ci_high is None
            else f" [{share.ci_low:.1%}, {share.ci_high:.1%}]"
        )
        out.notes.append(
            f"text: punctuation carries {share.value:.1%}{ci} of all text |attribution|"
            f" ({', '.join(parts)});"
            " punctuation is not ranked as a word nor site-tested, so this share is reported"
            " here (text.punctuation_share): a large one means the model reads the report's"
            " layout (sentence breaks, length) as well as its words"
        )

    def _site_words(
        self,
        ctx: AuditContext,
        p: AttributionCheck.Params,
        rows: np.ndarray,
        words: pd.DataFrame,
        doc_total: np.ndarray,
        groups: np.ndarray | None,
        stop: set[str],
        boot: dict[str, Any],
        out: CheckOutput,
    ) -> pd.DataFrame:
        n_docs = len(rows)
        g = words.groupby("word")
        stats = pd.DataFrame({"count": g["doc"].nunique(), "abs": g["abs"].sum()})
        total = float(doc_total.sum())
        stats["share"] = stats["abs"] / total if total > 0 else np.nan
        cand = stats[stats["count"] >= p.min_count].sort_values(
            ["share", "count"], ascending=[False, False], kind="stable"
        )
        cand = cand.head(p.report_words)
        site, why = _site(ctx, p.site_attribute)
        if site is None:
            out.notes.append(f"text: site test not run: {why}")
        label = np.asarray(ctx.target)[rows]
        tests: list[Estimate | None] = []
        shares: list[Estimate] = []
        assoc: list[tuple[float, float]] = []
        ok = site[rows] != "" if site is not None else np.zeros(len(rows), dtype=bool)
        tester = (
            SiteGivenLabel(site[rows][ok], label[ok], int(boot["n_boot"]), int(boot["seed"]))
            if site is not None
            else None
        )
        for word in cand.index:
            mine = words[words["word"] == word]
            per_doc = np.zeros(n_docs)
            per_doc[mine["doc"].to_numpy()] = mine["abs"].to_numpy()
            shares.append(bootstrap_ci(_ratio, per_doc, doc_total, groups=groups, **boot))
            x = np.zeros(n_docs)
            x[mine["doc"].to_numpy()] = 1.0
            if site is None or tester is None:
                tests.append(None)
                assoc.append((float("nan"), association(x, label)))
                continue
            tests.append(tester.test(x[ok]))
            assoc.append((association(x[ok], site[rows][ok]), association(x[ok], label[ok])))
        raw_p = [t.null_p if t is not None and t.null_p is not None else np.nan for t in tests]
        adj = adjust_pvalues(raw_p, p.multiplicity) if raw_p else np.array([])
        taken: set[str] = set()
        table = []
        for k, word in enumerate(cand.index):
            sh = shares[k]
            padj = None if np.isnan(adj[k]) else float(adj[k])
            key = _unique_key(metric_key(word), taken)
            out.metrics[f"text.site_word_share.{key}"] = Estimate(
                sh.value, sh.ci_low, sh.ci_high, int(cand.loc[word, "count"]), padj
            )
            table.append(
                {
                    "word": word,
                    "count": int(cand.loc[word, "count"]),
                    "share": sh.value,
                    "share_ci_low": sh.ci_low,
                    "share_ci_high": sh.ci_high,
                    "site_association": assoc[k][0],
                    "label_association": assoc[k][1],
                    "site_within_label": tests[k].value if tests[k] is not None else None,
                    "p": raw_p[k] if not np.isnan(raw_p[k]) else None,
                    "p_adjusted": padj,
                    "stoplisted": word in stop,
                }
            )
        return pd.DataFrame(table)

    def _examples(
        self,
        ctx: AuditContext,
        p: AttributionCheck.Params,
        targets: list[Target],
        rows: np.ndarray,
        spans: list[list[tuple[str, list[int]]]],
        attr: np.ndarray,
        fx: np.ndarray,
        out: CheckOutput,
    ) -> None:
        """The reports scored most strongly toward each class of each target (``attr`` and
        ``fx`` hold one slice per target), each shown toward its class."""
        if p.n_examples == 0 or len(rows) == 0:
            return
        views = [(t, c) for t, target in enumerate(targets) for c in target.classes]
        per_class = max(1, math.ceil(p.n_examples / len(views)))
        chosen: list[tuple[int, int, str, float]] = []
        for t, (name, sign, mask) in views:
            docs = np.arange(len(rows)) if mask is None else np.flatnonzero(mask[rows])
            order = docs[np.argsort(-sign * fx[t, docs], kind="stable")]
            for d in order[:per_class]:
                if int(d) not in [c for _, c, _, _ in chosen] and len(chosen) < p.n_examples:
                    chosen.append((t, int(d), name, sign))
        examples = []
        table = []
        names = ctx.dataset.class_names
        for t, d, cls_name, sign in chosen:
            sid = ctx.dataset.ids[rows[d]]
            raw = [(w, float(attr[t, d, pos].sum())) for w, pos in spans[d]]
            # shown toward the example's class: for the negative class of a binary model
            # (or "not <label>" of a multilabel one) the attributed logit, negated (red =
            # pushes toward the title)
            pieces = [(w, sign * a) for w, a in raw]
            y = np.asarray(ctx.target)[rows[d]]
            if np.ndim(y) == 0:
                title = f"{sid}: label {names[int(y)]}"
            else:
                title = f"{sid}: labels " + ", ".join(
                    f"{n}={int(v)}" for n, v in zip(names, y, strict=True)
                )
            score = targets[t].score_label(cls_name, sign)
            view = (
                f"toward class {cls_name}: {score} = {sign * fx[t, d]:+.2f}, its words'"
                f" attributions sum to {sum(a for _, a in pieces):+.2f}"
            )
            examples.append((f"{title}; {view}", pieces))
            table.extend(
                {
                    "id": sid,
                    "position": k,
                    "word": w,
                    "attribution": a,
                    "toward_class": cls_name,
                    "score": score,
                    "attribution_toward_class": sign * a,
                }
                for k, (w, a) in enumerate(raw)
            )
            if not ctx.redact:
                out.notes.append(f"example {title} ({view}): {_marked_text(pieces)}")
        out.notes.append(
            "examples: a title 'toward class c: S = +v, its words' attributions sum to +w'"
            " shows the score S attributed toward c (the attributed logit, negated toward the"
            " negative class of a binary model or toward 'not <label>' of a multilabel one),"
            " +v its value for the report as written, and"
            " +w = S minus S of the same report with every word [PAD] (IG completeness); a"
            " word at +x pushes toward class c by x"
        )
        out.tables["text_examples"] = pd.DataFrame(table)
        out.figures["text_examples"] = _highlight_figure(examples)
        out.private |= {"text_examples"}

    # ------------------------------------------------------------------- tabular
    def _tabular(
        self,
        ctx: AuditContext,
        p: AttributionCheck.Params,
        target: Target,
        out: CheckOutput,
        per_sample: pd.DataFrame,
    ) -> None:
        from mmaudit.methods.tabular_shap import gradient_shap, permutation_shap

        ds, adapter = ctx.dataset, ctx.adapter
        assert ds.tabular is not None and ds.tabular_missing is not None
        names = list(ctx.config.data.tabular.columns)  # type: ignore[union-attr]
        missing = ds.tabular_missing.numpy()
        empty = missing.all(0)
        if empty.any():
            out.notes.append(
                "tabular: columns missing in every row (their SHAP value is 0 by construction,"
                f" not ranked): {', '.join(n for n, e in zip(names, empty, strict=True) if e)}"
            )
        eligible = np.flatnonzero(ds.present[:, ds.modalities.index("tabular")])
        rng = ctx.rng("attribution.tabular")
        rows = _cap(eligible, p.max_shap_samples, rng)
        bg_rows = np.sort(
            rng.choice(eligible, size=min(p.n_background, len(eligible)), replace=False)
        )
        background = ds.tabular[bg_rows].numpy().astype(np.float32)
        fixed = (
            {
                m: ctx.cache.embeddings(m)
                for m in ds.modalities
                if m != "tabular" and m in adapter.layers
            }
            if adapter.supports_hooks
            else {}
        )
        out.notes.append(
            f"tabular: SHAP ({p.tabular_method}) on {len(rows)} of {len(eligible)} samples with"
            f" labs (max_shap_samples={p.max_shap_samples}), background {len(bg_rows)} rows"
        )
        if target.label is not None:
            out.notes.append(f"tabular: SHAP values explain {target.description}")
        score_fn = target.score_fn()
        if p.tabular_method == "permutation":
            res = permutation_shap(
                ctx.cache,
                rows,
                background,
                score_fn,
                fixed=fixed,
                max_evals=p.shap_max_evals,
                seed=ctx.seed,
            )
        else:
            res = gradient_shap(
                ctx.cache,
                rows,
                background,
                score_fn,
                fixed=fixed,
                n_samples=p.gradient_samples,
                seed=ctx.seed,
            )
        values = res.values
        fx = target.scores(ctx.cache.sweep().logits)[rows]
        out.metrics["tabular.n_samples"] = len(rows)
        out.metrics["tabular.additivity_error"] = _ratio(
            np.abs(res.base + values.sum(1) - fx), np.abs(fx - res.base)
        )
        groups = _groups(ctx, rows)
        boot: dict[str, Any] = {"n_boot": p.n_boot, "alpha": p.alpha, "seed": ctx.seed}
        absval = np.abs(values)
        total = absval.sum(1)
        site, why = _site(ctx, p.site_attribute)
        if site is None:
            out.notes.append(f"tabular: site test not run: {why}")
        label = np.asarray(ctx.target)[rows]
        # the dependence plots colour by the explained label (a multilabel target's column)
        shown_label = label if label.ndim == 1 else label[:, target.output]
        rows_table, tests = [], []
        taken: set[str] = set()
        ok = site[rows] != "" if site is not None else np.zeros(len(rows), dtype=bool)
        tester = (
            SiteGivenLabel(site[rows][ok], label[ok], p.n_boot, ctx.seed)
            if site is not None
            else None
        )
        for j, feat in enumerate(names):
            if empty[j]:
                continue
            imp = bootstrap_ci(np.mean, absval[:, j], groups=groups, **boot)
            share = bootstrap_ci(_ratio, absval[:, j], total, groups=groups, **boot)
            x = np.column_stack([ds.tabular[rows, j].numpy(), missing[rows, j].astype(float)])
            test = None
            assoc_site = float("nan")
            if site is not None and tester is not None:
                test = tester.test(x[ok])
                assoc_site = association(x[ok], site[rows][ok])
            tests.append(test)
            key = _unique_key(metric_key(feat), taken)
            out.metrics[f"tabular.importance.{key}"] = imp
            rows_table.append(
                {
                    "feature": feat,
                    "key": key,
                    "mean_abs_shap": imp.value,
                    "ci_low": imp.ci_low,
                    "ci_high": imp.ci_high,
                    "share": share,
                    "site_association": assoc_site,
                    "label_association": association(x, label),
                    "site_within_label": test.value if test is not None else None,
                    "p": test.null_p if test is not None else None,
                }
            )
        raw_p = [r["p"] if r["p"] is not None else np.nan for r in rows_table]
        adj = adjust_pvalues(raw_p, p.multiplicity) if raw_p else np.array([])
        for k, r in enumerate(rows_table):
            sh: Estimate = r.pop("share")
            r["share"], r["p_adjusted"] = sh.value, None if np.isnan(adj[k]) else float(adj[k])
            out.metrics[f"tabular.site_feature_share.{r['key']}"] = Estimate(
                sh.value, sh.ci_low, sh.ci_high, len(rows), r["p_adjusted"]
            )
        importance = pd.DataFrame(rows_table).sort_values("mean_abs_shap", ascending=False)
        importance.insert(0, "rank", np.arange(1, len(importance) + 1))
        out.tables["tabular_importance"] = importance.drop(columns=["key"])
        if len(importance):
            out.metrics["tabular.top_feature"] = str(importance["feature"].iloc[0])
        shap_frame = pd.DataFrame(values, columns=names)
        shap_frame.insert(0, "id", [ds.ids[i] for i in rows])
        out.tables["tabular_shap_values"] = shap_frame
        for j, feat in enumerate(names):
            per_sample.loc[rows, f"shap.{feat}"] = values[:, j]
        raw = _raw_values(ctx, rows, names)
        order = [names.index(f) for f in importance["feature"]]
        out.figures["tabular_beeswarm"] = _beeswarm_figure(values, raw, names, order)
        for j in order[: p.dependence_plots]:
            out.figures[f"tabular_dependence_{metric_key(names[j])}"] = _dependence_figure(
                raw[:, j], values[:, j], shown_label, names[j], target.label or "label"
            )
        sub = _subgroup_importance(ctx, rows, absval, names, empty)
        if not sub.empty:
            out.tables["tabular_importance_by_subgroup"] = sub
            out.figures["tabular_subgroups"] = _subgroup_figure(sub)

    # ------------------------------------------------------------------- shares
    def _shares(
        self,
        ctx: AuditContext,
        p: AttributionCheck.Params,
        target: Target,
        out: CheckOutput,
        per_sample: pd.DataFrame,
    ) -> None:
        ds, adapter = ctx.dataset, ctx.adapter
        mods = [m for m in ds.modalities if m in adapter.layers]
        cols = [ds.modalities.index(m) for m in mods]
        rows = np.flatnonzero(ds.present[:, cols].all(1))
        embs = {m: torch.from_numpy(np.array(ctx.cache.embeddings(m))).float() for m in mods}
        # the reference is the one InferenceCache.ablated(..., "encoder") removes a modality
        # with (mean over the rows where it is present / zeros), so IG and the coalition game
        # below play the same game and differ only in method
        base = {}
        for m in mods:
            ref = ctx.cache.encoder_mean(m).float()
            base[m] = ref if p.share_baseline == "mean" else torch.zeros_like(ref)
        score_fn = target.score_fn()

        def attribute(b: Batch) -> tuple[np.ndarray, np.ndarray]:
            n = len(b)
            idx = b.index.cpu()
            dev = adapter.device
            layers = {m: (embs[m][idx].to(dev), base[m].to(dev)) for m in mods}
            attr = layer_integrated_gradients(
                adapter,
                b,
                layers,
                score_fn,
                n_steps=p.ig_steps,
                steps_per_pass=p.ig_steps_per_pass,
                method=p.ig_method,
            )
            contrib = torch.stack([attr[m].reshape(n, -1).sum(1) for m in mods], 1)
            refs = {m: base[m].to(dev).expand(n, *base[m].shape[1:]) for m in mods}
            fb = scores_with_layers(adapter, b, refs, score_fn)
            return contrib.detach().cpu().numpy(), fb.cpu().numpy()

        parts = ctx.cache.map_batches(attribute, grad=True, desc="modality shares", indices=rows)
        contrib = np.concatenate([q[0] for q in parts])
        fb = np.concatenate([q[1] for q in parts])
        fx = target.scores(ctx.cache.sweep().logits)[rows]
        out.metrics["shares.completeness_error"] = _ratio(
            np.abs(contrib.sum(1) - (fx - fb)), np.abs(fx - fb)
        )
        absc = np.abs(contrib)
        share = _abs_shares(contrib)
        removal: RemovalHow = (
            p.share_baseline if p.ablation_removal == "auto" else p.ablation_removal
        )
        phi = _coalition_shapley(ctx, target, mods, rows, removal)  # (n, M)
        abl_share = _abs_shares(phi)
        keep = np.isfinite(share).all(1)
        both = keep & np.isfinite(abl_share).all(1)
        groups = _groups(ctx, rows)
        boot: dict[str, Any] = {"n_boot": p.n_boot, "alpha": p.alpha, "seed": ctx.seed}
        table = []
        for k, m in enumerate(mods):
            g = None if groups is None else groups[keep]
            est = bootstrap_ci(np.mean, share[keep, k], groups=g, **boot)
            g2 = None if groups is None else groups[both]
            abl = bootstrap_ci(np.mean, abl_share[both, k], groups=g2, **boot)
            diff = bootstrap_ci(np.mean, share[both, k] - abl_share[both, k], groups=g2, **boot)
            out.metrics[f"shares.{m}"] = est
            out.metrics[f"shares.ablation.{m}"] = abl
            out.metrics[f"shares.diff_vs_ablation.{m}"] = diff
            per_sample.loc[rows, f"share.{m}"] = share[:, k]
            per_sample.loc[rows, f"ablation_share.{m}"] = abl_share[:, k]
            table.append(
                {
                    "modality": m,
                    "share": est.value,
                    "ci_low": est.ci_low,
                    "ci_high": est.ci_high,
                    "ablation_share": abl.value,
                    "ablation_ci_low": abl.ci_low,
                    "ablation_ci_high": abl.ci_high,
                    "diff": diff.value,
                    "diff_ci_low": diff.ci_low,
                    "diff_ci_high": diff.ci_high,
                    "mean_contribution": float(contrib[:, k].mean()),
                    "mean_abs_contribution": float(absc[:, k].mean()),
                    "mean_shapley": float(phi[:, k].mean()),
                    "n": int(keep.sum()),
                    "n_both": int(both.sum()),
                    "method": f"IG at encoder outputs, reference {p.share_baseline}",
                    "ablation_method": f"exact logit Shapley over {1 << len(mods)} coalitions,"
                    f" encoder level, removal {removal}",
                }
            )
        diffs = [r["diff"] for r in table if np.isfinite(r["diff"])]
        out.metrics["shares.max_abs_diff_vs_ablation"] = (
            float(max(abs(d) for d in diffs)) if diffs else float("nan")
        )
        out.tables["modality_shares"] = pd.DataFrame(table)
        if removal == p.share_baseline:
            reading = (
                f" (removal '{removal}', the same reference as the IG path); they agree exactly"
                " for an additive fusion, a gap means the modalities interact."
            )
        else:
            reading = (
                f" (removal '{removal}', a different reference from the IG path's"
                f" '{p.share_baseline}': the diff mixes method and reference, so a gap does"
                " not by itself mean the modalities interact)."
            )
        out.notes.append(
            "shares: IG shares set beside exact per-sample logit Shapley shares from the"
            f" coalition game{reading} The ablation check's own logit_share.* uses its"
            " strategy (default permute), a different reference"
        )
        out.figures["modality_shares"] = _shares_figure(share[keep], mods)
        if len(rows) < len(ds):
            out.notes.append(
                f"shares: computed on the {len(rows)} samples with every modality present"
            )
        if target.label is not None:
            out.notes.append(f"shares: IG and coalition Shapley of {target.description}")


# --------------------------------------------------------------------------- data helpers


def _abs_shares(values: np.ndarray) -> np.ndarray:
    """Each column's share of the row's total |value| (NaN where the total is 0)."""
    absv = np.abs(values)
    tot = absv.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, absv / tot, np.nan)


def _coalition_shapley(
    ctx: AuditContext, target: Target, mods: list[str], rows: np.ndarray, removal: RemovalHow
) -> np.ndarray:
    """Exact per-sample Shapley values (n, M) of the attributed score over every coalition
    of ``mods``, each coalition one memoised encoder-level sweep of the cache (only the
    fusion and head run; the ``ablation`` check's sweeps are reused when they match)."""
    removes = [
        {m: removal for j, m in enumerate(mods) if not (s >> j) & 1} for s in range(1 << len(mods))
    ]
    sweeps = ctx.cache.ablated_many(removes, "encoder")
    values = np.stack([target.scores(sw.logits)[rows] for sw in sweeps])
    return shapley_values(values).T


def _token_table(
    ctx: AuditContext,
    rows: np.ndarray,
    spans: list[list[tuple[str, list[int]]]],
    attr: np.ndarray,
) -> pd.DataFrame:
    """Every attributed token: report id, token position and text, the word it belongs to
    (``word_index`` counts words within the report) and its IG attribution."""
    ds = ctx.dataset
    assert ds.input_ids is not None
    columns = ["id", "position", "token", "word_index", "word", "attribution"]
    # one flat entry per (report, word, token position), in report and word order
    doc_of, position, word_index, word = [], [], [], []
    for d, doc in enumerate(spans):
        for w, (text, positions) in enumerate(doc):
            doc_of.extend([d] * len(positions))
            position.extend(positions)
            word_index.extend([w] * len(positions))
            word.extend([text] * len(positions))
    if not position:
        return pd.DataFrame(columns=columns)
    doc_arr = np.asarray(doc_of, dtype=np.int64)
    pos_arr = np.asarray(position, dtype=np.int64)
    token_ids = ds.input_ids[rows].numpy()[doc_arr, pos_arr]
    convert = getattr(ds.tokenizer, "convert_ids_to_tokens", None)
    tokens = convert(token_ids.tolist()) if convert is not None else token_ids.astype(str)
    return pd.DataFrame(
        {
            "id": np.asarray(ds.ids, dtype=object)[np.asarray(rows)[doc_arr]],
            "position": pos_arr,
            "token": tokens,
            "word_index": np.asarray(word_index, dtype=np.int64),
            "word": word,
            "attribution": attr[doc_arr, pos_arr].astype(float),
        },
        columns=columns,
    )


def _marked_text(pieces: list[tuple[str, float]], share: float = 0.25) -> str:
    """The report as plain text with its strong words marked: ``«word +0.42»`` for every word
    whose |attribution| is at least ``share`` of the report's largest (the HTML renderer
    escapes it; nothing here is markup)."""
    scale = max((abs(a) for _, a in pieces), default=0.0)
    parts: list[str] = []
    for word, a in pieces:
        strong = scale > 0 and abs(a) >= share * scale
        text = f"«{word} {a:+.2f}»" if strong else word
        if parts and not is_word(word) and not strong:
            parts[-1] += text
        else:
            parts.append(text)
    return " ".join(parts)


def _raw_values(ctx: AuditContext, rows: np.ndarray, names: list[str]) -> np.ndarray:
    """Lab values in their original units (NaN where missing), for plots."""
    ds = ctx.dataset
    values = ds.tabular[rows].numpy().astype(float)  # type: ignore[index]
    for j, n in enumerate(names):
        mu, sd = ds.tabular_stats.get(n, (0.0, 1.0))
        values[:, j] = values[:, j] * sd + mu
    values[ds.tabular_missing[rows].numpy()] = np.nan  # type: ignore[index]
    return values


def _subgroup_importance(
    ctx: AuditContext, rows: np.ndarray, absval: np.ndarray, names: list[str], empty: np.ndarray
) -> pd.DataFrame:
    """Mean |SHAP| per feature within each group of each configured attribute."""
    attrs = ctx.dataset.attributes
    table = []
    for attr in attrs.columns:
        spec = ctx.config.data.attributes.get(attr)
        col = attrs[attr].to_numpy()[rows]
        if spec is not None and spec.kind == "continuous":
            numeric = pd.to_numeric(pd.Series(col), errors="coerce")
            if spec.bins:
                edges = [-np.inf, *spec.bins, np.inf]
                labels = pd.cut(numeric, edges, right=False).astype(str)
            else:
                labels = pd.qcut(numeric, 4, duplicates="drop").astype(str)
            labels = labels.where(numeric.notna(), "missing").to_numpy()
        else:
            labels = np.array(["missing" if v is None or v != v else str(v) for v in col])
        for group in sorted(set(labels)):
            sel = labels == group
            for j, feat in enumerate(names):
                if empty[j]:
                    continue
                table.append(
                    {
                        "attribute": attr,
                        "group": group,
                        "n": int(sel.sum()),
                        "feature": feat,
                        "mean_abs_shap": float(absval[sel, j].mean()),
                    }
                )
    return pd.DataFrame(table)


# --------------------------------------------------------------------------- figures


def _highlight_figure(examples: list[tuple[str, list[tuple[str, float]]]]) -> Figure:
    """Each example report with every word shaded by its attribution toward the class named
    in its title (red: toward, blue: against), scaled per report; white text on the dark
    shades so that the strongest words stay readable."""
    plt = pyplot()
    from matplotlib import colormaps

    cmap = colormaps["RdBu_r"]
    width_in = 10.0
    lines_est = [max(1, sum(len(w) + 1 for w, _ in ex) // 95 + 1) for _, ex in examples]
    height = 0.5 + sum(0.45 + 0.32 * n for n in lines_est)
    fig = plt.figure(figsize=(width_in, height))
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    fig_w = fig.get_figwidth() * fig.dpi
    y = 1.0 - 0.25 / height
    line_h = 0.32 / height
    for title, pieces in examples:
        fig.text(0.01, y, title, fontsize=9, weight="bold", va="top", parse_math=False)
        y -= 0.3 / height
        scale = max((abs(a) for _, a in pieces), default=0.0) or 1.0
        x = 0.01
        for word, a in pieces:
            glue = not is_word(word)
            t = fig.text(
                x,
                y,
                word,
                fontsize=9,
                va="top",
                parse_math=False,
                color="white" if abs(a) / scale > 0.6 else "black",
                bbox={
                    "facecolor": cmap(0.5 + 0.5 * a / scale),
                    "edgecolor": "none",
                    "pad": 1.0,
                },
            )
            w = t.get_window_extent(renderer).width / fig_w
            if x + w > 0.99 and x > 0.01:
                y -= line_h
                x = 0.01
                t.set_position((x, y))
            x += w + (0.004 if glue else 0.008)
        y -= line_h + 0.15 / height
    fig.text(
        0.99,
        0.005,
        "red: raises the titled score S, i.e. pushes toward the class in the title; blue:"
        " against (scaled per report); the words' sum is S minus S of the all-[PAD] report",
        fontsize=7,
        ha="right",
        va="bottom",
        color="#555",
    )
    return literal_text(fig)


def _ranking_figure(ranking: pd.DataFrame, top: int, classes: list[str]) -> Figure:
    """One panel per class in ``classes`` (its top words, titled by the score shown)."""
    plt = pyplot()
    fig, axes = plt.subplots(
        1, len(classes), figsize=(4.5 * len(classes), 0.3 * min(top, 15) + 1.2), squeeze=False
    )
    for ax, name in zip(axes[0], classes, strict=True):
        sub = ranking[ranking["class"] == name].head(top).iloc[::-1]
        y = np.arange(len(sub))
        lo = (sub["mean_attribution"] - sub["ci_low"].astype(float)).clip(lower=0).fillna(0)
        hi = (sub["ci_high"].astype(float) - sub["mean_attribution"]).clip(lower=0).fillna(0)
        ax.barh(y, sub["mean_attribution"], xerr=[lo, hi], color="#c0504d", alpha=0.85)
        ax.set_yticks(y, [f"{w} (n={c})" for w, c in zip(sub["word"], sub["count"], strict=True)])
        ax.axvline(0, color="#333", lw=0.6)
        ax.set_title(str(sub["direction"].iloc[0]) if len(sub) else f"toward {name}", fontsize=10)
        ax.set_xlabel("mean attribution per report toward the class (95% CI)")
    fig.tight_layout()
    return literal_text(fig)


def _beeswarm_figure(
    values: np.ndarray, raw: np.ndarray, names: list[str], order: list[int]
) -> Figure:
    """SHAP summary: one row per feature (most important on top), a dot per sample at its
    SHAP value, coloured by the feature's value (rank within the feature). Missing values
    are hollow black rings with their own legend entry: a grey dot would read as the
    colour scale's midpoint (a median value)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(order) + 1.4))
    rng = np.random.default_rng(0)
    n_missing = int(np.sum(~np.isfinite(raw[:, order]))) if len(order) else 0
    labelled = False
    for pos, j in enumerate(reversed(order)):
        v = values[:, j]
        r = raw[:, j]
        color = np.full(len(v), 0.5)
        ok = np.isfinite(r)
        if ok.sum() > 1:
            ranks = pd.Series(r[ok]).rank(pct=True).to_numpy()
            color[ok] = ranks
        jitter = _swarm_offsets(v, rng) * 0.35
        ax.scatter(
            v[~ok],
            pos + jitter[~ok],
            s=14,
            facecolors="none",
            edgecolors="black",
            linewidths=0.7,
            label=None if labelled or ok.all() else f"missing value (n={n_missing})",
        )
        labelled = labelled or not ok.all()
        sc = ax.scatter(v[ok], pos + jitter[ok], s=8, c=color[ok], cmap="coolwarm", vmin=0, vmax=1)
    ax.set_yticks(range(len(order)), [names[j] for j in reversed(order)])
    ax.axvline(0, color="#333", lw=0.6)
    ax.set_xlabel("SHAP value (contribution to the score)")
    if n_missing:
        ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    if len(order):
        cb = fig.colorbar(sc, ax=ax, pad=0.01)
        cb.set_label("feature value, rank within the feature (low -> high)")
    fig.tight_layout()
    return literal_text(fig)


def _swarm_offsets(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Vertical offsets in [-1, 1] that grow with the local density of ``v`` (a cheap swarm)."""
    if len(v) < 2 or np.ptp(v) == 0:
        return rng.uniform(-1, 1, len(v)) * 0.3
    bins = np.clip(((v - v.min()) / np.ptp(v) * 40).astype(int), 0, 40)
    counts = np.bincount(bins, minlength=41)
    density = counts[bins] / counts.max()
    return rng.uniform(-1, 1, len(v)) * density


def _dependence_figure(
    raw: np.ndarray, shap_values: np.ndarray, label: np.ndarray, name: str, label_name: str
) -> Figure:
    """SHAP value of one lab against its value, coloured by ``label_name`` (the label)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ok = np.isfinite(raw)
    lab = label if np.ndim(label) == 1 else np.zeros(len(raw))
    for c in np.unique(lab):
        sel = ok & (lab == c)
        ax.scatter(raw[sel], shap_values[sel], s=10, alpha=0.7, label=f"{label_name} {c:g}")
    ax.axhline(0, color="#333", lw=0.6)
    ax.set_xlabel(f"{name} (missing: {int((~ok).sum())} not shown)")
    ax.set_ylabel(f"SHAP value of {name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return literal_text(fig)


def _subgroup_figure(table: pd.DataFrame) -> Figure:
    plt = pyplot()
    attrs = list(dict.fromkeys(table["attribute"]))
    fig, axes = plt.subplots(1, len(attrs), figsize=(4.2 * len(attrs), 3.2), squeeze=False)
    for ax, attr in zip(axes[0], attrs, strict=True):
        pivot = table[table["attribute"] == attr].pivot(
            index="group", columns="feature", values="mean_abs_shap"
        )
        im = ax.imshow(pivot.to_numpy(), aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(pivot.index)), [str(g) for g in pivot.index])
        ax.set_xticks(range(len(pivot.columns)), list(pivot.columns), rotation=45, ha="right")
        ax.set_title(f"mean |SHAP| by {attr}", fontsize=10)
        fig.colorbar(im, ax=ax, pad=0.01)
    fig.tight_layout()
    return literal_text(fig)


def _shares_figure(share: np.ndarray, mods: list[str]) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 * len(mods) + 2, 3.4))
    if len(share):
        ax.boxplot([share[:, k] for k in range(len(mods))], showmeans=True)
    ax.set_xticks(range(1, len(mods) + 1), mods)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of |attribution| per sample")
    ax.set_title("modality shares (IG at encoder outputs)", fontsize=10)
    fig.tight_layout()
    return literal_text(fig)
