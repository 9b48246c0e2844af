"""Whether two audits can be compared at all: the same data and seed, and the same
params of the checks both ran (file locations aside); threshold differences are noted.
"""

from __future__ import annotations

from typing import Any

from mmaudit.report.document import Report

# data.* keys that hold where files are, not what they hold: the same data checked out
# elsewhere must stay comparable. Their contents are compared by hash instead (the
# manifest's and the tokenizer folder's sha256 in report.data).
PATH_KEYS = {"manifest": None, "image": "root", "text": "tokenizer"}


def comparability(base: Report, new: Report) -> list[str]:
    """Reasons why two audits are not comparable (empty when they are): different data, or
    a config difference that changes the numbers (data section other than file locations,
    tokenizer contents, seed, params of the checks both ran). Threshold differences change
    verdicts, not numbers: see ``threshold_differences``."""
    reasons = []
    if base.data.get("sha256") != new.data.get("sha256"):
        reasons.append("the manifests differ (sha256)")
    tok_a, tok_b = base.data.get("tokenizer_sha256"), new.data.get("tokenizer_sha256")
    if tok_a is not None and tok_b is not None and tok_a != tok_b:
        reasons.append("the tokenizers differ (sha256)")
    if base.data.get("n") != new.data.get("n"):
        reasons.append(f"different sample counts ({base.data.get('n')} vs {new.data.get('n')})")
    bd, nd = _without_paths(base.config.get("data", {})), _without_paths(new.config.get("data", {}))
    for key in sorted(set(bd) | set(nd)):
        reasons += [f"data.{p}" + " differs" for p in _differences(bd.get(key), nd.get(key), key)]
    if base.seed != new.seed:
        reasons.append(f"seed differs ({base.seed} vs {new.seed})")
    for name in sorted(set(base.checks) & set(new.checks)):
        a, b = base.checks[name], new.checks[name]
        for p in _differences(a.params, b.params, ""):
            reasons.append(f"checks.{name}.params{'.' + p if p else ''} differs")
    return reasons


def threshold_differences(base: Report, new: Report) -> list[str]:
    """Threshold rules that differ between the checks both ran: the same numbers may get
    another verdict, so the diff shows them as a note rather than refusing."""
    out = []
    for name in sorted(set(base.checks) & set(new.checks)):
        a, b = base.checks[name], new.checks[name]
        for p in _differences(a.thresholds, b.thresholds, ""):
            out.append(f"checks.{name}.thresholds{'.' + p if p else ''}")
    return out


def _without_paths(data: Any) -> dict[str, Any]:
    """A copy of the config's data section without the ``PATH_KEYS`` entries."""
    out = dict(data or {})
    for key, sub in PATH_KEYS.items():
        if sub is None:
            out.pop(key, None)
        elif isinstance(out.get(key), dict):
            out[key] = {k: v for k, v in out[key].items() if k != sub}
    return out


def _differences(a: Any, b: Any, path: str) -> list[str]:
    """Dotted paths where two config values differ (at most the first 3 per subtree)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{k}" if path else str(k)
            out += _differences(a.get(k), b.get(k), sub)
        return out[:3]
    return [] if a == b else [path]
