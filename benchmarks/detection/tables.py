"""The benchmark's tables: detection per effect (both families side by side), false alarms
with Wilson 95 % intervals, the measured truth beside each verdict, LEACE erasure effect
sizes of the runs whose cue is measured not used, the dose-response (by rho and by the
measured effect), and the ablation check's interaction claims beside the measured
interaction truth.

Why a module of its own: ``run.py`` builds and scores runs; this one only reads the scored
run dicts (``run_one``'s output), so the false-alarm mode and ``--rescore`` share it.
"""

from __future__ import annotations

import fnmatch
import statistics
from typing import Any

from benchmarks.detection.variants import MARKER_RHOS, NEGATIVE_KINDS, VARIANTS

__all__ = ["summarise", "wilson", "exact_upper", "EFFECT_BINS"]

_SEVERITY = {"pass": 0, "note": 0, "warn": 1, "error": 2, "fail": 3}
_SKIP = ("not_run", "invalid", "excluded")
#: bins of the measured flip rate for the dose-response by effect: (label, low, high)
EFFECT_BINS: tuple[tuple[str, float, float], ...] = (
    ("<1 %", 0.0, 0.01),
    ("1-5 %", 0.01, 0.05),
    ("5-20 %", 0.05, 0.20),
    ("20-50 %", 0.20, 0.50),
    (">=50 %", 0.50, 1.01),
)
_USE_RULES = {"hotspot_used", "used", "scan_used", "site_word", "site_feature"}
#: the claims of use each check can raise (scan_used only when the audit ran the scan)
_RULES_BY_CHECK = {
    "saliency": ("hotspot_used", "scan_used"),
    "probing": ("used",),
    "attribution": ("site_word", "site_feature"),
}


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def wilson(k: int, n: int) -> tuple[float | None, float | None]:
    """Wilson score 95 % interval for k successes in n (statsmodels, else scipy)."""
    if n == 0:
        return None, None
    try:
        from statsmodels.stats.proportion import proportion_confint

        lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    except ImportError:
        from scipy.stats import binomtest

        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        lo, hi = ci.low, ci.high
    return float(lo), float(hi)


def exact_upper(k: int, n: int) -> float | None:
    """One-sided 95 % exact (Clopper-Pearson) upper bound: 0 of 59 gives 4.95 %."""
    if n == 0:
        return None
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(0.95, k + 1, n - k))


def _family(r: dict[str, Any]) -> int:
    return int(r.get("family") or 1)


