"""Rules -> findings: limits, the statistic they compare, and the two significance gates."""

from __future__ import annotations

from collections import defaultdict

import pytest

from mmaudit.checks.contract import (
    ThresholdRule,
    inverted_limits,
    merged_thresholds,
)
from mmaudit.checks.findings import (
    count_judged,
    exemption_notes,
    judge,
    matched_parts,
    metric_label,
    status_of,
)
from mmaudit.checks.registry import load_builtin_checks
from mmaudit.engine.errors import CheckError
from mmaudit.methods.stats import Estimate

GAP = ThresholdRule(metric="gap.*", warn_above=0.05, fail_above=0.10, max_p=0.05, ci_low_above=0.0)


def severities(metrics: dict[str, Estimate | float], rule: ThresholdRule = GAP) -> list[str]:
    return [f.severity for f in judge("c", metrics, {"r": rule})]  # type: ignore[arg-type]


def test_limits_pick_the_worst_crossed_severity() -> None:
    assert severities({"gap.a": Estimate(0.15, 0.02, 0.3, 100, 0.001)}) == ["fail"]
    assert severities({"gap.a": Estimate(0.07, 0.02, 0.3, 100, 0.001)}) == ["warn"]
    assert severities({"gap.a": Estimate(0.03, 0.01, 0.3, 100, 0.001)}) == []


def test_both_gates_must_hold() -> None:
    """max_p: the null p at most the limit; ci_low_above: the CI lower bound above it."""
    assert severities({"gap.a": Estimate(0.15, -0.01, 0.3, 100, 0.001)}) == []  # CI has 0
    assert severities({"gap.a": Estimate(0.15, 0.0, 0.3, 100, 0.001)}) == []  # touches 0
    assert severities({"gap.a": Estimate(0.15, 0.02, 0.3, 100, 0.2)}) == []  # p too large
    assert severities({"gap.a": Estimate(0.15, None, None, 100, 0.001)}) == []  # no CI
    assert severities({"gap.a": 0.15}) == []  # a bare number has neither p nor CI
    ungated = ThresholdRule(metric="gap.*", fail_above=0.10)
    assert severities({"gap.a": 0.15}, ungated) == ["fail"]


def test_statistic_compares_a_ci_bound() -> None:
    rule = ThresholdRule(metric="sim.*", warn_above=0.5, statistic="ci_low")
    assert severities({"sim.x": Estimate(0.9, 0.6, 0.95, 50)}, rule) == ["warn"]
    assert severities({"sim.x": Estimate(0.9, 0.4, 0.95, 50)}, rule) == []
    findings = judge("c", {"sim.x": Estimate(0.9, 0.6, 0.95, 50)}, {"r": rule})
    assert status_of(findings) == "warn"
    assert findings[0].evidence == (
        "sim (x) = 0.90 (CI 0.60 to 0.95); warn when the CI's lower end (0.60) is above 0.5"
    )


def test_inverted_limits_are_a_check_error_naming_the_key_and_line() -> None:
    """fail must be the stricter limit: a fail_below above warn_below (or a fail_above below
    warn_above) would fail values that do not even warn. Refused with the config's line,
    the key the user wrote, and what to set."""
    perf = load_builtin_checks()["performance"]
    where = "checks.performance"
    with pytest.raises(CheckError) as err:
        merged_thresholds(
            perf,
            {"auroc_low": {"warn_below": 0.5, "fail_below": 0.9}},
            where,
            locate=lambda key: f"audit.yaml:7 ({key})",
        )
    line = err.value.one_line()
    assert line.startswith(
        "audit.yaml:7 (checks.performance.thresholds.auroc_low.fail_below):"
        " checks.performance.thresholds.auroc_low.fail_below: fail_below 0.9 is above"
        " warn_below 0.5"
    ), line
    assert "fail_below <= warn_below" in err.value.hint
    # one limit written alone, across the default of the other: fail still wins, no error
    default = perf.default_thresholds["auroc_low"]
    assert default.fail_below is not None and default.warn_below is not None
    raised = merged_thresholds(perf, {"auroc_low": {"fail_below": 1.01}}, where)["auroc_low"]
    assert raised.fail_below == 1.01 and raised.warn_below == default.warn_below
    with pytest.raises(CheckError, match=r"new\.fail_above: fail_above 0.1 is below warn_above"):
        merged_thresholds(
            perf, {"new": {"metric": "x", "warn_above": 0.2, "fail_above": 0.1}}, where
        )
    equal = {"auroc_low": {"warn_below": 0.7, "fail_below": 0.7}}  # equal: fail wins, allowed
    assert merged_thresholds(perf, equal, where)["auroc_low"].fail_below == 0.7


