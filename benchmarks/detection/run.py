"""Run the planted-shortcut detection benchmark: train, audit, score, tabulate.

For every (variant, seed) this generates the variant's data with
``mmaudit.sample.generate.generate_sample``, trains a small built-in checkpoint on CPU
with ``mmaudit.sample.build.train_checkpoint`` (or keeps random weights / shuffles labels for
the controls), audits it through the normal ``mmaudit.runner.run_audit`` path with a
config like ``configs/sample.yaml``, and scores each check's findings against the
variant's known verdicts (``variants.py``). It writes ``results.json``, ``results.md``
and ``dose_response.png`` into ``--out``:

* true-positive rate per planted effect and (check, rule), pooled over seeds;
* false-positive rate per check on the ``clean`` and ``encoded_only`` variants (any
  ``fail`` finding that the variant does not expect; ``warn`` rate alongside);
* the marker dose-response: detection rate against the marker-label correlation rho.

Usage: ``python -m benchmarks.detection.run --out DIR [--variants a,b] [--seeds N]
[--checks c,d] [--quick] [--force]``; ``--out DIR --rescore [--recheck c,d]`` scores the
runs already in DIR again (today's thresholds; the named checks audited again), also
after an interrupted run. Bad input (unknown variant or check, seeds < 1, an existing
``--out`` without ``--force``) is refused with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.detection.variants import MARKER_RHOS, NEGATIVE_KINDS, VARIANTS, Variant
from mmaudit.report.agreement import check_ran

__all__ = ["Settings", "main", "run_benchmark", "score_report"]

_SEVERITY = {"pass": 0, "note": 0, "warn": 1, "error": 2, "fail": 3}
_MAX_SEEDS = 20


@dataclass(frozen=True)
class Settings:
    """How big each run is: studies generated, training steps, checks audited."""

    n: int
    steps: int
    seeds: int
    checks: list[str] | None  # None = every registered check
    batch_size: int = 64


QUICK = Settings(n=200, steps=12, seeds=1, checks=["performance", "probing"])
FULL = Settings(n=1000, steps=300, seeds=3, checks=None)


class BadInput(Exception):
    """A command-line value the benchmark refuses (exit status 2)."""


# --- building one run ------------------------------------------------------------------


def _random_init_checkpoint(ds: Any, out: Path, seed: int) -> None:
    """Save the architecture ``train_checkpoint`` builds, with its untrained weights."""
    import torch

    from mmaudit.engine.models import build_model, save_checkpoint
    from mmaudit.sample.build import sample_architecture

    torch.manual_seed(seed)
    spec = sample_architecture(len(ds.tokenizer))
    model = build_model(spec)
    model.eval()
    save_checkpoint(model, spec, out)


def _prepare_data(variant: Variant, seed: int, folder: Path, n: int) -> dict[str, Any]:
    """Generate the variant's studies and tokenizer; return the train split's lab stats."""
    from mmaudit.sample.build import prepare_data

    return prepare_data(folder, n, seed, **variant.generator_kwargs(seed))


def _train(
    variant: Variant, folder: Path, stats: dict[str, Any], ckpt: Path, seed: int, steps: int
) -> dict[str, float]:
    """Train (or initialise) the variant's checkpoint on its train split."""
    import pandas as pd

    from mmaudit.engine.config import RuntimeConfig
    from mmaudit.engine.data import AuditDataset
    from mmaudit.sample.build import sample_data_config, train_checkpoint

    data_cfg = sample_data_config(folder, ["train"], stats)
    if variant.training == "shuffled_labels":
        frame = pd.read_csv(folder / "manifest.csv", keep_default_na=True)
        train = frame["split"] == "train"
        rng = np.random.default_rng([seed, 99])
        frame.loc[train, "label"] = rng.permutation(frame.loc[train, "label"].to_numpy())
        shuffled = folder / "manifest_shuffled_train.csv"
        frame.to_csv(shuffled, index=False)
        data_cfg = data_cfg.model_copy(update={"manifest": shuffled})
    ds = AuditDataset(data_cfg, RuntimeConfig(seed=seed))
    if variant.training == "random_init":
        _random_init_checkpoint(ds, ckpt, seed)
        return {"train_seconds": 0.0}
    rows = np.arange(len(ds))
    if variant.train_rows == "balanced":
        rows = np.flatnonzero(ds.frame["balanced_train"].to_numpy().astype(bool))
    return train_checkpoint(ds, rows, ckpt, seed=seed, steps=steps)


