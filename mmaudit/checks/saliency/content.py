"""The content gate of the use rules (``hotspot_used``, ``scan_used``): does the off-ROI box
the model relies on hold something that differs by the label or an audited attribute?

What: for each box a use rule would flag, a per-study summary of what is inside it (the mean
and the standard deviation of the preprocessed image's pixels in the box, channels averaged)
over every audited image row, tested against the label (the explained column) and every
``data.attributes`` column: a categorical target (the label, a categorical attribute) by
Kruskal-Wallis across its levels, with the effect of the level that stands out most against
the rest as an AUROC (Mann-Whitney U / (n1 n0)); a continuous attribute by Spearman's rho.
Holm runs over every test of every box the stage asks about (statistics x targets x
boxes). A box is *associated* when one test has a Holm p of at most ``content_max_p`` and
an effect of at least ``content_min_auroc_gap`` (|AUROC - 0.5|) or ``content_min_rho``
(|rho|).

Why: in-filling any salient structure outside the ROI (the spine on an abdominal slice, the
heart's shadow on a chest film) is a large, out-of-distribution change, so it can flip more
decisions than matched random boxes, whose fills are never that large. The model relies on
that structure, but a structure that looks the same in every study cannot carry the label
or a site / sex / age shortcut: only content that differs by one of them can. The effect
floor keeps a tiny, significant difference at a large N (an anatomical edge that sits a
pixel lower in one sex) from counting.

Cost: pixels only, one pass over the image rows (decoding, no model run), and only when a
use rule flags a box."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.stats import kruskal, mannwhitneyu, spearmanr

from mmaudit.methods.stats import adjust_pvalues

if TYPE_CHECKING:
    from mmaudit.checks.saliency.setting import Setting
    from mmaudit.engine.data import Batch

Box = tuple[int, int, int, int]  # image pixels (r0, r1, c0, c1), end-exclusive

#: the per-study summaries of a box's content that are tested
STATISTICS = ("mean", "std")
_STAT_WORDS = {"mean": "box mean", "std": "box std"}


@dataclass(frozen=True)
class ContentTest:
    """One test of one box's content summary against one target."""

    target: str  #: "label" or an attribute name
    statistic: str  #: "mean" or "std"
    measure: str  #: "AUROC" (categorical target) or "rho" (continuous attribute)
    #: AUROC of ``level`` against the other rows, or Spearman's rho
    effect: float
    #: |AUROC - 0.5| or |rho|: what the effect floor compares
    gap: float
    p: float  #: raw p-value (Kruskal-Wallis or Spearman)
    n: int  #: rows with both the summary and the target known
    level: str | None = None  #: the level that stands out (categorical targets)
    other: str | None = None  #: the other level when there are two, else None ("the rest")
    p_holm: float = float("nan")


@dataclass(frozen=True)
class Association:
    """A box's content against the label and the attributes (see the module docstring)."""

    #: True: some test clears both gates; False: none does; None: no test could run
    associated: bool | None
    #: the test the words report: the strongest passing one, else the largest effect
    lead: ContentTest | None
    tests: list[ContentTest] = field(default_factory=list)
    #: the targets tested ("label", attribute names), in order
    targets: list[str] = field(default_factory=list)
    #: tests in the Holm family (every box the stage asked about)
    family: int = 0
    rows: int = 0

    def words(self) -> str:
        """What the box's content does, for a finding: "differs by site (AUROC 0.98 for
        B vs A, box mean; Holm p < 0.001 over 8 tests, 64 images)"."""
        if self.associated is None or self.lead is None:
            return (
                "could not be tested against the label or an attribute (fewer than two"
                " levels with data)"
            )
        t = self.lead
        stats = f"{_effect_text(t)}, {_STAT_WORDS[t.statistic]}; {_p_text(t.p_holm)} over"
        stats += f" {self.family} tests, {self.rows} images"
        if self.associated:
            return f"differs by {_target_word(t.target)} ({stats})"
        return (
            f"does not differ by {_listing([_target_word(x) for x in self.targets])}"
            f" (largest difference: {_target_word(t.target)}, {stats})"
        )


