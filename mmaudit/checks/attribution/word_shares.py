"""Stage: shares of the report's |attribution| -- stop-listed words, punctuation, and the
words that carry most of it, each tested for telling the site apart within a label.

Shares pool every target: per (report, word) the sum of its |attribution| toward each
target. The site test shuffles the site within label classes (``SiteGivenLabel``) and is
corrected across words (``multiplicity``); a word that merely encodes the site is what
the ``site_word`` rule judges, weighted by how much of the attribution it carries. On
too few rows off each label class's main site the test clears no word: those not found
are reported untested, not passed (``site_power``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmaudit.checks.attribution.records import unique_key
from mmaudit.checks.attribution.rows import pooled_ratio, site_values
from mmaudit.checks.attribution.site_power import (
    SiteCells,
    configured_rule,
    untested_site_claims,
)
from mmaudit.methods.stats import Estimate, adjust_pvalues, bootstrap_ci
from mmaudit.methods.text_attribution import SiteGivenLabel, association, is_word, metric_key

if TYPE_CHECKING:
    from mmaudit.checks.attribution.check import AttributionCheck
    from mmaudit.checks.contract import AuditContext


def stoplist_share(
    pooled: pd.DataFrame,
    doc_total: np.ndarray,
    stop: set[str],
    groups: np.ndarray | None,
    boot: dict[str, Any],
) -> Estimate:
    """``text.stoplist_share``: the share of all text |attribution| on stop-listed words."""
    n_docs = len(doc_total)
    stop_abs = (
        pooled[pooled["word"].isin(stop)]
        .groupby("doc")["abs"]
        .sum()
        .reindex(range(n_docs), fill_value=0.0)
    )
    return bootstrap_ci(pooled_ratio, stop_abs.to_numpy(), doc_total, groups=groups, **boot)


@dataclass(frozen=True)
class PunctuationShare:
    """``text.punctuation_share`` and the note naming the largest punctuation tokens
    (None when the reports have none)."""

    share: Estimate
    note: str | None


def punctuation_share(
    occ: pd.DataFrame,
    doc_total: np.ndarray,
    groups: np.ndarray | None,
    boot: dict[str, Any],
    score: str,
) -> PunctuationShare:
    """``text.punctuation_share``: the share of all text |attribution| on punctuation-only
    tokens, which the word ranking and the site test leave out (``is_word``); a note names
    the largest with its mean attribution on ``score``. A model leaning on '.' reads the
    report's layout (sentence count, length), not its findings, and the ranking alone
    would hide it."""
    punct = occ[~occ["word"].map(is_word)]
    per_doc = punct.groupby("doc")["abs"].sum().reindex(range(len(doc_total)), fill_value=0)
    share = bootstrap_ci(pooled_ratio, per_doc.to_numpy(), doc_total, groups=groups, **boot)
    total = float(doc_total.sum())
    if punct.empty or total <= 0:  # no punctuation, or no attribution at all to share
        return PunctuationShare(share, None)
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
    note = (
        f"text: punctuation carries {share.value:.1%}{ci} of all text |attribution|"
        f" ({', '.join(parts)});"
        " punctuation is not ranked as a word nor site-tested, so this share is reported"
        " here (text.punctuation_share): a large one means the model reads the report's"
        " layout (sentence breaks, length) as well as its words"
    )
    return PunctuationShare(share, note)


@dataclass
class SiteWordTest:
    """The ``word_site_test`` table, the metrics ``text.site_word_share.<word>`` (share
    of |attribution| with the corrected p-value), the note when the test cannot run, and
    the coverage line and ``site_word`` exemption when it ran on too few rows to clear a
    word (``site_power``)."""

    table: pd.DataFrame
    metrics: dict[str, Estimate] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    coverage: list[str] = field(default_factory=list)
    exempt_rules: dict[str, str] = field(default_factory=dict)


def site_word_test(
    ctx: AuditContext,
    p: AttributionCheck.Params,
    rows: np.ndarray,
    words: pd.DataFrame,
    doc_total: np.ndarray,
    groups: np.ndarray | None,
    stop: set[str],
    boot: dict[str, Any],
) -> SiteWordTest:
    """The words carrying most |attribution| (``report_words`` of those in at least
    ``min_count`` reports), each with its share and the site-within-label test; a word
    the test had too few rows to clear (``min_site_test_rows``) is reported untested,
    its metric without a p-value (``site_power``)."""
    metrics: dict[str, Estimate] = {}
    notes: list[str] = []
    n_docs = len(rows)
    g = words.groupby("word")
    stats = pd.DataFrame({"count": g["doc"].nunique(), "abs": g["abs"].sum()})
    total = float(doc_total.sum())
    stats["share"] = stats["abs"] / total if total > 0 else np.nan
    cand = stats[stats["count"] >= p.min_count].sort_values(
        ["share", "count"], ascending=[False, False], kind="stable"
    )
    cand = cand.head(p.report_words)
    site, why = site_values(ctx, p.site_attribute)
    if site is None:
        notes.append(f"text: site test not run: {why}")
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
        shares.append(bootstrap_ci(pooled_ratio, per_doc, doc_total, groups=groups, **boot))
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
        key = unique_key(metric_key(word), taken)
        metrics[f"text.site_word_share.{key}"] = Estimate(
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
    result = SiteWordTest(pd.DataFrame(table), metrics, notes)
    if site is not None and tester is not None:
        # too few rows off each label class's main site: a word not cleared is untested
        claims = untested_site_claims(
            "site_word",
            configured_rule(ctx, "site_word"),
            metrics,
            SiteCells.of(site[rows][ok], label[ok]),
            p.min_site_test_rows,
        )
        result.metrics, result.coverage, result.exempt_rules = (
            claims.metrics,
            claims.coverage,
            claims.exempt,
        )
    return result
