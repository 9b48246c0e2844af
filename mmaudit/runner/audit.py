"""``run_audit()``: config -> dataset + model -> one cached sweep -> checks -> report folder."""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mmaudit import __version__
from mmaudit.checks.contract import (
    AuditContext,
    Check,
    build_params,
    merged_thresholds,
)
from mmaudit.checks.findings import SEVERITY_ORDER, count_judged, judge, status_of
from mmaudit.checks.registry import get_check, load_builtin_checks
from mmaudit.engine.config import AuditConfig, config_to_yaml, load_config
from mmaudit.engine.errors import (
    CheckError,
    ConfigError,
    MmauditError,
    ModelLoadError,
    NonFiniteOutputError,
)
from mmaudit.report.agreement import cross_check
from mmaudit.report.folder import WORK_OWNER, WorkLock, work_folder
from mmaudit.report.writer import CheckReport, Redactor, Report, ReportWriter, json_safe


@dataclass
class Overrides:
    """Command-line values that replace config values for one run."""

    checks: list[str] | None = None
    device: str | None = None
    batch_size: int | None = None
    max_samples: int | None = None
    progress: bool | None = None
    redact: bool | None = None


@dataclass
class PlannedCheck:
    name: str
    check: Check
    rules: dict[str, Any]
    raw_params: dict[str, Any] = field(default_factory=dict)


def apply_overrides(cfg: AuditConfig, o: Overrides) -> AuditConfig:
    """``cfg`` with the command-line values put in; ConfigError for an invalid one."""
    if o.device is not None:
        try:
            cfg.runtime.device = type(cfg.runtime)._device(o.device)  # type: ignore[attr-defined]
        except ValueError as exc:
            raise ConfigError(
                f"--device {o.device!r} is not a device", hint="use auto, cpu, cuda, cuda:N or mps"
            ) from exc
    if o.batch_size is not None:
        cfg.runtime.batch_size = o.batch_size
    if o.max_samples is not None:
        cfg.runtime.max_samples = o.max_samples
    if o.progress is not None:
        cfg.runtime.progress = o.progress
    if o.redact is not None:
        cfg.report.redact = o.redact
    return cfg


def plan_checks(
    cfg: AuditConfig, only: list[str] | None = None, config_path: str | Path | None = None
) -> list[PlannedCheck]:
    """Resolve which checks run, with validated params and merged thresholds (fails fast).

    Every registered check runs unless its ``checks:`` entry says ``enabled: false``: an
    entry configures a check, it does not select it (a threshold override for one check
    must not switch the others off). ``only`` (``--checks a,b``) narrows to those checks.
    With ``config_path``, errors in a ``checks:`` entry name the file and line.
    """
    registry = load_builtin_checks()
    locate = config_locator(Path(config_path)) if config_path is not None else None
    for name in cfg.checks:
        get_check(name, locate)  # unknown names in the YAML are errors with a did-you-mean
    if only:
        names = list(dict.fromkeys(get_check(n).name for n in only))
    else:
        names = [n for n in sorted(registry) if n not in cfg.checks or cfg.checks[n].enabled]
    if not names:
        raise CheckError(
            "no checks to run: every check is disabled in the config",
            hint="remove 'enabled: false' from one, or name checks with --checks",
        )
    planned = []
    for name in names:
        cls = get_check(name)
        cc = cfg.checks.get(name)
        raw = cc.params if cc else {}
        params = build_params(cls, raw, f"checks.{name}", locate)
        rules = merged_thresholds(cls, cc.thresholds if cc else {}, f"checks.{name}", locate)
        planned.append(PlannedCheck(name, cls(params), rules, raw))
    return planned


NOT_REQUESTED = "not requested (--checks)"
DISABLED = "disabled in config"


def checks_not_run(
    cfg: AuditConfig, planned: list[PlannedCheck], only: list[str] | None
) -> dict[str, str]:
    """Every registered check that is not in ``planned``, with why it does not run.

    Why: a run narrowed by ``--checks`` must say so in its report, or it reads as a full
    audit in which the left-out checks found nothing.
    """
    ran = {pc.name for pc in planned}
    not_run = {}
    for name in sorted(load_builtin_checks()):
        if name in ran:
            continue
        disabled = name in cfg.checks and not cfg.checks[name].enabled
        not_run[name] = DISABLED if disabled or not only else NOT_REQUESTED
    return not_run