def content_targets(s: Setting, rows: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    """What a box's content is tested against, for ``rows``: ``label`` (the explained
    column; categorical) and every attribute (its config kind), as (kind, values) with
    None / NaN where unknown."""
    targets: dict[str, tuple[str, np.ndarray]] = {
        "label": ("categorical", _levels(np.asarray(s.labels(rows))))
    }
    attrs = s.ds.attributes
    specs = s.ctx.config.data.attributes
    for name in getattr(attrs, "columns", []):
        spec = specs.get(name)
        col = attrs[name].to_numpy()[rows]
        if spec is not None and spec.kind == "continuous":
            targets[str(name)] = ("continuous", pd.to_numeric(col, errors="coerce").astype(float))
        else:
            targets[str(name)] = ("categorical", _levels(col))
    return targets


def _levels(col: np.ndarray) -> np.ndarray:
    """Level labels as text (a whole-number float label as ``1``, not ``1.0``), None where
    unknown."""
    out = []
    for x in col:
        if pd.isna(x):
            out.append(None)
        elif isinstance(x, (float, np.floating)) and float(x).is_integer():
            out.append(str(int(x)))
        else:
            out.append(str(x))
    return np.array(out, dtype=object)


def box_content(s: Setting, boxes: Sequence[Box], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per box the mean and the standard deviation of the preprocessed image's pixels in
    it (channels averaged), ``(boxes, rows)`` each, in ``rows`` order: one pass over the
    images, no model run."""

    def fn(batch: Batch) -> dict[str, np.ndarray]:
        assert batch.image is not None
        x = batch.image.float().mean(1)
        res = {k: np.zeros((len(boxes), len(batch))) for k in STATISTICS}
        for j, (r0, r1, c0, c1) in enumerate(boxes):
            inside = x[:, r0:r1, c0:c1].flatten(1)
            res["mean"][j] = inside.mean(1).cpu().numpy()
            res["std"][j] = inside.std(1, unbiased=False).cpu().numpy()
        return res

    parts = s.ctx.cache.map_batches(fn, desc="saliency box content", indices=rows)
    return {k: np.concatenate([q[k] for q in parts], axis=1) for k in STATISTICS}


def association_tests(
    values: Mapping[str, np.ndarray], targets: Mapping[str, tuple[str, np.ndarray]]
) -> list[ContentTest]:
    """Every (statistic, target) test of one box's per-study summaries ``values``
    (statistic -> ``(n,)``) against ``targets`` (name -> (kind, ``(n,)`` values)); a
    target with fewer than two known levels (or values) is left out."""
    tests = []
    for target, (kind, y) in targets.items():
        for stat, v in values.items():
            v = np.asarray(v, dtype=float)
            t = (
                _spearman(v, np.asarray(y, dtype=float), target, stat)
                if kind == "continuous"
                else _categorical(v, y, target, stat)
            )
            if t is not None:
                tests.append(t)
    return tests


def judge_association(
    per_box: Sequence[list[ContentTest]],
    max_p: float,
    min_auroc_gap: float,
    min_rho: float,
    targets: Sequence[str] = (),
    rows: int = 0,
) -> list[Association]:
    """Holm over every test of every box, then each box's verdict: associated when a test
    has Holm p <= ``max_p`` and an effect at or above its floor (``min_auroc_gap`` for
    |AUROC - 0.5|, ``min_rho`` for |rho|). The reported test is the passing one with the
    largest effect over its floor, else the largest effect over its floor overall."""
    flat = [t for tests in per_box for t in tests]
    adjusted = adjust_pvalues([t.p for t in flat], "holm") if flat else np.array([])
    out, k = [], 0
    for tests in per_box:
        done = []
        for t in tests:
            done.append(_with_holm(t, float(adjusted[k])))
            k += 1
        if not done:
            out.append(Association(None, None, [], list(targets), len(flat), rows))
            continue

        def strength(t: ContentTest) -> tuple[float, float]:
            floor = min_rho if t.measure == "rho" else min_auroc_gap
            return (t.gap / floor if floor > 0 else t.gap, -t.p_holm)

        passing = [
            t
            for t in done
            if t.p_holm <= max_p and t.gap >= (min_rho if t.measure == "rho" else min_auroc_gap)
        ]
        lead = max(passing or done, key=strength)
        out.append(Association(bool(passing), lead, done, list(targets), len(flat), rows))
    return out


def box_associations(s: Setting, boxes: Sequence[Box]) -> list[Association]:
    """The content gate for ``boxes`` (one Holm family) over every image row: see the
    module docstring."""
    p = s.params
    rows = s.rows
    targets = content_targets(s, rows)
    content = box_content(s, boxes, rows)
    per_box = [
        association_tests({k: content[k][j] for k in STATISTICS}, targets)
        for j in range(len(boxes))
    ]
    return judge_association(
        per_box,
        p.content_max_p,
        p.content_min_auroc_gap,
        p.content_min_rho,
        list(targets),
        len(rows),
    )


def association_metrics(prefix: str, a: Association) -> dict[str, Any]:
    """The gate's metrics for the judged box: ``<prefix>.content_associated`` (1 / 0;
    absent when no test could run), ``.content_assoc_with`` (label or attribute of the
    reported test), ``.content_assoc_effect`` (its AUROC or rho), ``.content_assoc_p``
    (its Holm p), ``.content_assoc_tests`` (the Holm family) and ``.content_assoc_words``
    (the sentence the findings quote)."""
    met: dict[str, Any] = {f"{prefix}.content_assoc_words": a.words()}
    if a.associated is None or a.lead is None:
        return met
    met[f"{prefix}.content_associated"] = int(a.associated)
    met[f"{prefix}.content_assoc_with"] = a.lead.target
    met[f"{prefix}.content_assoc_effect"] = float(a.lead.effect)
    met[f"{prefix}.content_assoc_p"] = float(a.lead.p_holm)
    met[f"{prefix}.content_assoc_tests"] = a.family
    return met


#: the next step of the note that replaces a use rule's verdict (the rule's own tells you to
#: in-paint and retrain, which is wrong for anatomy)
NOT_A_SHORTCUT_NEXT_STEP = (
    "Look at the box on a few films (the scan's effect map and the overlays show where): if"
    " it is anatomy, nothing needs doing; if it is a marker, device or text that the audited"
    " attributes do not record (a scanner or ward the manifest has no column for), add that"
    " column under data.attributes and audit again, so the content gate can test it"
)


def gated_coverage(rule: str, where: str) -> str:
    """The coverage line of a use rule the gate left unjudged: shown in the terminal and in
    summary.md, where the note itself is only counted."""
    return (
        f"{rule}: the model relies on the off-ROI box at {where}, but its content does not"
        " differ by label or any audited attribute: not judged as a shortcut (see the note)"
    )


def not_a_shortcut(where: str, how: str, a: Association) -> str:
    """The one line that replaces a use rule's verdict when the box's content is not
    associated: the model relies on the box, its content does not differ."""
    return (
        f"The model relies on the box at {where}, outside the region of interest ({how}),"
        f" but its content {a.words()}: likely anatomy or a fixture that looks alike in"
        " every study, not a shortcut (not failed; the flip metrics are kept)"
    )


# ------------------------------------------------------------------ the tests


def _categorical(v: np.ndarray, y: np.ndarray, target: str, stat: str) -> ContentTest | None:
    known = np.isfinite(v) & np.array([x is not None for x in y], dtype=bool)
    v, y = v[known], np.asarray([str(x) for x in y[known]], dtype=object)
    levels = sorted(set(y))
    if len(levels) < 2:
        return None
    groups = [v[y == lev] for lev in levels]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            p = float(kruskal(*groups).pvalue)
        except ValueError:  # every value identical: no difference to find
            p = 1.0
    p = 1.0 if not np.isfinite(p) else p
    best: tuple[float, float, str] = (0.0, 0.5, levels[0])
    # with two levels one AUROC says it all (the second level against the first); with
    # more, each level against the rest
    for lev in levels[-1:] if len(levels) == 2 else levels:
        g, rest = v[y == lev], v[y != lev]
        auc = float(mannwhitneyu(g, rest).statistic) / (len(g) * len(rest))
        if abs(auc - 0.5) > best[0]:
            best = (abs(auc - 0.5), auc, lev)
    gap, auc, lev = best
    other = next(x for x in levels if x != lev) if len(levels) == 2 else None
    return ContentTest(target, stat, "AUROC", auc, gap, p, int(known.sum()), lev, other)


def _spearman(v: np.ndarray, y: np.ndarray, target: str, stat: str) -> ContentTest | None:
    known = np.isfinite(v) & np.isfinite(y)
    if known.sum() < 3 or len(np.unique(y[known])) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant summaries: rho is undefined
        res = spearmanr(v[known], y[known])
    rho, p = float(res.statistic), float(res.pvalue)
    if not np.isfinite(rho):
        rho, p = 0.0, 1.0
    return ContentTest(target, stat, "rho", rho, abs(rho), p, int(known.sum()))


def _with_holm(t: ContentTest, p_holm: float) -> ContentTest:
    return replace(t, p_holm=p_holm)


def _p_text(p: float) -> str:
    return "Holm p < 0.001" if p < 0.001 else f"Holm p = {p:.2g}"


def _target_word(target: str) -> str:
    return "label" if target == "label" else target


def _effect_text(t: ContentTest) -> str:
    if t.measure == "rho":
        return f"Spearman rho {t.effect:+.2f}"
    against = t.other if t.other is not None else "the rest"
    which = f"label {t.level} vs {against}" if t.target == "label" else f"{t.level} vs {against}"
    return f"AUROC {t.effect:.2f} for {which}"


def _listing(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + f" or {words[-1]}"
