"""``mmaudit diff``: compare two report folders (no model, no GPU).

Metrics are aligned by check and name. A move is *significant* when a paired
bootstrap on the per-sample predictions says so (performance metrics, when both
reports saved predictions for the same ids) or else when the two CIs do not
overlap (or, for numbers without a CI, when the move exceeds the tolerance). The
*direction* of a metric is read from the threshold rules stored in the report: a
rule with ``*_below`` limits means higher is better, ``*_above`` means lower is
better; metrics no rule judges are neutral. A *regression* is a worse check status,
a new warn / fail finding, or a significant move in the bad direction beyond the
tolerance. Representation comparison (linear CKA per layer, prediction churn,
rank correlation of per-sample maps) uses the compact arrays saved in ``samples/``.
"""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from mmaudit.errors import ReportError
from mmaudit.render import markdown_cell
from mmaudit.report import CheckReport, Report, load_report

STATUS_RANK = {"pass": 0, "warn": 1, "error": 2, "fail": 2}
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


class FindingChange(BaseModel):
    check: str
    rule: str
    metric: str | None
    severity: str
    message: str


class DiffResult(BaseModel):
    base: str
    new: str
    comparable: bool
    not_comparable_reasons: list[str] = Field(default_factory=list)
    status_changes: list[dict[str, Any]] = Field(default_factory=list)
    metrics: list[MetricDelta] = Field(default_factory=list)
    new_findings: list[FindingChange] = Field(default_factory=list)
    resolved_findings: list[FindingChange] = Field(default_factory=list)
    representation: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    prediction_churn: float | None = None
    shared_samples: int = 0
    array_rank_correlation: dict[str, float | None] = Field(default_factory=dict)
    regressions: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def to_json(self) -> str:
        """Strict JSON (NaN / inf as null)."""
        from mmaudit.report import json_safe

        return json.dumps(json_safe(self.model_dump(mode="python")), indent=2, allow_nan=False)


def parse_tolerances(values: list[str] | None, default: float = 0.01) -> dict[str, float]:
    """``["0.02", "performance.auroc=0.1", "saliency.*=0.05"]`` -> {pattern: tolerance}."""
    out: dict[str, float] = {"*": default}
    for raw in values or []:
        pattern, sep, number = raw.rpartition("=")
        try:
            value = float(number)
        except ValueError as exc:
            raise ReportError(f"--tolerance {raw!r}: expected NUMBER or PATTERN=NUMBER") from exc
        out[pattern if sep else "*"] = value
    return out


def tolerance_for(name: str, tolerances: dict[str, float]) -> float:
    """The most specific (longest) matching pattern wins."""
    matches = [p for p in tolerances if fnmatch.fnmatchcase(name, p)]
    return tolerances[max(matches, key=len)] if matches else 0.0


def metric_direction(metric: str, check: CheckReport) -> Direction:
    """Higher / lower is better, from the check's threshold rules; neutral otherwise."""
    for rule in check.thresholds.values():
        if not fnmatch.fnmatchcase(metric, str(rule.get("metric", ""))):
            continue
        below = rule.get("warn_below") is not None or rule.get("fail_below") is not None
        above = rule.get("warn_above") is not None or rule.get("fail_above") is not None
        if below and not above:
            return "higher"
        if above and not below:
            return "lower"
    return "neutral"


def _flagged(name: str, metric: str, check: CheckReport) -> bool:
    """Whether ``metric``'s value in ``check`` crosses one of its rules (limit and p)."""
    from mmaudit.check import ThresholdRule
    from mmaudit.findings import judge
    from mmaudit.stats import Estimate

    raw = check.metrics[metric]
    value = Estimate.from_dict(raw) if isinstance(raw, dict) else raw
    rules = {
        k: ThresholdRule.model_validate(r)
        for k, r in check.thresholds.items()
        if fnmatch.fnmatchcase(metric, str(r.get("metric", "")))
    }
    return bool(judge(name, {metric: value}, rules))


def _value(m: Any) -> tuple[float | None, float | None, float | None]:
    if isinstance(m, dict):
        return m.get("value"), m.get("ci_low"), m.get("ci_high")
    if isinstance(m, bool) or not isinstance(m, (int, float)):
        return None, None, None
    return float(m), None, None