def config_as_run(cfg: AuditConfig, planned: list[PlannedCheck]) -> AuditConfig:
    """A copy of ``cfg`` whose ``checks:`` section selects exactly the checks that ran
    (``enabled: false`` for the others, ``enabled: true`` for one named by ``--checks``
    although disabled in the file), so the config.yaml a report holds reruns that audit."""
    from mmaudit.engine.config import CheckConfig

    out = cfg.model_copy(deep=True)
    ran = {pc.name for pc in planned}
    for name in sorted(load_builtin_checks()):
        entry = out.checks.get(name)
        if name in ran and entry is not None and not entry.enabled:
            entry.enabled = True
        elif name not in ran:
            if entry is None:
                out.checks[name] = CheckConfig(enabled=False)
            else:
                entry.enabled = False
    return out


def config_locator(path: Path) -> Callable[[str], str]:
    """``key -> "FILE:LINE"`` for dotted keys of the config file (the file alone when the
    key is not found), so check-level errors point where top-level ones do."""
    import yaml

    from mmaudit.engine.config import _line_of

    try:
        tree = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        tree = None

    def locate(key: str) -> str:
        line = _line_of(tree, tuple(key.split(".")))
        return f"{path}:{line}" if line else str(path)

    return locate


def probe_model(adapter: Any, dataset: Any, target_kind: str) -> None:
    """Run the model on the first few rows before anything else does; ModelLoadError (one
    line, exit 2) when it raises or its number of outputs does not fit the target, and
    NonFiniteOutputError (naming the ids) when it answers NaN or inf for any of them.

    Why: a model that cannot take the data would otherwise fail inside the sweep with a
    traceback, or later inside every check, after a report folder was started.
    """
    import torch

    batch = next(iter(dataset.batches(min(4, len(dataset))))).to(adapter.device)
    try:
        with torch.inference_mode():
            logits = adapter.logits(batch)
    except MmauditError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"the model failed on one batch: {type(exc).__name__}: {exc}".splitlines()[0],
            hint="check model.inputs and the data config; --debug shows the traceback",
        ) from exc
    expected = (1, 2) if target_kind == "binary" else (len(dataset.class_names),)
    if logits.ndim != 2 or logits.shape[1] not in expected:
        outputs = logits.shape[1] if logits.ndim == 2 else f"shape {tuple(logits.shape)}"
        raise ModelLoadError(
            f"the model returns {outputs} outputs but a {target_kind} target with"
            f" {len(dataset.class_names)} classes needs {' or '.join(map(str, expected))}",
            hint="check the model's head (model.kwargs) and data.target; if the audited rows"
            " lack some of the model's classes, list them all in data.target.classes",
        )
    bad = ~torch.isfinite(logits.float()).reshape(len(logits), -1).all(1)
    if bool(bad.any()):
        from mmaudit.engine.cache import _some_ids

        values = logits[bad]
        kinds = [k for k, hit in (("NaN", values.isnan()), ("inf", values.isinf())) if hit.any()]
        ids = dataset.ids[batch.index.cpu().numpy()[bad.cpu().numpy()]]
        hint = "check the checkpoint (weights, dtype) and these rows' inputs"
        if adapter.effective_precision == "fp16":
            hint += "; fp16 overflows to inf: try runtime.precision bf16 or fp32"
        raise NonFiniteOutputError(
            f"model output 'logits' is {'/'.join(kinds)} for {_some_ids(ids)} ({len(ids)} of"
            f" {len(batch)} rows of the first batch, probed before the run)",
            hint=hint,
        )


def sha256_of(paths: list[Path]) -> str:
    """One digest over the bytes of every file given (in order)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def tokenizer_sha256(cfg: AuditConfig) -> str | None:
    """One digest over the tokenizer folder's files (names and bytes), None without text."""
    if cfg.data.text is None:
        return None
    folder = Path(cfg.data.text.tokenizer)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        h.update(sha256_of([p]).encode())
    return h.hexdigest()


def any_batch_done(work_dir: Path) -> bool:
    """Whether a sweep left finished batches in ``work_dir`` (its ``*.done.npy`` flags)."""
    import numpy as np

    for flags in work_dir.glob("*.done.npy"):
        try:
            if np.load(flags, mmap_mode="r").any():
                return True
        except (OSError, ValueError):  # a flag file cut short: nothing to resume from it
            continue
    return False


