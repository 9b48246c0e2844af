"""``run_audit()``: config -> dataset + model -> one cached sweep -> checks -> report folder,
with the output folder's lock, the resume state it keeps on failure and one-line errors."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmaudit import __version__
from mmaudit.checks.contract import AuditContext
from mmaudit.checks.findings import SEVERITY_ORDER
from mmaudit.engine.config_file import config_to_yaml, load_config
from mmaudit.engine.errors import MmauditError, NonFiniteOutputError
from mmaudit.engine.host_memory import release_freed_memory
from mmaudit.report.agreement import cross_check
from mmaudit.report.document import CheckReport, Report, json_safe
from mmaudit.report.folder import WorkLock
from mmaudit.report.views import check_baseline
from mmaudit.report.writer import Redactor, ReportWriter
from mmaudit.runner.check_run import run_one
from mmaudit.runner.environment import environment, precision_record
from mmaudit.runner.fingerprints import (
    checkpoint_files,
    config_fingerprint,
    sha256_of,
    tokenizer_sha256,
)
from mmaudit.runner.null_writer import NullWriter
from mmaudit.runner.overrides import Overrides, apply_overrides
from mmaudit.runner.plan import checks_not_run, config_as_run, narrowing_comment, plan_checks
from mmaudit.runner.preflight import probe_model
from mmaudit.runner.resume import any_batch_done, prepare_work_dir
from mmaudit.runner.samples import save_samples


def run_audit(
    config_path: str | Path,
    out: str | Path,
    overrides: Overrides | None = None,
    console: Any = None,
    stages: Any = None,
    resume: bool = False,
    fail_on: str = "fail",
    fail_on_skipped: bool | None = None,
    baseline: str | Path | None = None,
) -> Report:
    """Run every planned check on the config's model and data; write the report folder.

    Under ``torchrun`` every rank runs this: the model-bound work is sharded across
    ranks by the cache, and only rank 0 writes the report. With ``resume``, base-sweep
    batches finished by an interrupted run of the same config and checkpoint are reused.
    ``fail_on`` and ``fail_on_skipped`` (None: ``runtime.fail_on_skipped``) are recorded in
    the report: the gate and junit.xml follow them. ``baseline`` (an earlier report folder)
    is checked before any data is read, and the finished report is compared with it as
    ``mmaudit diff`` does (diff.json, diff.md, ``Report.baseline``, shown on the page).
    ``stages`` (a console) gets one line per stage while ``runtime.progress`` is on:
    readable in a log, where bars are not drawn.
    """
    import numpy as np
    import torch

    from mmaudit.engine import distributed
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.layer_notes import missing_layer_notes
    from mmaudit.engine.loading import load_model
    from mmaudit.engine.partial_encoders import partial_encoder_notes

    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def say(stage: str) -> None:
        if stages is not None and cfg.runtime.progress:
            elapsed = time.perf_counter() - t0
            stages.print(f"[{elapsed:6.0f} s] {stage}", style="dim", markup=False)

    overrides = overrides or Overrides()
    cfg = apply_overrides(load_config(config_path), overrides)
    planned = plan_checks(cfg, overrides.checks, config_path)
    if baseline is not None:
        check_baseline(Path(baseline), Path(out))
    cfg.runtime.device = distributed.init(cfg.runtime.device)
    distributed.agree(config_fingerprint(cfg), "config")
    if not distributed.is_main():
        cfg.runtime.progress = False
    # before any data is read or model loaded: one writer per output folder (the lock), and
    # an output that cannot take a report (someone else's files, read-only) stops the run now
    lock = WorkLock(out).acquire() if distributed.is_main() else None
    try:
        writer: ReportWriter | NullWriter = (
            ReportWriter(Path(out), baseline=None if baseline is None else Path(baseline))
            if distributed.is_main()
            else NullWriter()
        )
    except BaseException:
        if lock is not None:
            lock.release(keep=not lock.created)
        raise
    work_dir: Path | None = None
    cache: InferenceCache | None = None
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
        say(f"data: {len(dataset)} rows, modalities {', '.join(dataset.modalities)}")
        t = time.perf_counter()
        adapter = load_model(cfg.model, dataset.modalities, cfg.runtime)
        timings["load_model"] = time.perf_counter() - t
        # the token embeddings that only a forward can find; then what missing layers cost
        first = next(iter(dataset.batches(min(4, len(dataset)))))
        adapter.detect_on_batch(first)
        # and named encoders that leave a backbone running when their cached output is reused
        reuse_notes = partial_encoder_notes(adapter, first)
        if console is not None:
            for note in [
                *missing_layer_notes(adapter, [pc.check for pc in planned], len(dataset)),
                *reuse_notes,
            ]:
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
            memory_budget_mb=cfg.runtime.memory_budget_mb,
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
        say(f"model: loaded ({adapter.source}); inference sweep over {len(dataset)} rows")
        cache.sweep()
        release_freed_memory()  # the sweep's batches: nothing of them is used again
        timings["sweep"] = time.perf_counter() - t
        say(f"sweep: done in {timings['sweep']:.0f} s; {len(planned)} check(s) to run")
        ctx = AuditContext(
            config=cfg,
            dataset=dataset,
            adapter=adapter,
            cache=cache,
            seed=cfg.runtime.seed,
            redact=cfg.report.redact,
        )
        results: dict[str, CheckReport] = {}
        for k, pc in enumerate(planned, 1):
            say(f"check {k}/{len(planned)} {pc.name}: running")
            results[pc.name] = run_one(pc, ctx, writer, console)
            release_freed_memory()  # what the check's passes freed leaves the process
            timings[f"check.{pc.name}"] = results[pc.name].seconds
            say(f"check {k}/{len(planned)} {pc.name}: {results[pc.name].status}"
                f" in {results[pc.name].seconds:.0f} s")  # fmt: skip
        saved = save_samples(cfg, dataset, cache, writer)
        timings["total"] = time.perf_counter() - t0
        worst = "pass"
        for r in results.values():
            if SEVERITY_ORDER.get(r.status, 0) > SEVERITY_ORDER[worst]:
                worst = r.status
        ran_cfg = config_as_run(cfg, planned)
        report = Report(
            tool_version=__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            config=json_safe(ran_cfg.model_dump(mode="json")),
            config_path=str(Path(config_path).resolve()),
            model={
                "source": adapter.source,
                "sha256": model_sha,
                "layers": adapter.layers,
                "detected": adapter.detected,
                "encoder_reuse_notes": reuse_notes,
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
            | cache.workers.record()
            | cache.memory_record()  # after the checks: every sweep they asked for is planned
            | {"memory_budget_chosen": cache.budget_chosen}
            | {"world_size": distributed.world_size()},
            seed=cfg.runtime.seed,
            timings=timings | cache.timings() | {"model_calls": float(cache.model_calls)},
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
        cache.close()
        distributed.barrier()
        header = narrowing_comment(report.checks_requested)
        writer.finish(report, header + config_to_yaml(ran_cfg))
        if lock is not None:
            lock.release(keep=False)  # a finished audit leaves no resume state
        return report
    except BaseException as exc:
        if cache is not None:
            cache.close()
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


def unwrap_worker_error(exc: MmauditError) -> MmauditError:
    """The one-line error inside one re-raised by a DataLoader worker (whose message is the
    worker's whole traceback); ``exc`` itself when it did not come from a worker."""
    text = str(exc)
    if "Original Traceback" not in text:
        return exc
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    last = [line for line in text.splitlines() if line.startswith(prefix)]
    return type(exc)(last[-1].removeprefix(prefix) if last else text.splitlines()[0])