def comparability(base: Report, new: Report) -> list[str]:
    """Reasons why two audits are not comparable (empty when they are)."""
    reasons = []
    if base.data.get("sha256") != new.data.get("sha256"):
        reasons.append("the manifests differ (sha256)")
    bd, nd = dict(base.config.get("data", {})), dict(new.config.get("data", {}))
    for key in ("split", "target", "id", "patient"):
        if bd.get(key) != nd.get(key):
            reasons.append(f"data.{key} differs")
    if base.data.get("n") != new.data.get("n"):
        reasons.append(f"different sample counts ({base.data.get('n')} vs {new.data.get('n')})")
    return reasons


def _load_samples(folder: Path) -> tuple[Any, dict[str, np.ndarray]]:
    import pandas as pd

    preds = None
    path = folder / "samples" / "predictions.parquet"
    if path.is_file():
        preds = pd.read_parquet(path)
    emb: dict[str, np.ndarray] = {}
    npz = folder / "samples" / "embeddings.npz"
    if npz.is_file():
        with np.load(npz, allow_pickle=False) as data:
            emb = {k: data[k] for k in data.files}
    return preds, emb


def _paired_performance(
    metric: str, base_pred: Any, new_pred: Any, groups: None, seed: int
) -> tuple[float, bool, float | None] | None:
    """Paired bootstrap of a binary performance metric recomputed from both prediction files."""
    from mmaudit.stats import auroc, expected_calibration_error, paired_bootstrap_diff

    if "target" not in base_pred or "prob.0" not in base_pred or "prob.1" in base_pred:
        return None
    merged = base_pred.merge(new_pred, on="id", suffixes=("_a", "_b"))
    if len(merged) < 10:
        return None
    y = merged["target_a"].to_numpy()
    pa, pb = merged["prob.0_a"].to_numpy(), merged["prob.0_b"].to_numpy()

    def accuracy(t: np.ndarray, p: np.ndarray) -> float:
        return float(np.mean(t == (p >= 0.5)))

    def auprc(t: np.ndarray, p: np.ndarray) -> float:
        from sklearn.metrics import average_precision_score

        return float(average_precision_score(t, p)) if len(np.unique(t)) > 1 else float("nan")

    stat = {
        "auroc": auroc,
        "auprc": auprc,
        "accuracy": accuracy,
        "ece": expected_calibration_error,
    }.get(metric)
    if stat is None:
        return None
    est = paired_bootstrap_diff(stat, (y, pa), (y, pb), n_boot=1000, seed=seed)
    significant = est.ci_low is not None and (est.ci_low > 0 or est.ci_high < 0)  # type: ignore[operator]
    return est.value, significant, est.null_p


def diff_reports(
    base_dir: str | Path,
    new_dir: str | Path,
    tolerances: dict[str, float] | None = None,
    force: bool = False,
    seed: int = 0,
) -> DiffResult:
    """Compare two report folders; ReportError when they cannot be compared (unless forced)."""
    base_dir, new_dir = Path(base_dir), Path(new_dir)
    base, new = load_report(base_dir), load_report(new_dir)
    tolerances = tolerances or parse_tolerances(None)
    reasons = comparability(base, new)
    if reasons and not force:
        raise ReportError(
            f"not comparable: {base_dir} and {new_dir}: " + "; ".join(reasons),
            hint="audit both checkpoints on the same data, or pass --force",
        )
    result = DiffResult(
        base=str(base_dir), new=str(new_dir), comparable=not reasons, not_comparable_reasons=reasons
    )
    if reasons:
        result.notes.append("compared with --force although " + "; ".join(reasons))
    base_pred, base_emb = _load_samples(base_dir)
    new_pred, new_emb = _load_samples(new_dir)
    for name in sorted(set(base.checks) | set(new.checks)):
        a, b = base.checks.get(name), new.checks.get(name)
        if a is None or b is None:
            result.notes.append(
                f"check '{name}' is only in the {'new' if a is None else 'base'} report"
            )
            continue
        ra, rb = STATUS_RANK.get(a.status), STATUS_RANK.get(b.status)
        if a.status != b.status:
            worse = ra is not None and rb is not None and rb > ra
            result.status_changes.append(
                {"check": name, "base": a.status, "new": b.status, "worse": worse}
            )
            if worse:
                result.regressions.append(f"{name}: status {a.status} -> {b.status}")
        _diff_findings(name, a, b, result)
        for metric in a.metrics:
            if metric not in b.metrics:
                continue
            result.metrics.append(
                _diff_metric(name, metric, a, b, tolerances, base_pred, new_pred, seed)
            )
    for d in result.metrics:
        if d.regression:
            result.regressions.append(
                f"{d.check}.{d.metric}: {d.base:.4g} -> {d.new:.4g}"
                f" ({d.method}, {d.direction} is better)"
            )
    _representation(base_pred, new_pred, base_emb, new_emb, result)
    _arrays(base, new, base_dir, new_dir, result)
    return result


