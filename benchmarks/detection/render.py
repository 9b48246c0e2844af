"""Write the benchmark's summary (``tables.summarise``) as Markdown and as the dose figure.

The Markdown starts with the exact command that produced it and the run sizes; every
verdict of use is shown beside the effect that removing the cue measured.
"""

from __future__ import annotations

from typing import Any

from benchmarks.detection.interaction import (
    ADDITIVE_MAX_GAP,
    INTERACTS_MIN_GAP,
    MIN_AUROC,
    NOT_REDUNDANT_MAX_RATIO,
    REDUNDANT_MIN_RATIO,
)
from benchmarks.detection.intervention import NOT_USED_MAX_DP, NOT_USED_MAX_FLIP, USED_MIN_FLIP
from benchmarks.detection.tables import EFFECT_BINS

__all__ = ["to_markdown", "dose_figure"]

_FAMILY = {
    1: "family 1 (sample generator, built-in model)",
    2: "family 2 (own generator, factory models)",
}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


def _fmt1(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _cell(rate: float | None, n: int | None) -> str:
    return "–" if not n else f"{_fmt(rate)} ({n})"


def _estimate(e: dict[str, Any] | None) -> str:
    if not e or e.get("value") is None:
        return "n/a"
    return f"{_num(e['value'])} [{_num(e.get('ci_low'))}, {_num(e.get('ci_high'))}]"


def _interaction_lines(sm: dict[str, Any]) -> list[str]:
    """The interaction recipes: truth by intervention beside the ablation check's claims."""
    runs = sm.get("interaction_runs") or []
    if not runs:
        return []
    lines = [
        "",
        "## Interactions, truth by intervention",
        "",
        "The report state A and the lab state B are removed (sentence left out, bilirubin set"
        " to the midpoint) and flipped in re-renders of the same test studies. Redundancy"
        " ratio = 1 - max(AUROC drop without A, without B) / drop without both: **redundant**"
        f" at >= {REDUNDANT_MIN_RATIO}, not below {NOT_REDUNDANT_MAX_RATIO}. Interaction:"
        " the logit contrast C of the four flips (0 when the model adds one term per state);"
        " its index = mean |C| / (mean |effect of A| + mean |effect of B|), and its gap ="
        " AUROC of the model - AUROC of its EMAP over the two states (f - C / 4 on the 2 x 2"
        " grid of renders): **additive** at a"
        f" gap <= {ADDITIVE_MAX_GAP} (`no_interaction` must flag), **interacts** at >="
        f" {INTERACTS_MIN_GAP} (it must not, and the EMAP gap's CI should lie above 0). In"
        f" between, or when the model's AUROC is below {MIN_AUROC}, the claim is left out.",
        "",
        "| claim | model | measured truth | runs | raised | Wilson 95 % |",
        "|---|---|---|---|---|---|",
    ]
    for r in sm.get("interaction_rates") or []:
        lo, hi = r["wilson"]
        lines.append(
            f"| {r['claim']} | {r['model']} | {r['truth']} | {r['runs']} | {r['raised']} |"
            f" {_fmt(lo)}-{_fmt(hi)} |"
        )
    lines += [
        "",
        "Per run: AUROC of the model on the drawn test studies, then with A removed / B"
        " removed / both removed; the measured ratio and interaction with their verdicts; the"
        " audit's report x labs redundancy ratio and EMAP gap [95 % CI]; whether each rule"
        " was raised (– not raised). A model below the AUROC bar learned neither state:"
        " its claims are left out.",
        "",
        "| variant | seed | AUROC (no A / no B / neither) | ratio → truth | audit ratio |"
        " redundant_pair | index, gap → truth | EMAP gap | no_interaction |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        a = r["auroc"]
        learned = a["full"] >= MIN_AUROC
        redundant = r["redundant"] if learned else "left out: not learned"
        additive = r["additive"] if learned else "left out: not learned"
        lines.append(
            f"| {r['variant']} | {r['seed']} | {_num(a['full'])} ({_num(a['no_a'])} /"
            f" {_num(a['no_b'])} / {_num(a['no_ab'])}) | {_num(r['ratio'])} → {redundant} |"
            f" {_estimate(r['audit_ratio'])} | {'raised' if r['redundant_pair'] else '–'} |"
            f" {_num(r['index'])}, {_num(r['truth_gap'])} → {additive} |"
            f" {_estimate(r['gap'])} |"
            f" {'raised' if r['no_interaction'] else '–'} |"
        )
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    """The results as Markdown: command, truth, detection, false alarms, LEACE, dose."""
    s = result["settings"]
    sm = result["summary"]
    lines = [
        "# Detection benchmark",
        "",
        f"Command: `{result['command']}`  ",
        f"Studies per run: {s['n']}, training steps: {s['steps']}, seeds: {s['seeds']},"
        f" checks: {', '.join(s['checks']) if s['checks'] else 'all'};"
        f" {len(result['runs'])} runs in {result.get('seconds', 0):.0f} s."
        + (f" Rescored (`--rescore`): {result['rescored']}." if "rescored" in result else ""),
    ]
    for name, why in (result.get("skipped") or {}).items():
        lines.append(f"Skipped `{name}`: {why}.  ")
    for name, why in (result.get("failed") or {}).items():
        lines.append(f"**Failed** `{name}` (left out): {why}  ")
    lines += [
        "",
        "## Truth by intervention",
        "",
        "Each test study is rendered again without its cue (same seed; marker not drawn,"
        " phrase left out, lab column not shifted) and both go through the checkpoint. On the"
        " studies the removal changed: share of decisions (p >= 0.5) flipped and mean |Δp|."
        f" Verdict **used** at >= {_fmt(USED_MIN_FLIP)} flips; **not used** below"
        f" {_fmt(NOT_USED_MAX_FLIP)} flips and mean |Δp| < {NOT_USED_MAX_DP}; in between the"
        f" claims of use are left out of scoring ({sm.get('excluded', 0)} runs here). Claims of"
        " use (saliency hotspot / scan, probing `used`, attribution site word / feature) are"
        " scored against this verdict, not against the recipe.",
        "",
        "| variant | runs | used | not used | between | flips median (min-max) | mean abs Δp |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sm.get("truth", []):
        lines.append(
            f"| {r['variant']} | {r['runs']} | {r['used']} | {r['not_used']} | {r['between']} |"
            f" {_fmt1(r['flip_median'])} ({_fmt1(r['flip_min'])}-{_fmt1(r['flip_max'])}) |"
            f" {_num(r['dp_median'])} |"
        )
    lines += [
        "",
        "## Detection per planted effect, both families side by side",
        "",
        "Rate of correct verdicts (runs); the expected verdict of a claim of use is the"
        ' measured one. Median measured flip rate of the runs in brackets. "untested":'
        " runs where the check said it could not test use (probing's `encoded_use_untested`,"
        " e.g. site collinear with the label), counted apart, neither hit nor miss.",
        "",
        f"| effect | check | rule | expected | {_FAMILY[1]} | {_FAMILY[2]} |",
        "|---|---|---|---|---|---|",
    ]
    for r in sm.get("side_by_side", []):
        cells = []
        for f in (1, 2):
            c = _cell(r.get(f"f{f}_rate"), r.get(f"f{f}_n"))
            if r.get(f"f{f}_untested"):
                c = ("" if c == "–" else c + ", ") + f"{r[f'f{f}_untested']} untested"
            if r.get(f"f{f}_flip") is not None:
                c += f" [flips {_fmt(r[f'f{f}_flip'])}]"
            cells.append(c)
        lines.append(
            f"| {r['effect']} | {r['check']} | {r['rule']} | {r['expected']} | {cells[0]} |"
            f" {cells[1]} |"
        )
    lines += [
        "",
        "## False alarms on negative runs (clean, encoded-only, cue measured not used)",
        "",
        "A false alarm is a `fail` finding no expectation explains. Wilson 95 % interval;"
        " the exact one-sided 95 % upper bound is what 0 of >= 59 runs holds below 5 %.",
        "",
        "| family | check | runs | false fails | rate | Wilson 95 % | upper 95 % (exact) |"
        " warn-or-fail rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sm["fpr"]:
        lines.append(
            f"| {r.get('family', 1)} | {r['check']} | {r['n']} | {r.get('fails', '')} |"
            f" {_fmt1(r['fail_rate'])} | {_fmt1(r.get('wilson_low'))}-"
            f"{_fmt1(r.get('wilson_high'))} | {_fmt1(r.get('upper95'))} |"
            f" {_fmt(r['warn_rate'])} |"
        )
    if sm.get("fpr_rules"):
        lines += [
            "",
            "Per claim of use (warn or fail) on negative runs where it was not expected"
            " (saliency's `scan_used` appears once the audit has the off-ROI scan):",
            "",
            "| family | check | rule | runs | fired | rate | Wilson 95 % |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sm["fpr_rules"]:
            lines.append(
                f"| {r['family']} | {r['check']} | {r['rule']} | {r['n']} | {r['k']} |"
                f" {_fmt1(r['rate'])} | {_fmt1(r['wilson_low'])}-{_fmt1(r['wilson_high'])} |"
            )
    lines += [
        "",
        "## LEACE erasure on runs whose cue is measured not used",
        "",
        "Probing's excess |Δp| (erasure minus random erasures) where removing the cue changed"
        " no decision: the effect sizes an attribute reaches without being used through the"
        " cue, i.e. where the `used` rule's effect floor must sit.",
        "",
        "| family | attribute | runs | median | 95th pct | max | probing said used |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sm.get("erasure_not_used", []):
        lines.append(
            f"| {r['family']} | {r['attribute']} | {r['n']} | {_num(r['median'])} |"
            f" {_num(r['p95'])} | {_num(r['max'])} | {r['probing_used']} |"
        )
    dose = sm.get("dose_response") or {}
    if dose:
        rhos = sorted({float(k) for v in dose.values() for k in v})
        lines += [
            "",
            "## Marker dose-response by marker-label correlation (family 1)",
            "",
            "| check.rule | " + " | ".join(f"rho {r:g}" for r in rhos) + " |",
            "|---|" + "---|" * len(rhos),
        ]
        for key, per in sorted(dose.items()):
            lines.append(f"| {key} | " + " | ".join(_fmt(per.get(str(r))) for r in rhos) + " |")
    effect = sm.get("dose_effect") or {}
    if effect:
        lines += [
            "",
            "## Dose-response by measured effect (flip rate when the cue is removed; both"
            " families)",
            "",
            "Share of runs where the claim of use was raised (runs).",
            "",
            "| check.rule | " + " | ".join(b[0] for b in EFFECT_BINS) + " |",
            "|---|" + "---|" * len(EFFECT_BINS),
        ]
        for key, per in sorted(effect.items()):
            lines.append(
                f"| {key} | "
                + " | ".join(_cell(per[b[0]]["rate"], per[b[0]]["n"]) for b in EFFECT_BINS)
                + " |"
            )
    lines += _interaction_lines(sm)
    lines += [
        "",
        "## Runs",
        "",
        "| variant | seed | seconds | cue removed: flips, mean abs Δp → truth | statuses |",
        "|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        st = ", ".join(f"{k}: {v}" for k, v in sorted(r["status"].items()))
        if r.get("unmet"):
            st = f"**left out, the model did not learn it: {'; '.join(r['unmet'])}**; {st}"
        t = r.get("truth") or {}
        tr = (
            f"{_fmt1(t.get('flip_rate'))}, {_num(t.get('mean_abs_dp'))} → {t['verdict']}"
            if t.get("verdict") not in (None, "no_cue")
            else "no cue"
        )
        lines.append(f"| {r['variant']} | {r['seed']} | {r['seconds']} | {tr} | {st} |")
    return "\n".join(lines) + "\n"


def dose_figure(result: dict[str, Any]) -> Any:
    """Left: detection rate against rho (family 1 markers); right: against the measured
    flip rate (every run with a removable cue, both families)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    dose = result["summary"].get("dose_response") or {}
    for key, per in sorted(dose.items()):
        pts = sorted((float(r), v) for r, v in per.items() if v is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
    if not dose:
        ax.text(0.5, 0.5, "no marker or clean runs in this benchmark", ha="center", va="center")
    ax.set_xlim(-0.05, 1.05)
    ax.set_xlabel("marker-label correlation rho (0 = clean)")
    ax.set_title("by recipe (rho)")
    centres = {b[0]: (b[1] + min(b[2], 1.0)) / 2 for b in EFFECT_BINS}
    effect = result["summary"].get("dose_effect") or {}
    for key, per in sorted(effect.items()):
        pts = [(centres[b], v["rate"]) for b, v in per.items() if v["rate"] is not None]
        if pts:
            bx.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
    if not effect:
        bx.text(0.5, 0.5, "no run with a measured cue effect", ha="center", va="center")
    bx.axvline(USED_MIN_FLIP, color="grey", lw=0.8, ls=":")
    bx.set_xlim(-0.05, 1.05)
    bx.set_xlabel("measured flip rate when the cue is removed (bin centres)")
    bx.set_title("by measured effect")
    for a in (ax, bx):
        a.axhline(0.9, color="grey", lw=0.8, ls="--")
        a.axhline(0.05, color="grey", lw=0.8, ls=":")
        a.set_ylim(-0.05, 1.05)
        a.set_ylabel("detection rate")
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7, loc="lower right")
    fig.suptitle("Shortcut detection: dose-response")
    fig.tight_layout()
    return fig