def checkpoint_files(cfg: AuditConfig) -> list[Path]:
    """The files whose bytes make the checkpoint's identity (``model.sha256``, the --resume
    key): a built-in checkpoint's folder, a TorchScript file, or a factory's weights and
    the factory's source (its code builds the model, so editing it is another checkpoint).
    Imports the factory, as loading the model does: call it after ``load_model``."""
    m = cfg.model
    if m.checkpoint is not None:
        return sorted(p for p in Path(m.checkpoint).iterdir() if p.is_file())
    if m.torchscript is not None:
        return [Path(m.torchscript)]
    files = [Path(m.weights)] if m.weights is not None else []
    if m.factory is not None:
        from mmaudit.engine.adapter import factory_source_files

        files += factory_source_files(m.factory, m.python_path)
    return files


def environment(device: str) -> dict[str, Any]:
    import numpy as np
    import torch

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": device,
        "cuda_available": torch.cuda.is_available(),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def run_audit(
    config_path: str | Path,
    out: str | Path,
    overrides: Overrides | None = None,
    console: Any = None,
    resume: bool = False,
    fail_on: str = "fail",
    fail_on_skipped: bool | None = None,
) -> Report:
    """Run every planned check on the config's model and data; write the report folder.

    Under ``torchrun`` every rank runs this: the model-bound work is sharded across
    ranks by the cache, and only rank 0 writes the report. With ``resume``, base-sweep
    batches finished by an interrupted run of the same config and checkpoint are reused.
    ``fail_on`` and ``fail_on_skipped`` (None: ``runtime.fail_on_skipped``) are recorded in
    the report: the gate and junit.xml follow them.
    """
    import numpy as np
    import torch

    from mmaudit.engine import distributed
    from mmaudit.engine.adapter import load_model, missing_layer_notes
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.data import build_dataset

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    overrides = overrides or Overrides()
    cfg = apply_overrides(load_config(config_path), overrides)
    planned = plan_checks(cfg, overrides.checks, config_path)
    cfg.runtime.device = distributed.init(cfg.runtime.device)
    distributed.agree(config_fingerprint(cfg), "config")
    if not distributed.is_main():
        cfg.runtime.progress = False
    # before any data is read or model loaded: one writer per output folder (the lock), and
    # an output that cannot take a report (someone else's files, read-only) stops the run now
    lock = WorkLock(out).acquire() if distributed.is_main() else None
    try:
        writer: ReportWriter | NullWriter = (
            ReportWriter(Path(out)) if distributed.is_main() else NullWriter()
        )
    except BaseException:
        if lock is not None:
            lock.release(keep=not lock.created)
        raise
    work_dir: Path | None = None
    try:
        torch.manual_seed(cfg.runtime.seed)
        np.random.seed(cfg.runtime.seed)
        dataset = build_dataset(cfg)
        for note in dataset.notes if console is not None else []:
            console.print(f"note: {note}", style="yellow", markup=False, highlight=False)
        if distributed.world_size() > len(dataset):
            raise MmauditError(
                f"world size {distributed.world_size()} is larger than the dataset"
                f" ({len(dataset)} rows)",
                hint="use fewer processes",
            )
        if cfg.report.redact:
            patients = None if dataset.patients is None else [str(p) for p in dataset.patients]
            writer.redactor = Redactor([str(i) for i in dataset.ids], dataset.texts, patients)
        timings["load_data"] = time.perf_counter() - t0
        t = time.perf_counter()
        adapter = load_model(cfg.model, dataset.modalities, cfg.runtime)
        timings["load_model"] = time.perf_counter() - t
        # the token embeddings that only a forward can find; then what missing layers cost
        adapter.detect_on_batch(next(iter(dataset.batches(min(4, len(dataset))))))
        if console is not None:
            for note in missing_layer_notes(adapter, [pc.check for pc in planned], len(dataset)):
                console.print(f"note: {note}", style="yellow", markup=False, highlight=False)
        missing = dataset.configure_missing("present" in adapter.keywords)
        probe_model(adapter, dataset, cfg.data.target.kind)
        precision = precision_record(cfg.runtime.precision, adapter.effective_precision)
        if "precision_note" in precision and console is not None:
            console.print(f"[yellow]note: {precision['precision_note']}[/yellow]")
        cache = InferenceCache(
            adapter,
            dataset,
            batch_size=cfg.runtime.batch_size,
            num_workers=cfg.runtime.num_workers,
            seed=cfg.runtime.seed,
            progress=cfg.runtime.progress,
            target_kind=cfg.data.target.kind,
        )
        model_sha = sha256_of(checkpoint_files(cfg))
        manifest_sha = sha256_of([dataset.manifest_path])
        cache.work_dir = work_dir = prepare_work_dir(
            Path(out), cfg, model_sha, manifest_sha, resume
        )
        if adapter.supports_hooks:
            cache.request_layers(
                [k for k in ("embedding", *dataset.modalities) if k in adapter.layers]
            )
        for pc in planned:
            cache.request_layers([ly for ly in pc.check.layers_wanted if ly in adapter.layers])
        t = time.perf_counter()
        cache.sweep()
        timings["sweep"] = time.perf_counter() - t
        ctx = AuditContext(
            config=cfg,
            dataset=dataset,
            adapter=adapter,
            cache=cache,
            seed=cfg.runtime.seed,
            redact=cfg.report.redact,
        )
        results: dict[str, CheckReport] = {}
        for pc in planned:
            results[pc.name] = run_one(pc, ctx, writer, console)
            timings[f"check.{pc.name}"] = results[pc.name].seconds
        saved = save_samples(cfg, dataset, cache, writer)
        timings["total"] = time.perf_counter() - t0
        worst = "pass"
        for r in results.values():
            if SEVERITY_ORDER.get(r.status, 0) > SEVERITY_ORDER[worst]:
                worst = r.status
        ran_cfg = config_as_run(cfg, planned)
        report = Report(
            tool_version=__version__,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            config=json_safe(ran_cfg.model_dump(mode="json")),
            config_path=str(Path(config_path).resolve()),
            model={
                "source": adapter.source,
                "sha256": model_sha,
                "layers": adapter.layers,
                "detected": adapter.detected,
                "inputs": adapter.keywords,
                "parameters": int(sum(p.numel() for p in adapter.module.parameters())),
            },
            data={
                "manifest": str(dataset.manifest_path),
                "sha256": manifest_sha,
                "notes": list(dataset.notes),
                # the tokenizer's contents, not its path, decide whether two audits compare
                "tokenizer_sha256": tokenizer_sha256(cfg),
                "n": len(dataset),
                "modalities": list(dataset.modalities),
                "target_kind": cfg.data.target.kind,
                "classes": dataset.class_names,
                "patients": int(len(set(dataset.patients)))
                if dataset.patients is not None
                else None,
                "redacted": cfg.report.redact,
                "saved": saved,
                "missing": missing,
                "tabular_stats": {
                    c: {"mean": mu, "std": sd} for c, (mu, sd) in dataset.tabular_stats.items()
                },
            },
            environment=environment(str(adapter.device))
            | precision
            | {"world_size": distributed.world_size()},
            seed=cfg.runtime.seed,
            timings=timings | {"model_calls": float(cache.model_calls)},
            checks=results,
            cross_checks=cross_check(results, list(cfg.data.attributes)),
            status=worst,
            fail_on=fail_on,
            fail_on_skipped=cfg.runtime.fail_on_skipped
            if fail_on_skipped is None
            else fail_on_skipped,
            checks_requested=[pc.name for pc in planned] if overrides.checks else None,
            checks_not_run=checks_not_run(cfg, planned, overrides.checks),
        )
        distributed.barrier()
        header = narrowing_comment(report.checks_requested)
        writer.finish(report, header + config_to_yaml(ran_cfg))
        if lock is not None:
            lock.release(keep=False)  # a finished audit leaves no resume state
        return report
    except BaseException as exc:
        writer.abort()
        # finished sweep batches are kept for --resume (meta.json refuses them if the
        # config, checkpoint or manifest changes), and so is the resume state of an earlier
        # run that this one stopped before touching; a run that got nothing done leaves
        # nothing behind
        # nothing either, after NaN / inf outputs: the checkpoint must change, and --resume
        # refuses the batches of another checkpoint
        resumable = not isinstance(exc, NonFiniteOutputError)
        if work_dir is not None:
            keep = resumable and (resume or (lock is not None and any_batch_done(work_dir)))
        else:
            keep = lock is not None and not lock.created
        if lock is not None:
            lock.release(keep=keep)
        if not isinstance(exc, MmauditError):
            raise
        clean = unwrap_worker_error(exc)
        if work_dir is not None and keep and lock is not None:
            hint = "fix the file and rerun with --resume"
            clean.hint = f"{clean.hint}; {hint}" if clean.hint else hint
        if clean is exc:
            raise
        raise clean from exc


