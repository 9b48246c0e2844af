"""Whether the site-within-label test had the rows to clear a report word or a lab.

The test (``SiteGivenLabel``) compares the sites *within* a label class, so what it can
see rests on the studies whose site is not their class's usual one: positives from the
low-prevalence site, negatives from the high-prevalence one. When site is tied to the
label (prevalence 0.95 at one site, 0.05 at the other), 95 studies hold four or five
such rows: a site-coded lab carrying half the attribution then gets p = 0.15, and a
silent pass would read as "tested, no site signal" when nothing was tested.

The rule: the test clears a candidate only when the label classes hold at least
``min_site_test_rows`` studies off their class's most common site (summed over the
classes; a class with one site adds none). Below that,

* a candidate whose corrected p clears the rule's ``max_p`` gate stands and is judged as
  ever: a permutation p-value is valid at any size, only its absence means little;
* every other candidate keeps its share and loses its p-value, so the rule cannot judge
  it (``findings.judgeable``), and a coverage line names the rule, the studies per
  (label, site) cell and what to do;
* when the rule is left with nothing to judge it is exempted
  (``CheckOutput.exempt_rules``): the report shows a note, "not judged", with the same
  counts, in place of a pass.

A rule without a ``max_p`` gate (a YAML override) does not rest on the test: unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from mmaudit.checks.attribution.rules import ATTRIBUTION_RULES
from mmaudit.checks.contract import ThresholdRule
from mmaudit.methods.stats import Estimate

if TYPE_CHECKING:
    from mmaudit.checks.contract import AuditContext

#: what each site rule asks, and what it asks it of (singular, plural), in words
_CLAIMS = {
    "site_word": ("report word", "report words"),
    "site_feature": ("lab feature", "lab features"),
}
_WHAT_TO_DO = (
    "audit more studies from the small (label, site) cells, or a split where site and label"
    " are less tied"
)
#: the "not judged" note's next step (the rule's own is advice for a cue that was found)
SITE_TEST_NEXT_STEP = (
    f"To test it, {_WHAT_TO_DO}; until then, read the largest shares in the word ranking /"
    " lab importance as unexplained, not as cleared"
)


@dataclass(frozen=True)
class SiteCells:
    """Studies per (label class, site) among the rows the site test ran on."""

    counts: dict[str, dict[str, int]]

    @classmethod
    def of(cls, site: np.ndarray, label: np.ndarray) -> SiteCells:
        """The cells of ``site`` (n,) within the classes of ``label`` (n,), or (n, k) for
        a multilabel target, whose classes are its rows' label combinations (as the test's
        strata are)."""
        site = np.asarray(site).astype(str)
        label = np.asarray(label)
        key = (
            np.array(["|".join(map(str, r)) for r in label])
            if label.ndim == 2
            else label.astype(str)
        )
        counts: dict[str, dict[str, int]] = {}
        for k in np.unique(key):
            sites, n = np.unique(site[key == k], return_counts=True)
            counts[str(k)] = {str(s): int(c) for s, c in zip(sites, n, strict=True)}
        return cls(counts)

    @property
    def off_main(self) -> int:
        """Studies off their label class's most common site, summed over the classes."""
        return sum(sum(c.values()) - max(c.values()) for c in self.counts.values() if c)

    def describe(self) -> str:
        """``label 0: A 38, B 2; label 1: A 0, B 40`` (every site in every class)."""
        sites = sorted({s for c in self.counts.values() for s in c})
        return "; ".join(
            f"label {k}: " + ", ".join(f"{s} {c.get(s, 0)}" for s in sites)
            for k, c in self.counts.items()
        )


@dataclass
class SiteClaims:
    """The site rule's metrics after the power rule, the rule's exemption (rule -> why)
    when nothing is left to judge, and the coverage line when some candidate is untested."""

    metrics: dict[str, Estimate]
    exempt: dict[str, str] = field(default_factory=dict)
    coverage: list[str] = field(default_factory=list)


def configured_rule(ctx: AuditContext, name: str) -> ThresholdRule:
    """The attribution rule ``name`` as this audit judges it: the default updated by the
    config's ``checks.attribution.thresholds.<name>`` (validated when the run was planned)."""
    cc = ctx.config.checks.get("attribution")
    change = cc.thresholds.get(name, {}) if cc is not None else {}
    return ThresholdRule.model_validate({**ATTRIBUTION_RULES[name].model_dump(), **change})


def untested_site_claims(
    rule_name: str,
    rule: ThresholdRule,
    metrics: dict[str, Estimate],
    cells: SiteCells,
    minimum: int,
) -> SiteClaims:
    """``metrics`` (a share each, ``null_p`` the corrected site-within-label p) with the
    untested candidates' p-values removed when ``cells`` hold fewer than ``minimum``
    studies off their label class's main site; see the module docstring."""
    off = cells.off_main
    if off >= minimum or not metrics or rule.max_p is None:
        return SiteClaims(dict(metrics))
    max_p = rule.max_p
    out: dict[str, Estimate] = {}
    untested = 0
    for key, est in metrics.items():
        if est.null_p is not None and est.null_p <= max_p:
            out[key] = est
            continue
        untested += 1
        out[key] = Estimate(est.value, est.ci_low, est.ci_high, est.n, None)
    one, many = _CLAIMS[rule_name]
    counts = (
        f"{off} {'study' if off == 1 else 'studies'} off their label class's main site"
        f" ({cells.describe()}), fewer than min_site_test_rows={minimum}"
    )
    claims = SiteClaims(out)
    if untested:
        claims.coverage.append(
            f"{rule_name}: {untested} of {len(metrics)} {many} not tested for a site signal:"
            f" the site-within-label test ran on {counts}; {_WHAT_TO_DO}"
        )
    if untested == len(metrics):
        claims.exempt[rule_name] = (
            f"Not tested: whether a {one} that drives the predictions tells the hospital"
            " sites apart among cases with the same diagnosis. The site-within-label test"
            f" ran on {counts}: too few to see a site signal, so a large share here is not"
            f" cleared; {_WHAT_TO_DO}"
        )
    return claims