def _write_config(folder: Path, stats: dict[str, Any], ckpt: Path, seed: int, bs: int) -> Path:
    """An audit config like configs/sample.yaml for this run's data and checkpoint."""
    import yaml

    from mmaudit.sample.build import sample_data_config

    data = sample_data_config(folder, ["test"], stats).model_dump(mode="json")
    cfg = {
        "model": {"checkpoint": str(ckpt)},
        "data": data,
        "checks": {},
        "runtime": {"device": "cpu", "batch_size": bs, "seed": seed, "progress": False},
    }
    path = ckpt.parent / f"audit_{ckpt.name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _audit(config: Path, out: Path, checks: list[str] | None) -> Any:
    from mmaudit.runner import Overrides, run_audit

    return run_audit(config, out, Overrides(checks=checks, device="cpu", progress=False))


# --- scoring ---------------------------------------------------------------------------


def score_report(variant: Variant, report: Any) -> dict[str, Any]:
    """Compare one audit report with the variant's expectations.

    Returns the findings (check, rule, metric, severity), one outcome per expectation
    (``hit`` / ``miss`` / ``not_run`` when the check did not run), and the per-check
    ``fail`` / ``warn`` false alarms: findings that no ``present`` expectation explains.
    """
    findings = [
        {"check": f.check, "rule": f.rule, "metric": f.metric, "severity": f.severity}
        for cr in report.checks.values()
        for f in cr.findings
    ]
    # an "error" status with a reason is a check that raised; without one, the check ran and
    # raised an error-severity finding (e.g. probing's failed positive control)
    ran = {n for n, cr in report.checks.items() if check_ran(cr)}
    unmet = _unmet(variant, report)
    invalid = bool(unmet)
    outcomes = []
    for e in variant.expect:
        if invalid:  # the model never learned what was planted: nothing to detect
            outcomes.append({**asdict(e), "detected": None, "outcome": "invalid"})
            continue
        if e.check == "cross_checks":  # what the report's "across checks" summary says
            outcomes.append(_cross_check_outcome(e, report, ran))
            continue
        if e.check not in ran:
            outcomes.append({**asdict(e), "detected": None, "outcome": "not_run"})
            continue
        detected = any(
            f["check"] == e.check
            and f["rule"] == e.rule
            and fnmatch.fnmatch(f["metric"] or "", e.metric)
            and _SEVERITY.get(f["severity"], 0) >= _SEVERITY[e.severity]
            for f in findings
        )
        outcomes.append(
            {
                **asdict(e),
                "detected": detected,
                "outcome": "hit" if detected == e.present else "miss",
            }
        )
    explained = [e for e in variant.expect if e.present]
    alarms: dict[str, dict[str, bool]] = {}
    for name in ran:
        own = [
            f
            for f in findings
            if f["check"] == name
            and not any(
                e.check == name
                and e.rule == f["rule"]
                and fnmatch.fnmatch(f["metric"] or "", e.metric)
                for e in explained
            )
        ]
        alarms[name] = {
            "fail": any(f["severity"] == "fail" for f in own),
            "warn": any(_SEVERITY.get(f["severity"], 0) >= 1 for f in own),
        }
    statuses = {n: cr.status for n, cr in report.checks.items()}
    # why a check did not run: an error here is a bug to fix, not a benchmark outcome
    reasons = {n: cr.reason for n, cr in report.checks.items() if n not in ran}
    return {
        "findings": findings,
        "unmet": unmet,
        "expectations": outcomes,
        "alarms": alarms,
        "status": statuses,
        "reasons": reasons,
    }


