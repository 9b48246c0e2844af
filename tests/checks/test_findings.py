"""Rules -> findings: limits, the statistic they compare, and the two significance gates."""

from __future__ import annotations

import pytest

from mmaudit.checks.contract import (
    ThresholdRule,
    inverted_limits,
    merged_thresholds,
)
from mmaudit.checks.findings import judge, status_of
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
    assert "sim.x (ci_low) = 0.6" in findings[0].message


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