def _diff_findings(name: str, a: CheckReport, b: CheckReport, result: DiffResult) -> None:
    def key(f: Any) -> tuple[str, str | None]:
        return (f.rule, f.metric)

    serious = ("warn", "fail", "error")
    old = {key(f): f for f in a.findings if f.severity in serious}
    now = {key(f): f for f in b.findings if f.severity in serious}
    for k, f in now.items():
        if k not in old or STATUS_RANK.get(f.severity, 0) > STATUS_RANK.get(old[k].severity, 0):
            result.new_findings.append(
                FindingChange(
                    check=name, rule=f.rule, metric=f.metric, severity=f.severity, message=f.message
                )
            )
            result.regressions.append(f"{name}: new {f.severity} finding: {f.message}")
    for k, f in old.items():
        if k not in now:
            result.resolved_findings.append(
                FindingChange(
                    check=name, rule=f.rule, metric=f.metric, severity=f.severity, message=f.message
                )
            )


def _diff_metric(
    name: str,
    metric: str,
    a: CheckReport,
    b: CheckReport,
    tolerances: dict[str, float],
    base_pred: Any,
    new_pred: Any,
    seed: int,
) -> MetricDelta:
    va, la, ha = _value(a.metrics[metric])
    vb, lb, hb = _value(b.metrics[metric])
    direction = metric_direction(metric, b)
    tol = tolerance_for(f"{name}.{metric}", tolerances)
    d = MetricDelta(
        check=name, metric=metric, base=va, new=vb, delta=None, direction=direction, tolerance=tol
    )
    if va is None or vb is None or not (math.isfinite(va) and math.isfinite(vb)):
        return d
    d.delta = vb - va
    paired = None
    if name == "performance" and base_pred is not None and new_pred is not None:
        paired = _paired_performance(metric, base_pred, new_pred, None, seed)
    if paired is not None:
        d.method, d.significant, d.p = "paired_bootstrap", paired[1], paired[2]
    elif None not in (la, ha, lb, hb):
        d.method = "ci_overlap"
        d.significant = bool(hb < la or lb > ha)  # type: ignore[operator]
    else:
        d.method = "tolerance"
        d.significant = abs(d.delta) > tol
    if direction != "neutral" and d.significant and abs(d.delta) > tol:
        bad = d.delta < 0 if direction == "higher" else d.delta > 0
        d.regression, d.improvement = bad, not bad
        # Non-paired tests compare two bootstrap CIs of the same data, which say nothing of
        # how much a retrained model moves anyway (two training seeds of one recipe move
        # saliency and attribution statistics beyond their CIs). A worse move that stays
        # inside the rule's limits (value and p) is reported, not counted as a regression;
        # crossing them raises a finding, which is.
        if bad and paired is None and not _flagged(name, metric, b):
            d.regression, d.worse_within_limits = False, True
    return d


def _representation(
    base_pred: Any,
    new_pred: Any,
    base_emb: dict[str, np.ndarray],
    new_emb: dict[str, np.ndarray],
    result: DiffResult,
) -> None:
    from mmaudit.cka import linear_cka

    if base_pred is not None and new_pred is not None:
        merged = base_pred.merge(new_pred, on="id", suffixes=("_a", "_b"))
        result.shared_samples = len(merged)
        logit_cols = [c[:-2] for c in merged.columns if c.startswith("prob.") and c.endswith("_a")]
        if logit_cols and len(merged):
            if len(logit_cols) == 1:
                da = merged[f"{logit_cols[0]}_a"].to_numpy() >= 0.5
                db = merged[f"{logit_cols[0]}_b"].to_numpy() >= 0.5
            else:
                da = merged[[f"{c}_a" for c in logit_cols]].to_numpy().argmax(1)
                db = merged[[f"{c}_b" for c in logit_cols]].to_numpy().argmax(1)
            result.prediction_churn = float(np.mean(da != db))
    if "__ids__" not in base_emb or "__ids__" not in new_emb:
        if not base_emb or not new_emb:
            result.notes.append("no embeddings saved in one of the reports: no CKA")
        return
    ids_a = {str(i): k for k, i in enumerate(base_emb["__ids__"])}
    pairs = [(ids_a[str(i)], k) for k, i in enumerate(new_emb["__ids__"]) if str(i) in ids_a]
    if len(pairs) < 4:
        result.notes.append("fewer than 4 shared samples: no CKA")
        return
    ia, ib = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    for layer in sorted(set(base_emb) & set(new_emb) - {"__ids__"}):
        xa = base_emb[layer][ia].astype(np.float64)
        xb = new_emb[layer][ib].astype(np.float64)
        result.representation[layer] = {
            "cka": _finite(linear_cka(xa, xb)),
            "cka_debiased": _finite(linear_cka(xa, xb, debiased=True)),
            "n": float(len(pairs)),
        }