def _unmet(variant: Variant, report: Any) -> list[str]:
    """The variant's ``learned`` conditions that this audit's metrics do not meet."""
    unmet = []
    for check, metric, least in variant.learned:
        cr = report.checks.get(check)
        value = getattr(cr, "metrics", {}).get(metric) if cr is not None else None
        if isinstance(value, dict):
            value = value.get("value")
        if not isinstance(value, (int, float)) or value < least:
            shown = f"{value:.3g}" if isinstance(value, (int, float)) else "missing"
            unmet.append(f"{check} {metric} {shown} < {least:g}")
    return unmet


def _cross_check_outcome(e: Any, report: Any, ran: set[str]) -> dict[str, Any]:
    """``rule`` ``saliency_blind``: the summary says attribute ``metric`` is used while
    saliency finds no hotspot (needs saliency and probing to have run)."""
    if not {"saliency", "probing"} <= ran:
        return {**asdict(e), "detected": None, "outcome": "not_run"}
    detected = any(
        fnmatch.fnmatch(cc.attribute, e.metric) and cc.used and cc.image_hotspot is False
        for cc in getattr(report, "cross_checks", [])
    )
    return {
        **asdict(e),
        "detected": detected,
        "outcome": "hit" if detected == e.present else "miss",
    }


def _seed_pair_verdict(first: Path, second: Path, seed: int) -> dict[str, Any]:
    """What ``mmaudit diff`` says about two seeds of one recipe: no change is the hit."""
    from mmaudit.report.diff import diff_reports

    d = diff_reports(first, second, seed=seed)
    new_fail = [f.rule for f in d.new_findings if f.severity == "fail"]
    no_change = not d.regressions and not new_fail
    return {
        "expectations": [
            {
                "effect": "seed_pair_no_change",
                "check": "diff",
                "rule": "regressions",
                "metric": "*",
                "severity": "fail",
                "present": False,
                "primary": True,
                "detected": not no_change,
                "outcome": "hit" if no_change else "miss",
            }
        ],
        "diff": {"regressions": d.regressions, "new_fail_findings": new_fail},
    }


def _seed_pair(
    variant: Variant, folder: Path, stats: dict[str, Any], seed: int, s: Settings, run_dir: Path
) -> dict[str, Any]:
    """Train two seeds of one recipe, audit both, and ask ``diff`` whether anything changed."""
    reports = []
    for k, train_seed in enumerate((seed, seed + 10_000)):
        ckpt = run_dir / f"ckpt_{k}"
        _train(variant, folder, stats, ckpt, train_seed, s.steps)
        cfg = _write_config(folder, stats, ckpt, seed, s.batch_size)
        reports.append(_audit(cfg, run_dir / f"report_{k}", s.checks))
    scored = score_report(variant, reports[0])
    scored.update(_seed_pair_verdict(run_dir / "report_0", run_dir / "report_1", seed))
    return scored


def run_one(variant: Variant, seed: int, s: Settings, run_dir: Path) -> dict[str, Any]:
    """Generate, train, audit and score one (variant, seed)."""
    t0 = time.perf_counter()
    folder = run_dir / "data"
    stats = _prepare_data(variant, seed, folder, s.n)
    if variant.kind == "seed_pair":
        scored = _seed_pair(variant, folder, stats, seed, s, run_dir)
    else:
        ckpt = run_dir / "ckpt"
        _train(variant, folder, stats, ckpt, seed, s.steps)
        cfg = _write_config(folder, stats, ckpt, seed, s.batch_size)
        scored = score_report(variant, _audit(cfg, run_dir / "report", s.checks))
    return {
        "variant": variant.name,
        "kind": variant.kind,
        "rho": variant.rho,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 1),
        **scored,
    }


