"""What ``mmaudit diff`` found: the moves of metrics, changed findings and statuses,
the representation comparison and the regressions, as one pydantic document (diff.json).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from mmaudit.report.document import json_safe

Direction = Literal["higher", "lower", "neutral"]


class MetricDelta(BaseModel):
    check: str
    metric: str
    base: float | None
    new: float | None
    delta: float | None
    direction: Direction = "neutral"
    significant: bool = False
    method: str = "none"
    p: float | None = None
    tolerance: float = 0.0
    regression: bool = False
    improvement: bool = False
    # a significant move for the worse that stays inside the rule's limits (not a regression)
    worse_within_limits: bool = False

    @property
    def verdict(self) -> str:
        """One word for people: regression, improved, worse (within limits), moved, or ''."""
        if self.regression:
            return "regression"
        if self.improvement:
            return "improved"
        if self.worse_within_limits:
            return "worse (within limits)"
        return "moved" if self.significant else ""


class FindingChange(BaseModel):
    check: str
    rule: str
    metric: str | None
    severity: str
    message: str
    # for a finding whose severity changed: the severity in the base report
    was: str | None = None


class DiffResult(BaseModel):
    base: str
    new: str
    comparable: bool
    not_comparable_reasons: list[str] = Field(default_factory=list)
    status_changes: list[dict[str, Any]] = Field(default_factory=list)
    metrics: list[MetricDelta] = Field(default_factory=list)
    new_findings: list[FindingChange] = Field(default_factory=list)
    resolved_findings: list[FindingChange] = Field(default_factory=list)
    # the same finding at a lower severity (fail -> warn): an improvement
    improved_findings: list[FindingChange] = Field(default_factory=list)
    representation: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    prediction_churn: float | None = None
    shared_samples: int = 0
    array_rank_correlation: dict[str, float | None] = Field(default_factory=dict)
    # checks the base report ran that the new one lacks (each also a regression)
    missing_checks: list[str] = Field(default_factory=list)
    # checks left out of the comparison on request (``ignore_checks``)
    ignored_checks: list[str] = Field(default_factory=list)
    regressions: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def to_json(self) -> str:
        """Strict JSON (NaN / inf as null)."""
        return json.dumps(json_safe(self.model_dump(mode="python")), indent=2, allow_nan=False)