def test_every_default_rule_has_fail_at_least_as_strict_as_warn() -> None:
    for cls in load_builtin_checks().values():
        for rule in cls.default_thresholds.values():
            assert inverted_limits(rule.model_dump()) is None, (cls.name, rule)


PROBE = ThresholdRule(
    metric="probe_auroc.*.*",
    warn_above=0.55,
    max_p=0.05,
    message="attribute decodable above the permutation null",
    found="The model's '{1}' layer reveals the patient's {0}",
    next_step="find where {0} enters the '{1}' layer ({metric})",
    figure="probe_{1}",
)


def test_matched_parts_give_one_part_per_star_and_keep_a_dotted_layer_whole() -> None:
    assert matched_parts("probe_auroc.*.*", "probe_auroc.site.image") == ("site", "image")
    assert matched_parts("probe_auroc.*.*", "probe_auroc.site.enc.layer4") == (
        "site",
        "enc.layer4",
    )
    assert matched_parts("redundancy.*_x_*", "redundancy.image_x_text") == ("image", "text")
    assert matched_parts("gap.?uroc.*", "gap.auroc.site") == ("site",)
    assert matched_parts("emap.gap", "emap.gap") == ()
    assert matched_parts("probe_auroc.*.*", "other.site") == ()
    assert metric_label("probe_auroc.*.*", "probe_auroc.sex.image") == "probe AUROC (sex, image)"
    assert metric_label("eod.*", "eod.site") == "equalised-odds difference (site)"


def test_finding_reads_as_what_was_found_the_evidence_and_the_next_step() -> None:
    """The templates are filled with what each * matched; the evidence carries the value,
    its CI, the corrected p and the limit with its gate; the rule's own definition stays as
    the detail, and rule and metric stay as the code tag's parts."""
    metrics = {
        "probe_auroc.site.image": Estimate(0.8, 0.7, 0.9, 100, 0.0004),
        "probe_auroc.sex.image": Estimate(0.8, 0.7, 0.9, 100, 0.2),  # p too large: quiet
    }
    (f,) = judge("probing", metrics, {"encoded": PROBE})  # type: ignore[arg-type]
    assert f.message == "The model's 'image' layer reveals the patient's site"
    assert f.evidence == (
        "probe AUROC (site, image) = 0.80 (CI 0.70 to 0.90), p < 0.001 corrected for multiple"
        " tests; warn above 0.55 with p < 0.05"
    )
    assert f.next_step == "find where site enters the 'image' layer (probe_auroc.site.image)"
    assert f.figure == "probe_image"
    assert f.detail == PROBE.message
    assert (f.rule, f.metric, f.value, f.threshold) == (
        "encoded",
        "probe_auroc.site.image",
        0.8,
        0.55,
    )
    larger = {"gap.a": Estimate(0.15, 0.02, 0.3, 100, 0.03)}
    (g,) = judge("c", larger, {"r": GAP})  # type: ignore[arg-type]
    assert g.evidence.endswith(
        "p = 0.03 corrected for multiple tests; fail above 0.1 with p < 0.05 and the CI's"
        " lower end above 0"
    )


