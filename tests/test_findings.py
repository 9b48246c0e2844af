"""Rules -> findings: limits, the statistic they compare, and the two significance gates."""

from __future__ import annotations

from mmaudit.check import ThresholdRule
from mmaudit.findings import judge, status_of
from mmaudit.stats import Estimate

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