def rejudge(report: Any) -> Any:
    """``report`` with each check's threshold findings judged again by today's defaults.

    Why: thresholds are calibrated on this benchmark, and training plus auditing every
    variant takes most of an hour, while judging stored metrics takes a second. Findings a
    check raised itself (rules not among the thresholds it ran with) are kept as they are;
    the status is recomputed from the new findings. The report is not written back.
    """
    from mmaudit.checks.findings import judge, status_of
    from mmaudit.checks.registry import get_check
    from mmaudit.methods.stats import Estimate
    from mmaudit.report.agreement import cross_check

    def metric(v: Any) -> Any:
        return Estimate.from_dict(v) if isinstance(v, dict) and "value" in v else v

    report = report.model_copy(deep=True)
    for name, cr in report.checks.items():
        if not check_ran(cr):
            continue
        rules = get_check(name).default_thresholds
        own = [f for f in cr.findings if f.rule not in cr.thresholds and f.rule not in rules]
        metrics = {k: metric(v) for k, v in cr.metrics.items()}
        cr.findings = own + judge(name, metrics, rules)
        status = status_of(cr.findings)
        cr.status = "pass" if status == "note" else status
        cr.thresholds = {k: v.model_dump(exclude_none=True) for k, v in rules.items()}
    attributes = list((report.config.get("data") or {}).get("attributes") or {})
    report.cross_checks = cross_check(report.checks, attributes)
    return report


def recheck(folder: Path, config: Path, checks: list[str]) -> None:
    """Audit ``checks`` again on a stored run and put them into its report folder.

    Why: a fix to how a check computes its statistics (not just its thresholds) must reach
    every stored run without training all checkpoints again. The re-audit uses the run's own
    config and checkpoint; the checks' entries, figures, tables and per-sample files replace
    the old ones, the status, the across-checks summary and the views are rebuilt.
    """
    import tempfile

    from mmaudit.checks.findings import SEVERITY_ORDER
    from mmaudit.report.agreement import cross_check
    from mmaudit.report.document import load_report
    from mmaudit.report.views import write_views
    from mmaudit.report.writer import seal_folder

    report = load_report(folder)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = _audit(config, Path(tmp) / "r", checks)
        for name in checks:
            report.checks[name] = fresh.checks[name]
            for sub in ("figures", "tables"):
                src, dst = Path(tmp) / "r" / sub / name, folder / sub / name
                if dst.exists():
                    shutil.rmtree(dst)
                if src.exists():
                    shutil.copytree(src, dst)
            for src in (Path(tmp) / "r" / "samples").glob(f"{name}.*"):
                shutil.copy2(src, folder / "samples" / src.name)
    report.status = max(
        (c.status for c in report.checks.values()), key=lambda st: SEVERITY_ORDER.get(st, 0)
    )
    attributes = list((report.config.get("data") or {}).get("attributes") or {})
    report.cross_checks = cross_check(report.checks, attributes)
    write_views(folder, report)
    seal_folder(folder, report)  # report.json last: it records the digests of the files above


def _audits(variant: Variant, run_dir: Path) -> list[tuple[Path, Path]]:
    """(report folder, audit config) of each audit in a run folder: two for a seed pair."""
    if variant.kind == "seed_pair":
        return [(run_dir / f"report_{k}", run_dir / f"audit_ckpt_{k}.yaml") for k in (0, 1)]
    return [(run_dir / "report", run_dir / "audit_ckpt.yaml")]


def _stored_runs(out: Path) -> list[tuple[Variant, int, Path]]:
    """Every finished (variant, seed, run folder) under ``out/runs``, in registry order."""
    found = []
    for name, variant in VARIANTS.items():
        base = out / "runs" / name
        if not base.is_dir():
            continue
        for run_dir in sorted(base.glob("seed*"), key=lambda d: int(d.name[4:] or 0)):
            if all((folder / "report.json").is_file() for folder, _ in _audits(variant, run_dir)):
                found.append((variant, int(run_dir.name[4:]), run_dir))
    return found