def narrowing_comment(only: list[str] | None) -> str:
    """A YAML comment heading config.yaml when ``--checks`` narrowed the run ('' if not)."""
    if not only:
        return ""
    return (
        f"# narrowed on the command line: --checks {','.join(only)}\n"
        "# (the checks it left out are written below as enabled: false)\n"
    )


def unwrap_worker_error(exc: MmauditError) -> MmauditError:
    """The one-line error inside one re-raised by a DataLoader worker (whose message is the
    worker's whole traceback); ``exc`` itself when it did not come from a worker."""
    text = str(exc)
    if "Original Traceback" not in text:
        return exc
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    last = [line for line in text.splitlines() if line.startswith(prefix)]
    return type(exc)(last[-1].removeprefix(prefix) if last else text.splitlines()[0])


def precision_record(asked: str, ran: str) -> dict[str, str]:
    """``precision`` as it ran (for report.json), with a note when it is not what was asked."""
    record = {"precision": ran}
    if ran != asked:
        record["precision_asked"] = asked
        record["precision_note"] = (
            f"runtime.precision {asked} runs as {ran}: autocast is used on CUDA devices only"
        )
    return record


class NullWriter:
    """What ranks other than 0 write: nothing (figures are closed, paths are empty)."""

    redactor: Redactor | None = None

    def add_check(self, name: str, output: Any, ids: Any) -> tuple[dict[str, str], dict[str, str]]:
        import matplotlib.pyplot as plt

        for fig in output.figures.values():
            plt.close(fig)
        return {}, {}

    def add_samples(self, frame: Any, embeddings: dict[str, Any], max_mb: float) -> list[str]:
        return []

    def finish(self, report: Report, config_yaml: str) -> None:
        return None

    def abort(self) -> None:
        return None