def _arrays(base: Report, new: Report, base_dir: Path, new_dir: Path, result: DiffResult) -> None:
    """Mean per-sample Spearman correlation of saved per-sample maps (e.g. saliency)."""
    from scipy.stats import spearmanr

    for name in set(base.checks) & set(new.checks):
        pa, pb = base.checks[name].tables.get("arrays"), new.checks[name].tables.get("arrays")
        if not pa or not pb:
            continue
        with (
            np.load(base_dir / pa, allow_pickle=False) as da,
            np.load(new_dir / pb, allow_pickle=False) as db,
        ):
            ids_a = {str(i): k for k, i in enumerate(da["__ids__"])}
            pairs = [(ids_a[str(i)], k) for k, i in enumerate(db["__ids__"]) if str(i) in ids_a]
            for key in set(da.files) & set(db.files) - {"__ids__"}:
                xa, xb = da[key], db[key]
                if xa.ndim < 2 or xa.shape[1:] != xb.shape[1:] or not pairs:
                    continue
                rhos = []
                for i, j in pairs:
                    a, b = xa[i].ravel().astype(float), xb[j].ravel().astype(float)
                    if np.ptp(a) > 0 and np.ptp(b) > 0:
                        rhos.append(spearmanr(a, b).statistic)
                result.array_rank_correlation[f"{name}.{key}"] = (
                    _finite(float(np.mean(rhos))) if rhos else None
                )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def diff_markdown(d: DiffResult) -> str:
    """diff.md: fit for a pull-request comment."""
    verdict = "❌ regressed" if d.regressions else "✅ no regressions"
    lines = [f"## mmaudit diff: {verdict}", "", f"`{d.base}` → `{d.new}`", ""]
    if d.not_comparable_reasons:
        lines += [f"> ⚠️ not comparable: {'; '.join(d.not_comparable_reasons)}", ""]
    if d.regressions:
        lines += ["**Regressions**", ""] + [f"- {markdown_cell(r)}" for r in d.regressions] + [""]
    if d.resolved_findings:
        lines += ["**Resolved findings**", ""]
        for f in d.resolved_findings:
            lines.append(f"- {f.severity} `{f.check}`: {markdown_cell(f.message)}")
        lines.append("")
    if d.status_changes:
        lines += ["| check | base | new |", "|---|---|---|"]
        lines += [f"| {s['check']} | {s['base']} | {s['new']} |" for s in d.status_changes] + [""]
    moved = [m for m in d.metrics if m.significant and m.delta is not None]
    if moved:
        lines += ["| metric | base | new | Δ | test |", "|---|---|---|---|---|"]
        for m in moved[:25]:
            mark = (
                " ⬇"
                if m.regression
                else " ↘ within limits"
                if m.worse_within_limits
                else " ⬆"
                if m.improvement
                else ""
            )
            lines.append(
                f"| {m.check}.{markdown_cell(m.metric)} | {m.base:.4g} | {m.new:.4g}"
                f" | {m.delta:+.4g}{mark} | {m.method} |"
            )
        lines.append("")
    if d.representation:
        cka = ", ".join(
            f"{k} {v['cka']:.3f}" for k, v in d.representation.items() if v["cka"] is not None
        )
        lines.append(f"Linear CKA per layer: {cka}")
    if d.prediction_churn is not None:
        lines.append(
            f"Prediction churn: {100 * d.prediction_churn:.1f}%"
            f" of {d.shared_samples} shared samples"
        )
    return "\n".join(lines) + "\n"


def write_diff(d: DiffResult, out: Path) -> Path:
    """diff.json + diff.md into ``out`` (refusing a folder that holds something else)."""
    out = Path(out)
    if out.exists() and (
        not out.is_dir() or any(p.name not in ("diff.json", "diff.md") for p in out.iterdir())
    ):
        raise ReportError(
            f"{out} exists and is not a diff folder; refusing to overwrite it",
            hint="choose another -o",
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "diff.json").write_text(d.to_json(), encoding="utf-8")
    (out / "diff.md").write_text(diff_markdown(d), encoding="utf-8")
    return out
