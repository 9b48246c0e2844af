"""The parts every view shows for a finding: the plain sentence, the evidence, the next
step, and the small code tag (check.rule · metric) that ties it to report.json and YAML."""

from __future__ import annotations

from mmaudit.checks.contract import Finding


def code_tag(finding: Finding) -> str:
    """``check.rule`` plus the metric key when there is one: the names a user greps
    report.json for or overrides in the YAML thresholds."""
    tag = f"{finding.check}.{finding.rule}"
    return f"{tag} · {finding.metric}" if finding.metric else tag
