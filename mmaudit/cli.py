"""The ``mmaudit`` command line: run, validate, checks, env.

One error boundary (``main``): an ``MmauditError`` becomes one line on stderr and
exit code 2 (traceback only with ``--debug``); a failed gate is exit code 1.
Heavy libraries are imported inside commands so ``mmaudit --help`` stays fast.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Audit a trained multimodal medical checkpoint: shortcuts, modality use, encoded"
    " attributes.",
    pretty_exceptions_enable=False,
)


class FailOn(StrEnum):
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
        None, "--checks", help="comma-separated checks to run (default: config)"
    ),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N"),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1),
    max_samples: int | None = typer.Option(None, "--max-samples", min=1),
    fail_on: FailOn = typer.Option(
        FailOn.fail, "--fail-on", help="exit 1 when the audit reaches this status"
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bars"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Audit one checkpoint and write a report folder."""
    from mmaudit.runner import Overrides, run_audit

    console = _console()
    overrides = Overrides(
        checks=[c.strip() for c in checks.split(",") if c.strip()] if checks else None,
        device=device,
        batch_size=batch_size,
        max_samples=max_samples,
        progress=False if no_progress or not sys.stderr.isatty() else None,
    )
    report = run_audit(config, out, overrides, console=_console(stderr=True))
    print_summary(console, report)
    console.print(f"report written to [bold]{out.resolve()}[/bold] (open {out / 'index.html'})")
    if gate_failed(report.status, fail_on.value):
        console.print(
            f"[red]audit status '{report.status}' fails the gate --fail-on {fail_on.value}[/red]"
        )
        raise typer.Exit(1)


def gate_failed(status: str, fail_on: str) -> bool:
    """Whether an audit status fails ``--fail-on`` (an errored check fails a 'fail' gate too)."""
    if fail_on == "never":
        return False
    if fail_on == "warn":
        return status in ("warn", "fail", "error")
    return status in ("fail", "error")


def print_summary(console, report) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    from mmaudit.render import key_metrics

    table = Table(title=f"mmaudit: {report.status}")
    for col in ("check", "status", "key metrics / reason", "s"):
        table.add_column(col)
    colours = {
        "pass": "green",
        "warn": "yellow",
        "fail": "red",
        "error": "magenta",
        "skipped": "dim",
    }
    for c in report.checks.values():
        colour = colours.get(c.status, "white")
        table.add_row(
            c.name,
            f"[{colour}]{c.status}[/{colour}]",
            key_metrics(c.metrics) or (c.reason or ""),
            f"{c.seconds:.1f}",
        )
    console.print(table)
    for c in report.checks.values():
        for f in c.findings:
            if f.severity in ("warn", "fail", "error"):
                colour = colours.get(f.severity, "white")
                console.print(
                    f"  [{colour}]{f.severity}[/{colour}] {c.name}: {f.message}", markup=True
                )


@app.command()
def validate(
    config: Path = typer.Argument(..., help="audit config YAML"),
    device: str | None = typer.Option(None, "--device"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Check config and data before a long run: every row, the tokenizer, the model on one batch."""
    from rich.table import Table

    from mmaudit.config import load_config
    from mmaudit.data import build_dataset
    from mmaudit.errors import MmauditError
    from mmaudit.model import load_model
    from mmaudit.runner import Overrides, apply_overrides, plan_checks

    console = _console()
    cfg = apply_overrides(load_config(config), Overrides(device=device))
    planned = plan_checks(cfg)
    dataset = build_dataset(cfg)
    problems = dataset.validate_all()
    try:
        adapter = load_model(cfg.model, dataset.modalities, cfg.runtime)
        batch = next(iter(dataset.batches(min(4, len(dataset))))).to(adapter.device)
        import torch

        with torch.inference_mode():
            logits = adapter.logits(batch)
        expected = len(dataset.class_names) if cfg.data.target.kind != "binary" else None
        if expected is not None and logits.shape[1] != expected:
            problems.append(
                f"model returns {logits.shape[1]} outputs but the target has {expected} classes"
            )
    except MmauditError as exc:
        problems.append(exc.one_line())
    except Exception as exc:
        problems.append(f"the model failed on one batch: {type(exc).__name__}: {exc}")
    if problems:
        table = Table(title=f"{len(problems)} problem(s) in {config}")
        table.add_column("problem")
        for p in problems[:50]:
            table.add_row(p)
        console.print(table)
        raise typer.Exit(2)
    console.print(
        f"[green]ok[/green]: {len(dataset)} rows, modalities {list(dataset.modalities)},"
        f" checks {[p.name for p in planned]}, model {adapter.source}"
    )


@app.command("checks")
def list_checks() -> None:
    """List the checks with their parameters and default thresholds."""
    from rich.table import Table

    from mmaudit.check import load_builtin_checks

    table = Table(title="mmaudit checks")
    for col in ("check", "what", "params (default)", "thresholds"):
        table.add_column(col, overflow="fold")
    for name, cls in sorted(load_builtin_checks().items()):
        params = ", ".join(f"{k}={f.default!r}" for k, f in cls.Params.model_fields.items())
        rules = "; ".join(
            f"{k}: "
            + ", ".join(
                f"{a}={b}" for a, b in r.model_dump(exclude_none=True, exclude={"message"}).items()
            )
            for k, r in cls.default_thresholds.items()
        )
        table.add_row(name, cls.description, params, rules)
    _console().print(table)


@app.command()
def env() -> None:
    """Versions and devices, for bug reports."""
    import platform

    import torch

    from mmaudit import __version__

    console = _console()
    console.print(f"mmaudit {__version__}")
    console.print(f"python {platform.python_version()} on {platform.platform()}")
    console.print(f"torch {torch.__version__}; CUDA available: {torch.cuda.is_available()}")
    for i in range(torch.cuda.device_count()):
        console.print(f"  cuda:{i} {torch.cuda.get_device_name(i)}")
    for pkg in ("timm", "transformers", "captum", "shap", "sklearn", "numpy", "pandas", "pydicom"):
        try:
            mod = __import__(pkg)
            console.print(f"{pkg} {getattr(mod, '__version__', '?')}")
        except ImportError:
            console.print(f"{pkg} not installed")


def main(argv: list[str] | None = None) -> None:
    """Entry point with the one error boundary."""
    from mmaudit.errors import MmauditError

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        rc = app(args=args, prog_name="mmaudit", standalone_mode=False)
    except MmauditError as exc:
        if debug:
            raise
        print(f"error: {exc.one_line()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted; no report was written", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)