def _truth(r: dict[str, Any]) -> dict[str, Any]:
    return r.get("truth") or {}


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _tpr(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tpr: dict[tuple[Any, ...], list[tuple[int, float | None]]] = {}
    untested: dict[tuple[Any, ...], int] = {}
    for r in runs:
        flip = _truth(r).get("flip_rate")
        for e in r["expectations"]:
            if e["outcome"] in _SKIP:
                continue
            key = (_family(r), e["effect"], e["check"], e["rule"], e["present"], e["primary"])
            if e["outcome"] == "untested":  # counted apart, not in the rate
                untested[key] = untested.get(key, 0) + 1
                tpr.setdefault(key, [])
                continue
            tpr.setdefault(key, []).append((int(e["outcome"] == "hit"), flip))
    return [
        {
            "family": k[0],
            "effect": k[1],
            "check": k[2],
            "rule": k[3],
            "expected": "flag" if k[4] else "no flag",
            "primary": k[5],
            "n": len(v),
            "untested": untested.get(k, 0),
            "rate": _rate(sum(x[0] for x in v), len(v)),
            "flip_median": _median([x[1] for x in v if x[1] is not None]),
        }
        for k, v in sorted(tpr.items(), key=lambda kv: tuple(str(x) for x in kv[0]))
    ]


def _side_by_side(tpr: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for row in tpr:
        key = (row["effect"], row["check"], row["rule"], row["expected"])
        cell = merged.setdefault(
            key, dict(zip(("effect", "check", "rule", "expected"), key, strict=True))
        )
        f = row["family"]
        n0 = cell.get(f"f{f}_n", 0)
        k0 = (cell.get(f"f{f}_rate") or 0.0) * n0
        cell[f"f{f}_n"] = n0 + row["n"]
        cell[f"f{f}_untested"] = cell.get(f"f{f}_untested", 0) + row.get("untested", 0)
        both = n0 + row["n"]
        cell[f"f{f}_rate"] = (k0 + (row["rate"] or 0.0) * row["n"]) / both if both else None
        cell[f"f{f}_flip"] = row["flip_median"]
    return [merged[k] for k in sorted(merged)]


def run_identity(r: dict[str, Any]) -> tuple[Any, ...]:
    """What makes a run's data and checkpoint: two variants with the same generator
    keywords, training and model at one seed (``clean`` and ``sex_encoded`` of family 1)
    train the very same model and are one observation, not two."""
    v = VARIANTS.get(r["variant"])
    if v is None:
        return (r["variant"], r["seed"])
    kw = sorted((k, repr(x)) for k, x in v.generator_kwargs(int(r["seed"])).items())
    return (v.family, v.model, v.training, v.train_rows, tuple(kw), r["seed"])


def _distinct(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``runs`` with the later duplicates of an identical run (:func:`run_identity`) left
    out: the false-alarm tallies count each trained model once."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for r in runs:
        key = run_identity(r)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _false_alarms(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per (family, check): false fails with Wilson intervals; per (family, check, use rule):
    how often the rule fired on a negative run it was not expected on."""
    per_check: dict[tuple[int, str], list[tuple[bool, bool]]] = {}
    per_rule: dict[tuple[int, str, str], list[int]] = {}
    for r in _distinct(runs):
        if r["kind"] not in NEGATIVE_KINDS:
            continue
        for check, a in r["alarms"].items():
            per_check.setdefault((_family(r), check), []).append((a["fail"], a["warn"]))
        expected_present = {
            (e["check"], e["rule"]) for e in r["expectations"] if e["present"] and e["rule"]
        }
        ran = set(r["alarms"])
        fired = {
            (f["check"], f["rule"])
            for f in r["findings"]
            if _SEVERITY.get(f["severity"], 0) >= 1 and f["rule"] in _USE_RULES
        }
        for check in ran:
            rules = {rule for c, rule in fired if c == check} | {
                rule
                for rule in _RULES_BY_CHECK.get(check, ())
                if rule != "scan_used" or r.get("scan_ran")
            }
            for rule in rules:
                if (check, rule) in expected_present:
                    continue
                per_rule.setdefault((_family(r), check, rule), []).append(
                    int((check, rule) in fired)
                )
    fpr_rows = []
    for (fam, c), v in sorted(per_check.items()):
        k = sum(x[0] for x in v)
        lo, hi = wilson(k, len(v))
        fpr_rows.append(
            {
                "family": fam,
                "check": c,
                "n": len(v),
                "fails": k,
                "fail_rate": _rate(k, len(v)),
                "wilson_low": lo,
                "wilson_high": hi,
                "upper95": exact_upper(k, len(v)),
                "warn_rate": _rate(sum(x[1] for x in v), len(v)),
            }
        )
    rule_rows = []
    for (fam, c, rule), v in sorted(per_rule.items()):
        lo, hi = wilson(sum(v), len(v))
        rule_rows.append(
            {
                "family": fam,
                "check": c,
                "rule": rule,
                "n": len(v),
                "k": sum(v),
                "rate": _rate(sum(v), len(v)),
                "wilson_low": lo,
                "wilson_high": hi,
            }
        )
    return fpr_rows, rule_rows


def _truth_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    per: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if r.get("truth"):
            per.setdefault(r["variant"], []).append(r["truth"])
    rows = []
    for name, ts in per.items():
        flips = [t["flip_rate"] for t in ts if t.get("flip_rate") is not None]
        dps = [t["mean_abs_dp"] for t in ts if t.get("mean_abs_dp") is not None]
        rows.append(
            {
                "variant": name,
                "runs": len(ts),
                **{v: sum(t["verdict"] == v for t in ts) for v in ("used", "not_used", "between")},
                "flip_median": _median(flips),
                "flip_min": min(flips) if flips else None,
                "flip_max": max(flips) if flips else None,
                "dp_median": _median(dps),
            }
        )
    return rows


def _erasure_not_used(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """LEACE excess |dp| on runs whose cue is measured not used, per family and attribute,
    and how often probing still said ``used`` there."""
    per: dict[tuple[int, str], list[float]] = {}
    flagged: dict[tuple[int, str], int] = {}
    for r in runs:
        if _truth(r).get("verdict") != "not_used":
            continue
        for k, v in (r.get("erasure") or {}).items():
            if not k.startswith("erasure.excess_dp."):
                continue
            attr = k.removeprefix("erasure.excess_dp.")
            key = (_family(r), attr)
            per.setdefault(key, []).append(v)
            used = any(
                f["check"] == "probing" and f["rule"] == "used" and attr in (f["metric"] or "")
                for f in r["findings"]
            )
            flagged[key] = flagged.get(key, 0) + int(used)
    rows = []
    for (fam, attr), v in sorted(per.items()):
        s = sorted(v)
        rows.append(
            {
                "family": fam,
                "attribute": attr,
                "n": len(s),
                "median": _median(s),
                "p95": s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))],
                "max": s[-1],
                "probing_used": flagged[(fam, attr)],
            }
        )
    return rows


def _dose_by_rho(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    by_rho: dict[str, dict[float, list[int]]] = {}
    for r in runs:
        if _family(r) != 1:
            continue
        rho = 0.0 if r["variant"] == "clean" else r["rho"]
        if rho is None:
            continue
        if r["variant"] == "clean":  # rho 0: would the marker rules fire with no marker?
            for e in VARIANTS[f"marker_rho{round(MARKER_RHOS[0] * 100):02d}"].expect:
                if e.check not in r["status"] or e.check in r.get("reasons", {}) or e.requires:
                    continue
                hit = any(
                    f["check"] == e.check
                    and f["rule"] == e.rule
                    and fnmatch.fnmatch(f["metric"] or "", e.metric)
                    and _SEVERITY.get(f["severity"], 0) >= _SEVERITY[e.severity]
                    for f in r["findings"]
                )
                by_rho.setdefault(f"{e.check}.{e.rule}", {}).setdefault(0.0, []).append(int(hit))
            continue
        for e in r["expectations"]:
            if e["effect"] == "marker" and e["outcome"] not in ("not_run", "invalid"):
                if e["detected"] is None:
                    continue
                key = f"{e['check']}.{e['rule']}"
                by_rho.setdefault(key, {}).setdefault(rho, []).append(int(bool(e["detected"])))
    return {
        key: {str(rho): _rate(sum(v), len(v)) for rho, v in sorted(per.items())}
        for key, per in by_rho.items()
    }


def _dose_by_effect(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Detection rate of each claim of use by bin of the measured flip rate (both families)."""
    out: dict[str, dict[str, list[int]]] = {}
    for r in runs:
        flip = _truth(r).get("flip_rate")
        if flip is None:
            continue
        label = next(b[0] for b in EFFECT_BINS if b[1] <= flip < b[2])
        for e in r["expectations"]:
            if not e.get("use") or e["detected"] is None or e["outcome"] == "invalid":
                continue
            key = f"{e['check']}.{e['rule']}"
            out.setdefault(key, {}).setdefault(label, []).append(int(bool(e["detected"])))
    return {
        key: {
            b[0]: {
                "n": len(per.get(b[0], [])),
                "rate": _rate(sum(per.get(b[0], [])), len(per.get(b[0], []))),
            }
            for b in EFFECT_BINS
        }
        for key, per in out.items()
    }


def _flagged(r: dict[str, Any], rule: str, metric: str = "*") -> bool:
    return any(
        f["check"] == "ablation"
        and f["rule"] == rule
        and fnmatch.fnmatch(f["metric"] or "", metric)
        and _SEVERITY.get(f["severity"], 0) >= 1
        for f in r.get("findings", [])
    )


def _gap_above_zero(r: dict[str, Any]) -> bool | None:
    gap = (r.get("interaction") or {}).get("audit_emap_gap") or {}
    return None if gap.get("ci_low") is None else gap["ci_low"] > 0


def _interaction_rates(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per claim of the ablation check about the report x labs pair, how often it is raised
    on the runs whose measured truth says it should be (``present``) and should not be:
    ``redundant_pair``, ``no_interaction``, and an EMAP gap whose CI lies above 0 (the model
    does better than its additive projection: it interacts, the truth ``additive`` absent)."""
    claims = (
        ("redundant_pair", "redundant", lambda r: _flagged(r, "redundant_pair", "*text_x_tab*")),
        ("no_interaction", "additive", lambda r: _flagged(r, "no_interaction")),
        ("emap.gap CI above 0", "interacts", _gap_above_zero),
    )
    rows = []
    runs = [r for r in runs if r.get("interaction")]
    for claim, truth_key, raised in claims:
        for family_model in sorted({(_family(r), str(r.get("model"))) for r in runs}):
            for expected in ("present", "absent"):
                hits = []
                for r in runs:
                    inter = r["interaction"]
                    if (_family(r), str(r.get("model"))) != family_model:
                        continue
                    verdict = inter["additive"] if truth_key == "interacts" else inter[truth_key]
                    if truth_key == "interacts":  # an interacting model is "not additive"
                        verdict = {"absent": "present", "present": "absent"}.get(verdict)
                    flag = raised(r)
                    if verdict == expected and flag is not None:
                        hits.append(bool(flag))
                if hits:
                    rows.append(
                        {
                            "claim": claim,
                            "model": family_model[1],
                            "truth": expected,
                            "runs": len(hits),
                            "raised": sum(hits),
                            "wilson": wilson(sum(hits), len(hits)),
                        }
                    )
    return rows


def _interaction_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each interaction run's measured truth beside the audit's numbers and findings."""
    out = []
    for r in runs:
        inter = r.get("interaction")
        if not inter:
            continue
        out.append(
            {
                "variant": r["variant"],
                "seed": r["seed"],
                "auroc": inter["auroc"],
                "ratio": inter["redundancy_ratio"],
                "redundant": inter["redundant"],
                "audit_ratio": inter.get("audit_redundancy"),
                "redundant_pair": _flagged(r, "redundant_pair", "*text_x_tab*"),
                "index": inter["interaction_index"],
                "truth_gap": inter.get("additive_gap"),
                "additive": inter["additive"],
                "gap": inter.get("audit_emap_gap"),
                "no_interaction": _flagged(r, "no_interaction"),
            }
        )
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every table of the benchmark from the scored runs."""
    tpr = _tpr(runs)
    fpr, fpr_rules = _false_alarms(runs)
    return {
        "tpr": tpr,
        "side_by_side": _side_by_side(tpr),
        "fpr": fpr,
        "fpr_rules": fpr_rules,
        "truth": _truth_rows(runs),
        "excluded": sum(_truth(r).get("verdict") == "between" for r in runs),
        "erasure_not_used": _erasure_not_used(runs),
        "dose_response": _dose_by_rho(runs),
        "dose_effect": _dose_by_effect(runs),
        "interaction_runs": _interaction_runs(runs),
        "interaction_rates": _interaction_rates(runs),
    }