def config_fingerprint(cfg: AuditConfig) -> str:
    """A hash of what decides the results (not how progress is shown)."""
    raw = cfg.model_dump(mode="json")
    raw["runtime"].pop("progress", None)
    raw["runtime"].pop("device", None)
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()


def prepare_work_dir(
    out: Path, cfg: AuditConfig, model_sha: str, manifest_sha: str, resume: bool
) -> Path:
    """The folder where finished sweep batches wait for a --resume (hidden sibling of OUT).

    Without ``resume`` (or with nothing to resume) the folder is emptied, but not removed:
    rank 0 holds its lock (``WorkLock``), taken on the folder itself, since the run began.
    """
    from mmaudit.engine import distributed

    work = work_folder(out)
    meta = {
        "config": config_fingerprint(cfg),
        "checkpoint": model_sha,
        "manifest": manifest_sha,
        "world_size": distributed.world_size(),
    }
    meta_file = work / "meta.json"
    if resume and meta_file.is_file():
        try:
            previous = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            previous = None
        if not isinstance(previous, dict):
            raise MmauditError(
                f"--resume: {meta_file} is unreadable (cut short?)",
                hint="run without --resume to start over",
            )
        changed = [k for k in meta if previous.get(k) != meta[k]]
        if changed:
            raise MmauditError(
                f"--resume: {work} comes from a run with another {', '.join(changed)}",
                hint="run without --resume to start over",
            )
        return work
    distributed.barrier()
    if distributed.is_main():
        work.mkdir(parents=True, exist_ok=True)
        for entry in work.iterdir():
            if entry.name == WORK_OWNER:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        meta_file.write_text(json.dumps(meta))
    distributed.barrier()
    return work


def pooled(values: Any) -> Any:
    """One vector per sample: token outputs (N, T, D) and feature maps (N, C, H, W) averaged."""
    if values.ndim == 3:
        return values.mean(axis=1)
    if values.ndim == 4:
        return values.mean(axis=(2, 3))
    return values.reshape(len(values), -1)