def test_wording_names_other_metrics_of_the_check_in_words() -> None:
    """``{m[KEY]}`` puts the check's metric KEY into the sentence (a box's place, the method
    that proposed it); a number reads to 3 digits, a name the check did not write reads
    "(not measured)", never a brace."""
    rule = ThresholdRule(
        metric="box.excess",
        fail_above=0.05,
        found="Covering the box at {m[box.where]} ({m[box.method]} maps, {m[box.rows]} rows,"
        " {m[box.nothing]}) changes decisions",
    )
    metrics = {
        "box.excess": Estimate(0.2, 0.1, 0.3, 100),
        "box.where": "rows 0-9, cols 0-9 of the 64x64 px image (top-left corner)",
        "box.method": "ig",
        "box.rows": 10,
    }
    (f,) = judge("saliency", metrics, {"used": rule})  # type: ignore[arg-type]
    assert f.message == (
        "Covering the box at rows 0-9, cols 0-9 of the 64x64 px image (top-left corner)"
        " (ig maps, 10 rows, (not measured)) changes decisions"
    )


def test_a_rule_without_wording_still_gives_a_plain_sentence() -> None:
    """A user's YAML rule: its message names the metric; without one, the comparison; a
    template asking for a part the pattern lacks is shown as written, not an error."""
    worded = ThresholdRule(metric="auroc*", warn_below=0.8, message="discrimination is low")
    (f,) = judge("c", {"auroc": 0.7}, {"r": worded})
    assert f.message == "Discrimination is low (AUROC)"
    assert f.evidence == "AUROC = 0.70; warn below 0.8"
    assert f.next_step == "" and f.figure is None
    bare = ThresholdRule(metric="x.*", fail_above=1.0)
    (g,) = judge("c", {"x.a": 2.0}, {"r": bare})
    assert g.message == "X (a) is above its fail limit"
    odd = ThresholdRule(metric="x.*", fail_above=1.0, found="{3} and {name}")
    (h,) = judge("c", {"x.a": 2.0}, {"r": odd})
    assert h.message == "{3} and {name}"


def test_an_exempt_rule_is_not_judged_and_a_note_says_why() -> None:
    """A rule the check exempts for this model (``CheckOutput.exempt_rules``) raises no
    finding and counts no test; the note carries the plain reason, the values the rule
    would have judged and the rule's next step."""
    rule = ThresholdRule(
        metric="emap.gap",
        statistic="ci_high",
        warn_below=0.005,
        message="no interaction",
        found="The model uses no interaction",
        next_step="use a fusion that can express one",
    )
    metrics = {"emap.gap": Estimate(0.0, 0.0, 0.0, 50), "share.image": Estimate(0.5, 0.4, 0.6)}
    rules = {"no_interaction": rule}
    assert [f.severity for f in judge("ablation", metrics, rules)] == ["warn"]  # not exempt
    exempt = {"no_interaction": "The model can only add up its inputs"}
    assert judge("ablation", metrics, rules, exempt) == []
    assert count_judged(metrics, rules) == 1 and count_judged(metrics, rules, exempt) == 0
    (note,) = exemption_notes("ablation", exempt, metrics, rules)
    assert (note.severity, note.rule, note.metric, note.value) == (
        "note",
        "no_interaction",
        "emap.gap",
        0.0,
    )
    assert note.message == "The model can only add up its inputs"
    assert note.evidence == "EMAP gap = 0 (CI 0 to 0); not judged"
    assert note.next_step == "use a fusion that can express one"
    assert note.detail == "no interaction"


def test_every_default_rule_has_plain_wording_that_fills_from_its_pattern() -> None:
    """Each built-in rule says what was found and what to do, in words whose placeholders
    its own metric pattern can fill (one part per ``*``), and names a figure of its check
    only by a name without a placeholder it lacks."""
    for cls in load_builtin_checks().values():
        for name, rule in cls.default_thresholds.items():
            assert rule.found and rule.next_step, (cls.name, name)
            stars = rule.metric.count("*")
            parts = [f"part{k}" for k in range(stars)]
            for text in (rule.found, rule.evidence, rule.next_step, rule.figure):
                # raises on a missing part; {m[KEY]} names one of the check's metrics
                filled = text.format(*parts, metric="m", m=defaultdict(str))
                assert "{" not in filled and "}" not in filled, (cls.name, name, text)
            assert rule.found[0].isupper() and not rule.found.endswith("."), (cls.name, name)
