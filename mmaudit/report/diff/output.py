"""What a diff shows people: diff.md (fit for a pull-request comment, every string from a
report escaped), the lines the CLI prints, and the diff folder (diff.json + diff.md).
"""

from __future__ import annotations

from pathlib import Path

from mmaudit.engine.errors import ReportError
from mmaudit.report.diff.result import DiffResult, MetricDelta
from mmaudit.report.markdown import markdown_cell


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def moved_metrics(d: DiffResult) -> list[MetricDelta]:
    """Significant moves, regressions first, then improvements, then by size of the move."""
    moved = [m for m in d.metrics if m.significant and m.delta is not None]
    order = {"regression": 0, "improved": 1, "worse (within limits)": 2, "moved": 3}
    return sorted(moved, key=lambda m: (order.get(m.verdict, 4), -abs(m.delta or 0)))


def diff_markdown(d: DiffResult, limit: int = 25) -> str:
    """diff.md: fit for a pull-request comment (every string from a report escaped)."""
    verdict = "❌ regressed" if d.regressions else "✅ no regressions"
    esc = markdown_cell
    lines = [f"## mmaudit diff: {verdict}", "", f"`{esc(d.base)}` → `{esc(d.new)}`", ""]
    if d.not_comparable_reasons:
        lines += [f"> ⚠️ not comparable: {esc('; '.join(d.not_comparable_reasons))}", ""]
    if d.regressions:
        lines += ["**Regressions**", ""] + [f"- {esc(r)}" for r in d.regressions] + [""]
    for title, items in (
        ("Resolved findings", d.resolved_findings),
        ("Findings now less severe", d.improved_findings),
    ):
        if items:
            lines += [f"**{title}**", ""]
            for f in items:
                was = f" (was {f.was})" if f.was else ""
                lines.append(f"- {f.severity}{was} `{esc(f.check)}`: {esc(f.message)}")
            lines.append("")
    if d.status_changes:
        lines += ["| check | base | new |", "|---|---|---|"]
        lines += [f"| {esc(s['check'])} | {s['base']} | {s['new']} |" for s in d.status_changes] + [
            ""
        ]
    moved = moved_metrics(d)
    if moved:
        lines += ["| metric | base | new | Δ | verdict | test |", "|---|---|---|---|---|---|"]
        for m in moved[:limit]:
            lines.append(
                f"| {esc(m.check)}.{esc(m.metric)} | {m.base:.4g} | {m.new:.4g}"
                f" | {m.delta:+.4g} | {m.verdict} | {m.method} |"
            )
        if len(moved) > limit:
            lines.append(f"\n_{len(moved) - limit} more significant moves in diff.json_")
        lines.append("")
    lines += representation_lines(d)
    if d.notes:
        lines += [""] + [f"_{esc(n)}_" for n in d.notes]
    return "\n".join(lines) + "\n"


def representation_lines(d: DiffResult) -> list[str]:
    """CKA per layer, prediction churn and saliency-map rank correlation, as plain lines."""
    lines = []
    if d.representation:
        cka = ", ".join(
            f"{k} {_num(v['cka'])} (debiased {_num(v['cka_debiased'])})"
            for k, v in d.representation.items()
        )
        lines.append(f"Linear CKA per layer: {cka}")
    if d.prediction_churn is not None:
        lines.append(
            f"Prediction churn: {100 * d.prediction_churn:.1f}%"
            f" of {d.shared_samples} shared samples"
        )
    if d.array_rank_correlation:
        rho = ", ".join(f"{k} {_num(v)}" for k, v in d.array_rank_correlation.items())
        lines.append(f"Per-sample map rank correlation (Spearman, mean): {rho}")
    return lines


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