def save_samples(
    cfg: AuditConfig, dataset: Any, cache: Any, writer: ReportWriter
) -> dict[str, Any]:
    """Per-sample predictions and compact embeddings, so `mmaudit diff` can pair two audits.

    Only what ``report.save_predictions`` / ``save_embeddings`` ask for: with embeddings
    alone, the frame holds just the ids the embeddings are paired by.
    """
    import pandas as pd

    saved: dict[str, Any] = {"predictions": False, "embeddings": [], "embeddings_left_out": []}
    if not cfg.report.save_predictions and not cfg.report.save_embeddings:
        return saved
    sweep = cache.sweep()
    frame = pd.DataFrame({"id": [str(i) for i in dataset.ids]})
    if cfg.report.save_predictions:
        add_predictions(frame, cfg, dataset, sweep)
    layers = {}
    if cfg.report.save_embeddings:
        layers = {name: pooled(v) for name, v in sweep.embeddings.items()}
    left_out = writer.add_samples(frame, layers, cfg.report.embeddings_max_mb)
    saved["predictions"] = cfg.report.save_predictions
    saved["embeddings"] = [k for k in layers if k not in left_out]
    saved["embeddings_left_out"] = left_out
    return saved


def add_predictions(frame: Any, cfg: AuditConfig, dataset: Any, sweep: Any) -> None:
    """Add patient, target(s), logits and probabilities to the per-sample ``frame``."""
    from mmaudit.checks.performance import sweep_probs

    if dataset.patients is not None:
        frame["patient"] = [str(p) for p in dataset.patients]
    target = dataset.target
    if target.ndim == 1:
        frame["target"] = target
    else:
        for k, name in enumerate(dataset.class_names):
            frame[f"target.{name}"] = target[:, k]
    probs = sweep_probs(sweep.logits, cfg.data.target.kind)
    for k in range(sweep.logits.shape[1]):
        frame[f"logit.{k}"] = sweep.logits[:, k]
        frame[f"prob.{k}"] = probs[:, k]


def run_one(
    pc: PlannedCheck, ctx: AuditContext, writer: ReportWriter, console: Any = None
) -> CheckReport:
    """Run one check; skipped when its needs are unmet or it could test nothing on this data,
    error (not a crash) when it raises.

    Nothing tested is not ``pass``: a check that reports ``judged == 0`` (and raised no
    warn / fail / error finding of its own) is ``skipped`` with the check's reason, so a
    gate cannot go green on an audit that tested nothing. Rules added in the config (not
    the check's defaults) count the metrics they can judge on top of the check's own count.
    """
    start = time.perf_counter()
    params = pc.check.params.model_dump(mode="json")
    thresholds = {k: v.model_dump(exclude_none=True) for k, v in pc.rules.items()}
    rows_total = len(ctx.dataset)
    reason = pc.check.missing_requirements(ctx)
    if reason is not None:
        return CheckReport(
            name=pc.name,
            status="skipped",
            reason=reason,
            params=params,
            thresholds=thresholds,
            judged=0,
            rows_used=0,
            rows_total=rows_total,
        )
    try:
        output = pc.check.run(ctx)
    except NonFiniteOutputError:
        raise  # the model's numbers are unusable for every check: the run stops, exit 2
    except Exception as exc:
        if console is not None:
            console.print(f"[red]check {pc.name} raised {type(exc).__name__}: {exc}[/red]")
        return CheckReport(
            name=pc.name,
            status="error",
            reason=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            params=params,
            thresholds=thresholds,
            seconds=time.perf_counter() - start,
        )
    findings = list(output.findings) + judge(pc.name, output.metrics, pc.rules)
    figures, tables = writer.add_check(pc.name, output, ctx.dataset.ids)
    status = status_of(findings)
    if status == "note":
        status = "pass"
    judged = output.judged
    if judged is not None:
        defaults = type(pc.check).default_thresholds
        added = {k: r for k, r in pc.rules.items() if k not in defaults}
        judged += count_judged(output.metrics, added)
    skip_reason = None
    if judged == 0 and status == "pass":
        status = "skipped"
        skip_reason = output.skip_reason or (
            "nothing could be tested on this data (no test ran; see the notes)"
        )
    return CheckReport(
        name=pc.name,
        status=status,
        reason=skip_reason,
        metrics=json_safe(output.metrics),
        findings=findings,
        figures=figures,
        tables=tables,
        notes=output.notes,
        params=params,
        thresholds=thresholds,
        seconds=time.perf_counter() - start,
        judged=judged,
        rows_used=output.rows_used,
        rows_total=rows_total,
        coverage=list(output.coverage),
    )