def rescore(out: Path, recheck_checks: list[str] | None = None) -> dict[str, Any]:
    """Score the stored runs in ``out`` again and rewrite results.json / .md / the figure.

    Nothing is trained. Findings are judged again with today's default thresholds
    (``rejudge``); ``recheck_checks`` are first audited again on every run (``recheck``).
    Works on an interrupted benchmark too: the runs are found from the folders
    (``runs/<variant>/seed<k>/``), and results.json, when present, only adds the settings
    and timings of the original run.
    """
    from mmaudit.report.document import load_report

    stored = _stored_runs(out)
    if not stored:
        raise BadInput(f"{out} holds no finished run of this benchmark (runs/<variant>/seed<k>)")
    path = out / "results.json"
    result: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    if not result:
        result = {
            "command": "(interrupted run; settings assumed to be the defaults)",
            "settings": asdict(FULL),
            "seconds": 0.0,
        }
    before = {(r["variant"], r["seed"]): r for r in result.get("runs", [])}
    runs = []
    for variant, seed, run_dir in stored:
        audits = _audits(variant, run_dir)
        folders = [folder for folder, _ in audits]
        for folder, config in audits:
            if recheck_checks:
                print(f"[detection] recheck {variant.name} seed {seed}", file=sys.stderr)
                recheck(folder, config, recheck_checks)
        scored = score_report(variant, rejudge(load_report(folders[0])))
        if variant.kind == "seed_pair":
            scored.update(_seed_pair_verdict(folders[0], folders[1], seed))
        old = before.get((variant.name, seed), {})
        runs.append(
            {
                "variant": variant.name,
                "kind": variant.kind,
                "rho": variant.rho,
                "seed": seed,
                "seconds": old.get("seconds"),
                **scored,
            }
        )
    result["variants"] = {
        v.name: {"kind": v.kind, "description": v.description} for v, _, _ in stored
    }
    result["runs"] = runs
    result["summary"] = summarise(runs)
    result["rescored"] = "findings judged again with the default thresholds of this commit" + (
        f"; checks audited again: {', '.join(recheck_checks)}" if recheck_checks else ""
    )
    _write_results(out, result)
    return result


# --- tables ----------------------------------------------------------------------------


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """TPR per (effect, check, rule), FPR per check on negatives, and the marker dose-response."""
    tpr: dict[tuple[str, str, str, bool, bool], list[int]] = {}
    for r in runs:
        for e in r["expectations"]:
            if e["outcome"] in ("not_run", "invalid"):
                continue
            key = (e["effect"], e["check"], e["rule"], e["present"], e["primary"])
            tpr.setdefault(key, []).append(int(e["outcome"] == "hit"))
    tpr_rows = [
        {
            "effect": k[0],
            "check": k[1],
            "rule": k[2],
            "expected": "flag" if k[3] else "no flag",
            "primary": k[4],
            "n": len(v),
            "rate": _rate(sum(v), len(v)),
        }
        for k, v in sorted(tpr.items())
    ]
    fpr: dict[str, list[tuple[bool, bool]]] = {}
    for r in runs:
        if r["kind"] not in NEGATIVE_KINDS:
            continue
        for check, a in r["alarms"].items():
            fpr.setdefault(check, []).append((a["fail"], a["warn"]))
    fpr_rows = [
        {
            "check": c,
            "n": len(v),
            "fail_rate": _rate(sum(x[0] for x in v), len(v)),
            "warn_rate": _rate(sum(x[1] for x in v), len(v)),
        }
        for c, v in sorted(fpr.items())
    ]
    dose: dict[str, dict[str, float | None]] = {}
    by_rho: dict[str, dict[float, list[int]]] = {}
    for r in runs:
        rho = 0.0 if r["variant"] == "clean" else r["rho"]
        if rho is None:
            continue
        if r["variant"] == "clean":  # rho 0: would the marker rules fire with no marker?
            for e in VARIANTS[f"marker_rho{round(MARKER_RHOS[0] * 100):02d}"].expect:
                if e.check not in r["status"] or e.check in r.get("reasons", {}):
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
                key = f"{e['check']}.{e['rule']}"
                by_rho.setdefault(key, {}).setdefault(rho, []).append(int(bool(e["detected"])))
    for key, per in by_rho.items():
        dose[key] = {str(rho): _rate(sum(v), len(v)) for rho, v in sorted(per.items())}
    return {"tpr": tpr_rows, "fpr": fpr_rows, "dose_response": dose}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


