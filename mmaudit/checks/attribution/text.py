"""Stage group: the report words -- IG over the tokens, then the word ranking per target,
the shares of |attribution| (stop-list, punctuation, site words) pooled over the targets,
the example reports and the ranking figure.

Runs the text stages in order and gathers what they return into one ``Fragment``, in
the order the report shows it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmaudit.checks.attribution.records import Fragment, SampleColumn
from mmaudit.checks.attribution.rows import completeness_error, row_groups
from mmaudit.checks.attribution.site_power import SITE_TEST_NEXT_STEP
from mmaudit.checks.attribution.text_examples import example_reports
from mmaudit.checks.attribution.text_ig import attribute_reports, token_table
from mmaudit.checks.attribution.word_ranking import rank_words, ranking_figure
from mmaudit.checks.attribution.word_shares import (
    punctuation_share,
    site_word_test,
    stoplist_share,
)
from mmaudit.methods.text_attribution import is_word, word_spans

if TYPE_CHECKING:
    from mmaudit.checks.attribution.check import AttributionCheck
    from mmaudit.checks.contract import AuditContext
    from mmaudit.methods.attribution_target import Target
    from mmaudit.methods.memory_budget import MemoryBudget


def attribute_text(
    ctx: AuditContext,
    p: AttributionCheck.Params,
    targets: list[Target],
    budget: MemoryBudget | None = None,
) -> Fragment:
    """IG of every target's score over the report tokens (one pass per target: one for
    a binary or multiclass model, one per label column of a multilabel one); the word
    ranking per target, the |attribution| shares (stop-list, punctuation, site words)
    pooled over the targets."""
    out = Fragment()
    ds = ctx.dataset
    tok = ds.tokenizer
    assert ds.input_ids is not None
    ig = attribute_reports(ctx, p, targets, budget)
    rows, attr, fx, fb = ig.rows, ig.attr, ig.fx, ig.fb
    if len(rows) < ig.n_eligible:
        out.notes.append(
            f"text: IG on {len(rows)} of {ig.n_eligible} reports with words"
            f" (max_text_samples={p.max_text_samples}), a seeded draw stratified by"
            f" {ig.strata_by}: each of the {ig.n_cells} cells in proportion to its size"
            f" ({ig.n_cells_kept} of {ig.n_cells} cells represented)"
        )
    out.metrics["text.n_samples"] = len(rows)
    error, note = completeness_error(
        attr.sum(2), np.abs(attr).sum(2), fx, fb, "text: the report words"
    )
    out.metrics["text.completeness_error"] = error
    if note is not None:
        out.notes.append(note)
    for t, target in enumerate(targets):
        suffix = "" if target.label is None else f".{target.label}"
        out.columns.append(SampleColumn(f"text_attribution_sum{suffix}", rows, attr[t].sum(1)))
        out.columns.append(SampleColumn(f"text_score_change{suffix}", rows, fx[t] - fb[t]))

    spans = word_spans(tok, [ds.texts[i] for i in rows], ds.input_ids[rows], ds.input_ids.shape[1])
    tokens = []
    for t, target in enumerate(targets):
        table = token_table(ctx, rows, spans, attr[t])
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
    occ = occ.groupby(["target", "doc", "word"], as_index=False, sort=False)["attribution"].sum()
    occ["abs"] = occ["attribution"].abs()
    groups = row_groups(ctx, rows)
    boot: dict[str, Any] = {"n_boot": p.n_boot, "alpha": p.alpha, "seed": ctx.seed}

    rankings = []
    for t, target in enumerate(targets):
        words_t = occ[(occ["target"] == t) & occ["word"].map(is_word)]
        ranked = rank_words(p, target, rows, words_t, groups, boot)
        out.metrics.update(ranked.top_words)
        rankings.append(ranked.table)
    ranking = pd.concat(rankings, ignore_index=True) if len(rankings) > 1 else rankings[0]
    out.tables["word_ranking"] = ranking

    # shares of |attribution| pool the targets: per (report, word) the sum of its
    # |attribution| toward each target (one target: just its |attribution|)
    pooled = occ.groupby(["doc", "word"], as_index=False, sort=False)[["attribution", "abs"]].sum()
    n_docs = len(rows)
    doc_total = pooled.groupby("doc")["abs"].sum().reindex(range(n_docs), fill_value=0.0)
    words = pooled[pooled["word"].map(is_word)]
    stop = {w.lower() for w in p.stoplist}
    out.metrics["text.stoplist_share"] = stoplist_share(
        pooled, doc_total.to_numpy(), stop, groups, boot
    )
    punctuation = punctuation_share(
        pooled, doc_total.to_numpy(), groups, boot, _pooled_score(targets)
    )
    out.metrics["text.punctuation_share"] = punctuation.share
    if punctuation.note is not None:
        out.notes.append(punctuation.note)

    site = site_word_test(ctx, p, rows, words, doc_total.to_numpy(), groups, stop, boot)
    out.notes.extend(site.notes)
    out.metrics.update(site.metrics)
    out.coverage.extend(site.coverage)
    out.exempt_rules.update(site.exempt_rules)
    out.exempt_next_steps.update(dict.fromkeys(site.exempt_rules, SITE_TEST_NEXT_STEP))
    out.tables["word_site_test"] = site.table
    examples = example_reports(ctx, p, targets, rows, spans, attr, fx)
    if examples is not None:
        out.notes.extend(examples.notes)
        out.tables["text_examples"] = examples.table
        out.figures["text_examples"] = examples.figure
        out.private |= {"text_examples"}
    if not ranking.empty:
        # a panel per class; with more than two labels, the toward-label panels only
        panels = [name for t in targets for name, _, _ in t.classes]
        if len(targets) > 2:
            panels = [t.classes[0][0] for t in targets]
        out.figures["text_word_ranking"] = ranking_figure(ranking, p.top_words, panels[:4])
    else:
        out.notes.append(
            f"text: no word occurs in min_count={p.min_count} reports: nothing is ranked"
            " (lower min_count or attribute more reports)"
        )
    return out


def _pooled_score(targets: list[Target]) -> str:
    """The score whose attribution pooled (summed) over ``targets`` is, in words."""
    if len(targets) > 1:
        return "the sum of the label logits"
    target = targets[0]
    if target.mode == "column":
        return "the predicted class's logit"
    return target.score_label(target.classes[0][0], 1.0)