def to_markdown(result: dict[str, Any]) -> str:
    """The results as Markdown tables (TPR per effect, FPR per check, dose-response)."""
    s = result["settings"]
    lines = [
        "# Detection benchmark",
        "",
        f"Command: `{result['command']}`  ",
        f"Studies per run: {s['n']}, training steps: {s['steps']}, seeds: {s['seeds']},"
        f" checks: {', '.join(s['checks']) if s['checks'] else 'all'};"
        f" {len(result['runs'])} runs in {result['seconds']:.0f} s."
        + (f" Rescored (`--rescore`): {result['rescored']}." if "rescored" in result else ""),
        "",
        "## Detection per planted effect (rate of correct verdicts, pooled over seeds)",
        "",
        "| effect | check | rule | expected | primary | runs | correct |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["summary"]["tpr"]:
        lines.append(
            f"| {r['effect']} | {r['check']} | {r['rule']} | {r['expected']} |"
            f" {'yes' if r['primary'] else ''} | {r['n']} | {_fmt(r['rate'])} |"
        )
    lines += [
        "",
        "## False alarms on clean and encoded-only variants (unexpected findings)",
        "",
        "| check | runs | fail rate | warn-or-fail rate |",
        "|---|---|---|---|",
    ]
    for r in result["summary"]["fpr"]:
        lines.append(
            f"| {r['check']} | {r['n']} | {_fmt(r['fail_rate'])} | {_fmt(r['warn_rate'])} |"
        )
    dose = result["summary"]["dose_response"]
    if dose:
        rhos = sorted({float(k) for v in dose.values() for k in v})
        lines += [
            "",
            "## Marker dose-response (detection rate by marker-label correlation)",
            "",
            "| check.rule | " + " | ".join(f"rho {r:g}" for r in rhos) + " |",
            "|---|" + "---|" * len(rhos),
        ]
        for key, per in sorted(dose.items()):
            lines.append(f"| {key} | " + " | ".join(_fmt(per.get(str(r))) for r in rhos) + " |")
    lines += ["", "## Runs", "", "| variant | seed | seconds | statuses |", "|---|---|---|---|"]
    for r in result["runs"]:
        st = ", ".join(f"{k}: {v}" for k, v in sorted(r["status"].items()))
        if r.get("unmet"):
            st = f"**left out, the model did not learn it: {'; '.join(r['unmet'])}**; {st}"
        lines.append(f"| {r['variant']} | {r['seed']} | {r['seconds']} | {st} |")
    return "\n".join(lines) + "\n"


def dose_figure(result: dict[str, Any]) -> Any:
    """Detection rate against rho per marker (check, rule); a note when there is no marker run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    dose = result["summary"]["dose_response"]
    for key, per in sorted(dose.items()):
        pts = sorted((float(r), v) for r, v in per.items() if v is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
    if not dose:
        ax.text(0.5, 0.5, "no marker or clean runs in this benchmark", ha="center", va="center")
    ax.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax.axhline(0.05, color="grey", lw=0.8, ls=":")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("marker-label correlation rho (0 = clean)")
    ax.set_ylabel("detection rate")
    ax.set_title("Marker shortcut: dose-response")
    if dose:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def run_benchmark(out: Path, variants: list[str], s: Settings, command: str = "") -> dict[str, Any]:
    """Run every (variant, seed), score, and write results.json / results.md / the figure."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for name in variants:
        for seed in range(s.seeds):
            run_dir = out / "runs" / name / f"seed{seed}"
            print(f"[detection] {name} seed {seed} ...", file=sys.stderr, flush=True)
            runs.append(run_one(VARIANTS[name], seed, s, run_dir))
            for check, reason in runs[-1]["reasons"].items():
                status = runs[-1]["status"][check]
                print(f"[detection]   {check} {status}: {reason}", file=sys.stderr, flush=True)
    result = {
        "command": command,
        "settings": asdict(s),
        "variants": {
            n: {"kind": VARIANTS[n].kind, "description": VARIANTS[n].description} for n in variants
        },
        "seconds": time.perf_counter() - t0,
        "runs": runs,
        "summary": summarise(runs),
    }
    _write_results(out, result)
    return result


def _write_results(out: Path, result: dict[str, Any]) -> None:
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "results.md").write_text(to_markdown(result))
    fig = dose_figure(result)
    fig.savefig(out / "dose_response.png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)


# --- command line ----------------------------------------------------------------------


def _known_checks(text: str) -> list[str]:
    from mmaudit.checks.registry import load_builtin_checks

    known = load_builtin_checks()
    checks = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in checks if c not in known]
    if bad or not checks:
        raise BadInput(
            f"unknown check {', '.join(map(repr, bad)) or '(none given)'};"
            f" known: {', '.join(sorted(known))}"
        )
    return checks


def parse_args(argv: list[str]) -> tuple[Path, list[str], Settings | None, list[str]]:
    """Validate the command line; ``BadInput`` with one clear message on bad values.

    Returns (out, variants, settings, checks to recheck); settings are None for
    ``--rescore``.
    """
    ap = argparse.ArgumentParser(prog="python -m benchmarks.detection.run", description=__doc__)
    ap.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    ap.add_argument("--variants", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--seeds", default=None, help="seeds per variant (default 3; --quick: 1)")
    ap.add_argument("--checks", default=None, help="comma-separated checks (default: all)")
    ap.add_argument("--quick", action="store_true", help="small data, few steps, 2 checks")
    ap.add_argument("--force", action="store_true", help="replace an existing --out")
    ap.add_argument(
        "--rescore",
        action="store_true",
        help="judge the runs already in --out again with today's default thresholds",
    )
    ap.add_argument(
        "--recheck",
        default=None,
        help="with --rescore: comma-separated checks to audit again on every stored run",
    )
    a = ap.parse_args(argv)
    if a.recheck is not None and not a.rescore:
        raise BadInput("--recheck needs --rescore")
    if a.rescore:
        return Path(a.out), [], None, _known_checks(a.recheck) if a.recheck else []
    base = QUICK if a.quick else FULL
    names = list(VARIANTS) if a.variants is None else [v.strip() for v in a.variants.split(",")]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise BadInput(
            f"unknown variant {', '.join(map(repr, unknown)) or '(none given)'};"
            f" known: {', '.join(VARIANTS)}"
        )
    seeds = base.seeds
    if a.seeds is not None:
        try:
            seeds = int(a.seeds)
        except ValueError:
            raise BadInput(f"--seeds must be a whole number, got {a.seeds!r}") from None
        if not 1 <= seeds <= _MAX_SEEDS:
            raise BadInput(f"--seeds must be between 1 and {_MAX_SEEDS}, got {seeds}")
    checks = base.checks if a.checks is None else _known_checks(a.checks)
    out = Path(a.out)
    if out.exists() and not a.force:
        raise BadInput(f"output folder {out} exists; pass --force to replace it")
    s = Settings(n=base.n, steps=base.steps, seeds=seeds, checks=checks)
    return out, names, s, []


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 2 on refused input."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        out, names, s, recheck_checks = parse_args(argv)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if s is None:
        try:
            result = rescore(out, recheck_checks or None)
        except BadInput as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"[detection] {len(result['runs'])} runs rescored -> {out}")
        return 0
    if out.exists():
        shutil.rmtree(out)
    command = "python -m benchmarks.detection.run " + " ".join(argv)
    result = run_benchmark(out, names, s, command)
    print(f"[detection] {len(result['runs'])} runs in {result['seconds']:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
