"""Cost of a whole audit on a model of realistic size, and a projection to 100k studies.

Model (bring-your-own factory path, ``benchmarks/realistic_models.py``, random init): a timm
ResNet-50 image encoder at 224x224 (one grey channel), the pretrained MiniLM text encoder
(the optional ``minilm`` extra; its rows are skipped with one line when it is absent), a
labs MLP, concat or attention fusion. Data: the sample generator at 224x224, 8-bit PNGs
written to a temporary folder (never committed); every generated study is audited.

Each (fusion, N) runs ``mmaudit run`` (every check, defaults) in a fresh child process that
wraps the normal CLI entry point to book what happens to the running phase (the sweep, each
check): model calls, rows through each encoder backbone (forward hooks of the factory
module; a row under autograd counts three forward-equivalents, its backward costing about
two), and RSS sampled every 50 ms (with glibc's heap at each phase's peak -- in use,
free but kept, mmapped -- in the child's ``stats.json``, to tell live tensors from
fragments). FLOPs per row come from ``torch.utils.flop_counter`` on
one row. Printed per check: wall, model calls, image and text forward-equivalents per study,
peak RSS; then images decoded per second (one core, mmaudit's decoder) against images the
model consumes per second in the sweep; then, from the two largest N (a + b*N per phase:
what grows with N, what is a fixed subset), a projection to 100k studies on one H100
(FLOPs at 40 % of the bf16 dense peak, 989 TFLOP/s for H100 SXM) with the issue's targets:
the whole audit <= 6 forward-equivalents of one inference sweep, and with MiniLM on CPU a
peak RSS <= 3 GB.

    python benchmarks/realistic.py [--sizes 256 1024] [--fusions concat attention]
        [--text minilm|tiny|none] [--device cpu] [--precision fp32] [--quick] [--keep DIR]

Results go to ``benchmarks/results/realistic.md`` (``--out``; ``--quick`` writes nothing
unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import realistic_models  # noqa: E402

H100_BF16_PEAK = 989e12  # FLOP/s, H100 SXM dense bf16 (no sparsity)
UTILISATION = 0.40
TARGET_SWEEPS = 6.0
TARGET_RSS_MIB = 3072.0
PROJECT_N = 100_000
H100_DECODE_WORKERS = 15  # 16 cores, one left to the main process
CHUNK = 1024  # studies per generator process
LABS = ["wbc", "crp", "temp", "spo2", "lactate"]


# --- data and models ---------------------------------------------------------------------


def make_data(folder: Path, n: int, image_size: int) -> Path:
    """Generate ``n`` studies at ``image_size`` px (all in the test split); the manifest.

    Above :data:`CHUNK` studies the generator runs in parallel chunks (own seed, own folder,
    ids and patients prefixed by the chunk), so that N = 16,384 is written in minutes."""
    import pandas as pd

    manifest = folder / "manifest.csv"
    if manifest.is_file():
        return manifest
    k = -(-n // CHUNK)
    if k == 1:
        _generate(folder, max(n, 10), 1, image_size)
        return manifest
    sizes = [n // k + (i < n % k) for i in range(k)]
    jobs = [(folder / f"c{i}", m, 1 + i, image_size) for i, m in enumerate(sizes)]
    with ProcessPoolExecutor(max_workers=min(k, os.cpu_count() or 1)) as pool:
        list(pool.map(_generate, *zip(*jobs, strict=True)))
    parts = []
    for i, (sub, *_rest) in enumerate(jobs):
        df = pd.read_csv(sub / "manifest.csv", keep_default_na=False)
        for col in ("id", "patient_id"):
            df[col] = f"c{i}_" + df[col].astype(str)
        for col in ("image_path", "mask_path"):
            df[col] = f"c{i}/" + df[col].astype(str)
        parts.append(df)
    pd.concat(parts).to_csv(manifest, index=False)
    return manifest


def _generate(folder: Path, n: int, seed: int, image_size: int) -> None:
    from mmaudit.sample.generate import generate_sample

    generate_sample(folder, n=n, seed=seed, test_fraction=1.0, image_size=image_size)


def subset_manifest(manifest: Path, n: int) -> Path:
    """The first ``n`` rows of ``manifest``, as a manifest beside it."""
    import pandas as pd

    out = manifest.with_name(f"manifest_{n}.csv")
    pd.read_csv(manifest, keep_default_na=False).head(n).to_csv(out, index=False)
    return out


def text_setup(kind: str, scratch: Path) -> str | None:
    """The text encoder's folder for ``kind`` (None: no text encoder)."""
    if kind == "minilm":
        folder = realistic_models.minilm_folder()
        return None if folder is None else str(folder)
    if kind == "tiny":
        return str(realistic_models.tiny_bert_folder(scratch / "tiny_bert"))
    return None


def save_weights(kwargs: dict[str, Any], path: Path, keep: bool = False) -> dict[str, float]:
    """Save the factory's state_dict (``keep``: leave weights already at ``path``, so that
    reused audits and new ones read one model); return FLOPs per row of each encoder
    backbone."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = realistic_models.build(**{k: v for k, v in kwargs.items() if not k.startswith("_")})
    if keep and path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        torch.save(model.state_dict(), path)
    flops: dict[str, float] = {}
    size, length = kwargs["_image_size"], kwargs["_max_length"]
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model.image_encoder.backbone(torch.zeros(1, 1, size, size))
        flops["image"] = float(counter.get_total_flops())
        if model.text_encoder is not None:
            counter = FlopCounterMode(display=False)
            ids = torch.ones(1, length, dtype=torch.long)
            with counter:
                model.text_encoder.backbone(input_ids=ids, attention_mask=torch.ones_like(ids))
            flops["text"] = float(counter.get_total_flops())
    return flops


def write_config(
    folder: Path, manifest: Path, weights: Path, kwargs: dict[str, Any], args: argparse.Namespace
) -> Path:
    """An audit config for the factory model on ``manifest`` (every check, defaults)."""
    text_folder = kwargs["text_folder"]
    layers = {"embedding": "fusion", "image": "image_encoder", "tabular": "lab_mlp"}
    data: dict[str, Any] = {
        "manifest": str(manifest),
        "id": "id",
        "patient": "patient_id",
        "target": {"column": "label"},
        "image": {
            "column": "image_path",
            "roi_mask": "mask_path",
            "size": args.image_size,
            "channels": 1,
            "mean": [0.5],
            "std": [0.25],
        },
        "tabular": {"columns": LABS},
        "attributes": {
            "site": {},
            "sex": {},
            "age": {"kind": "continuous", "bins": [40, 60, 75]},
        },
    }
    if text_folder:
        layers["text"] = "text_encoder"
        layers["text_embeddings"] = "text_encoder.backbone.embeddings.word_embeddings"
        data["text"] = {
            "column": "report",
            "tokenizer": text_folder,
            "max_length": args.max_length,
        }
    cfg = {
        "model": {
            "factory": "realistic_models:build",
            "python_path": [str(HERE)],
            "kwargs": {k: v for k, v in kwargs.items() if not k.startswith("_")},
            "weights": str(weights),
            "inputs": {
                m: m for m in ("image", "tabular", *(("text", "text_mask") if text_folder else ()))
            },
            "layers": layers,
        },
        "data": data,
        "checks": check_overrides(args.set),
        "runtime": {
            "device": args.device,
            "precision": args.precision,
            "batch_size": args.batch_size,
            "progress": False,
            **check_overrides(args.set, runtime=True),
        },
    }
    path = folder / "audit.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def check_overrides(pairs: list[str], runtime: bool = False) -> dict[str, Any]:
    """``checks:`` of the config from ``--set CHECK.PARAM=VALUE`` pairs (YAML values); with
    ``runtime``, the ``runtime:`` options the ``runtime.KEY=VALUE`` pairs set instead."""
    checks: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        check, _, param = key.partition(".")
        if not (check and param and value):
            sys.exit(f"--set {pair!r}: expected CHECK.PARAM=VALUE, e.g. saliency.scan_samples=24")
        if check == "runtime":
            options[param] = yaml.safe_load(value)
        else:
            checks.setdefault(check, {"params": {}})["params"][param] = yaml.safe_load(value)
    return options if runtime else checks


#: capped stages: the phase (``check.NAME`` or ``check.NAME/stage``) -> the parameter whose
#: value is the number of rows its fixed part runs on, that parameter's default, and whether
#: the cap bounds all of the phase's rows (else only a part: saliency's map pass caps its IG
#: subset while its CAMs cover every row). A run with ``--set`` on one of them projects the
#: fixed part to the default linearly (the capped cost is rows x a per-row cost); a phase
#: capped whole stops growing at its cap, also where the runs' N were below it.
CAPS: dict[str, tuple[str, int, bool]] = {
    "check.attention": ("attention.max_samples", 2000, True),
    "check.attribution": ("attribution.max_text_samples", 1000, True),
    "check.probing": ("probing.random_max_rows", 1000, True),
    "check.saliency/compute_maps": ("saliency.subset_samples", 48, False),
    "check.saliency/sanity_check": ("saliency.sanity_samples", 32, True),
    "check.saliency/occlusion_test": ("saliency.hotspot_samples", 1000, True),
    "check.saliency/scan_offroi": ("saliency.scan_samples", 200, True),
    "check.saliency/faithfulness": ("saliency.faithfulness_samples", 24, True),
}
#: saliency's stages booked as phases of their own (``check.saliency/<stage>``)
SALIENCY_STAGES = [k.split("/", 1)[1] for k in CAPS if k.startswith("check.saliency/")]


def cap_scale(phase: str, overrides: list[str]) -> tuple[float, str]:
    """(default / run value of ``phase``'s cap, a few words) -- (1, "") when not capped, and
    (1, "... uncapped") when the run set the cap to none."""
    if phase not in CAPS:
        return 1.0, ""
    key, default, _whole = CAPS[phase]
    value = run_cap(phase, overrides)
    name = key.split(".", 1)[1]
    if value is None:
        return 1.0, f"{name} none (uncapped)"
    if value != default:
        return default / value, f"{name} {value:g} -> {default}"
    return 1.0, f"{name} {default}"


def run_cap(phase: str, overrides: list[str]) -> float | None:
    """The cap ``phase`` ran with: its ``--set`` value, else the default (None: uncapped, or
    not a capped phase)."""
    if phase not in CAPS:
        return None
    key, default, _whole = CAPS[phase]
    for pair in overrides:
        k, _, v = pair.partition("=")
        if k == key:
            value = yaml.safe_load(v)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            return float(value) if ok else None
    return float(default)


def projected_rows(phase: str, a: float, b: float, n: int, overrides: list[str]) -> float:
    """A phase's rows at ``n`` studies from its fit ``a + b * N``: a phase capped whole stops
    growing at the cap it ran with, and its rows are scaled to the default cap; the fixed
    part of a phase capped in part is scaled alone."""
    scale, _ = cap_scale(phase, overrides)
    cap = run_cap(phase, overrides)
    if phase in CAPS and CAPS[phase][2] and cap is not None:
        return (a + b * min(n, cap)) * scale
    return a * scale + b * n


# --- the child: the normal CLI, with phases booked ------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


@functools.cache
def _mallinfo2() -> Any:
    """glibc's ``mallinfo2``, or None (looked up once: ``find_library`` runs ``ldconfig``)."""
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


def malloc_breakdown_mib() -> dict[str, float]:
    """glibc's heap now (``mallinfo2``), in MiB: ``in_use`` (allocated from the arenas),
    ``free_in_arenas`` (freed but kept: resident unless trimmed), ``mmapped`` (large blocks,
    returned on free); empty where the C library has no ``mallinfo2``."""
    fn = _mallinfo2()
    if fn is None:
        return {}
    m = fn()
    mib = 1024.0 * 1024.0
    return {
        "in_use": m.uordblks / mib,
        "free_in_arenas": m.fordblks / mib,
        "mmapped": m.hblkhd / mib,
    }


def child(stats_path: Path, argv: list[str]) -> None:
    """Run ``mmaudit`` in this process with the running phase booked: model calls and peak
    RSS per phase (a 50 ms /proc sampler), encoder rows via the factory's hooks."""
    import resource

    from mmaudit import cli
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.runner import audit

    peaks: dict[str, float] = {}
    calls: dict[str, float] = {}
    seconds: dict[str, float] = {}  # saliency's stages (the checks' are in report.json)
    stop = threading.Event()

    def rss_mib() -> float:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        return 0.0

    at_peak: dict[str, dict[str, float]] = {}  # phase -> glibc's heap at its RSS peak

    def sample() -> None:
        while not stop.is_set():
            phase, now = realistic_models.PHASE, rss_mib()
            if now > peaks.get(phase, 0.0):
                peaks[phase] = now
                at_peak[phase] = {"rss": now, **malloc_breakdown_mib()}
            stop.wait(0.05)

    original_run_one, original_sweep = audit.run_one, InferenceCache.sweep

    def run_one(pc: Any, ctx: Any, *rest: Any, **kw: Any) -> Any:
        realistic_models.PHASE = f"check.{pc.name}"
        before = ctx.cache.model_calls
        try:
            return original_run_one(pc, ctx, *rest, **kw)
        finally:
            calls[realistic_models.PHASE] = float(ctx.cache.model_calls - before)
            print(f"[bench] {realistic_models.PHASE} done: {dict(realistic_models.COUNTS)}",
                  f"peak {peaks} heap at peak {at_peak}", file=sys.stderr, flush=True)  # fmt: skip
            realistic_models.PHASE = "after"

    def sweep(self: Any) -> Any:
        if realistic_models.PHASE != "load":  # a check reading the memoised sweep
            return original_sweep(self)
        realistic_models.PHASE = "sweep"
        before = self.model_calls
        try:
            return original_sweep(self)
        finally:
            calls["sweep"] = float(self.model_calls - before)
            realistic_models.PHASE = "checks"

    import mmaudit.checks.saliency.check as saliency_check

    def stage(name: str, fn: Any) -> Any:
        def booked(*a: Any, **kw: Any) -> Any:
            realistic_models.PHASE = f"check.saliency/{name}"
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                seconds[realistic_models.PHASE] = time.perf_counter() - start
                realistic_models.PHASE = "check.saliency"

        return booked

    for name in SALIENCY_STAGES:
        setattr(saliency_check, name, stage(name, getattr(saliency_check, name)))
    audit.run_one = run_one  # type: ignore[assignment]
    InferenceCache.sweep = sweep  # type: ignore[method-assign]
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    code: Any = 0
    try:
        cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    finally:
        stop.set()
        thread.join()
        stats = {
            "rc": code if isinstance(code, int) else 1,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "phase_peak_rss_mib": peaks,
            "phase_peak_heap_mib": at_peak,
            "phase_model_calls": calls,
            "phase_seconds": seconds,
        }
        stats_path.write_text(json.dumps(stats, indent=1))
    sys.exit(code)


def run_child(
    cfg: Path, out: Path, work: Path, checks: str | None
) -> tuple[dict[str, Any], dict[str, Any], float]:
    """One audit in a fresh process: (its stats, encoder counts, wall seconds)."""
    stats, counts = work / "stats.json", work / "counts.json"
    env = os.environ | {"MMAUDIT_BENCH_COUNTS": str(counts)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(stats), "--", "run"]
    cmd += [str(cfg), "-o", str(out), "--fail-on", "never", "--no-progress"]
    cmd += ["--checks", checks] if checks else []
    start = time.perf_counter()
    with open(work / "child.log", "w") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1) or not (out / "report.json").is_file():
        sys.exit(f"audit failed ({proc.returncode}): {' '.join(cmd)}; see {work / 'child.log'}")
    (work / "wall.json").write_text(json.dumps({"wall": wall}))
    return json.loads(stats.read_text()), json.loads(counts.read_text()), wall


def reused_run(work: Path) -> tuple[dict[str, Any], dict[str, Any], float] | None:
    """A finished audit kept in ``work`` by an earlier ``--keep`` run (``--reuse``): its stats,
    counts and wall seconds; None when any of them is missing."""
    files = [work / "stats.json", work / "counts.json", work / "wall.json"]
    if not all(f.is_file() for f in files) or not (work / "report" / "report.json").is_file():
        return None
    stats, counts, wall = (json.loads(f.read_text()) for f in files)
    return stats, counts, float(wall["wall"])


# --- analysis ------------------------------------------------------------------------------


def decode_rate(folder: Path, image_size: int, n: int = 64) -> float:
    """Images per second that one core decodes into model tensors (mmaudit's own path)."""
    import torch

    from mmaudit.engine.images import image_to_tensor, load_image_file

    paths = sorted(folder.glob("**/images/*.png"))[:n]
    torch.set_num_threads(1)
    start = time.perf_counter()
    for p in paths:
        image_to_tensor(load_image_file(p), image_size, 1)
    return len(paths) / (time.perf_counter() - start)


def phase_rows(counts: dict[str, Any], report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per phase: seconds, model calls, encoder forward-equivalents (rows) and RSS."""
    timings = report.get("timings", {})
    phases = ["load", "sweep"]
    for k in timings:
        if k.startswith("check."):
            phases += [k, *sorted(s for s in counts["counts"] if s.startswith(k + "/"))]
    rows = []
    for ph in phases:
        enc = counts["counts"].get(ph, {})
        stats = counts["stats"]
        peaks = stats["phase_peak_rss_mib"]
        # forwards of the whole model, counted by a hook (gradient passes included); runs
        # kept from before the hook existed have the cache's no-gradient sweeps only
        calls = enc.get("model", {}).get("calls")
        row = {
            "phase": ph,
            "seconds": timings.get(ph, timings.get("load_model", 0.0) if ph == "load" else 0.0),
            "model_calls": calls if calls is not None else stats["phase_model_calls"].get(ph, 0.0),
            # a check's peak includes its stages' (booked as phases of their own)
            "peak_rss_mib": max(
                [v for k, v in peaks.items() if k == ph or k.startswith(ph + "/")],
                default=float("nan"),
            ),
        }
        if "/" in ph:
            row["seconds"] = stats.get("phase_seconds", {}).get(ph, 0.0)
            row["model_calls"] = calls if calls is not None else float("nan")
        for name in ("image", "text"):
            e = enc.get(name, {"rows": 0.0, "grad_rows": 0.0})
            row[f"{name}_fe"] = e["rows"] + 2.0 * e["grad_rows"]
        if ph.startswith("check.") and "/" not in ph:
            check = report.get("checks", {}).get(ph[6:], {})
            row["status"] = check.get("status", "?")
        rows.append(row)
    return rows


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """``value = a + b * N`` through the two largest N (one N: all of it grows with N)."""
    if len(points) == 1:
        n, v = points[0]
        return 0.0, v / n
    (n1, v1), (n2, v2) = sorted(points)[-2:]
    b = (v2 - v1) / (n2 - n1)
    a = v1 - b * n1
    if b < 0:
        return v2, 0.0
    if a < 0:
        return 0.0, v2 / n2
    return a, b


def memory_line(report: dict[str, Any]) -> str:
    """What the memory budget chose in one audit, from its report.json: the budget, the base
    sweep's rows per forward, and each check's ``memory:`` note (rows per pass)."""
    timings = report.get("timings", {})
    parts = []
    if "memory_budget_mb" in timings:
        parts.append(f"runtime.memory_budget_mb = {timings['memory_budget_mb']:g}")
    if "sweep.rows_per_forward" in timings:
        parts.append(f"base sweep {timings['sweep.rows_per_forward']:g} rows per forward")
    for name, check in report.get("checks", {}).items():
        for note in check.get("notes", []):
            if note.startswith("memory"):
                parts.append(f"{name}: {note.split(': ', 1)[-1]}")
    return "; ".join(parts) or "no memory plan recorded"


def fmt(x: float, nd: int = 2) -> str:
    return f"{x:,.{nd}f}"


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join([*lines, *["| " + " | ".join(r) + " |" for r in rows]])


def analyse(
    variant: str, runs: list[dict[str, Any]], flops: dict[str, float], overrides: list[str]
) -> str:
    """Per-check tables for each N (a check's row holds its stages' rows too; the stages
    follow it, indented), the growth classes and the 100k projection at the default caps
    (``overrides``: the run's ``--set`` pairs), as Markdown."""
    out: list[str] = []
    sweep_flops = flops["image"] + flops.get("text", 0.0)
    for run in runs:
        n, rows = run["n"], run["rows"]
        body = []
        for r in rows:
            own = [x for x in rows if x["phase"] == r["phase"] or
                   x["phase"].startswith(r["phase"] + "/")]  # fmt: skip
            image_fe, text_fe = (sum(x[f"{k}_fe"] for x in own) for k in ("image", "text"))
            calls = sum(x["model_calls"] for x in own if x["model_calls"] == x["model_calls"])
            stage = "/" in r["phase"]
            body.append(
                [
                    f"&nbsp;&nbsp;· {r['phase'].split('/', 1)[1]}" if stage else r["phase"],
                    r.get("status", ""),
                    fmt(r["seconds"], 1),
                    "-" if r["model_calls"] != r["model_calls"] else fmt(calls, 0),
                    fmt(image_fe / n),
                    fmt(text_fe / n) if "text" in flops else "-",
                    fmt(r["peak_rss_mib"], 0),
                ]
            )
        total_fe = sum(r["image_fe"] * flops["image"] + r["text_fe"] * flops.get("text", 0.0)
                       for r in rows)  # fmt: skip
        out.append(f"### {variant}, N = {n}\n")
        all_calls = sum(r["model_calls"] for r in rows if r["model_calls"] == r["model_calls"])
        out.append(
            f"wall {fmt(run['wall'], 1)} s, model calls {fmt(all_calls, 0)},"
            f" peak RSS {fmt(run['peak_rss_mib'], 0)} MiB, whole audit ="
            f" {fmt(total_fe / (n * sweep_flops))} inference sweeps (FLOPs)\n"
        )
        head = ["phase", "status", "wall s", "model calls", "image fe/study", "text fe/study",
                "peak RSS MiB"]  # fmt: skip
        out.append(table(head, body) + "\n")
        if run.get("memory"):
            out.append(f"memory: {run['memory']}\n")
        out.append(
            f"loading: one core decodes {fmt(run['decode_per_s'], 0)} images/s; the sweep"
            f" consumed {fmt(run['sweep_images_per_s'], 1)} images/s ({run['bottleneck']})\n"
        )
    # projection
    phases = [r["phase"] for r in runs[-1]["rows"]]
    proj_rows, total_flops, grows_note = [], 0.0, []
    for ph in phases:
        f_ph = 0.0
        kinds = []
        scale, cap = cap_scale(ph, overrides)
        for name in ("image", "text"):
            if name not in flops:
                continue
            pts = [
                (run["n"], next(r[f"{name}_fe"] for r in run["rows"] if r["phase"] == ph))
                for run in runs
                if any(r["phase"] == ph for r in run["rows"])
            ]
            a, b = (max(pts)[1], 0.0) if ph == "load" else fit(pts)
            rows_100k = projected_rows(ph, a, b, PROJECT_N, overrides)
            f_ph += rows_100k * flops[name]
            nmax, vmax = max(pts)
            grows = b * nmax > 0.5 * vmax
            capped = ph in CAPS and CAPS[ph][2] and run_cap(ph, overrides) is not None
            kind = "fixed subset" if not grows else "capped subset" if capped else "grows with N"
            kinds.append(
                f"{name}: {kind} ({fmt(a * scale, 0)} + {fmt(b, 3)}·N rows"
                + (f", {fmt(rows_100k, 0)} at the cap)" if grows and capped else ")")
            )
        total_flops += f_ph
        sweeps = f_ph / (PROJECT_N * sweep_flops)
        proj_rows.append([ph, cap or "-", fmt(sweeps, 3),
                          fmt(f_ph / (UTILISATION * H100_BF16_PEAK), 1),
                          "; ".join(kinds)])  # fmt: skip
        grows_note.append((sweeps, ph))
    ratio = total_flops / (PROJECT_N * sweep_flops)
    decode = runs[-1]["decode_per_s"] * H100_DECODE_WORKERS
    img_rows = float(PROJECT_N)  # each study's image decoded once, in the sweep
    gpu_s = total_flops / (UTILISATION * H100_BF16_PEAK)
    out.append(f"### {variant}: projection to {PROJECT_N:,} studies on one H100\n")
    out.append(
        f"FLOPs per row: image {flops['image'] / 1e9:.2f} GFLOP"
        + (f", text {flops['text'] / 1e9:.2f} GFLOP" if "text" in flops else "")
        + f"; at {UTILISATION:.0%} of {H100_BF16_PEAK / 1e12:.0f} TFLOP/s (bf16 dense).\n"
    )
    out.append(
        "A phase's own rows (a check's stages are rows of their own). The fixed part of a"
        " capped phase run with a smaller cap (`--set`) is scaled to the default cap: its"
        " cost is rows x a per-row cost.\n"
    )
    out.append(
        table(["phase", "cap (run -> default)", "sweeps (FLOPs)", "H100 s", "growth"], proj_rows)
        + "\n"
    )
    over = ", ".join(f"{ph} {fmt(s)}" for s, ph in sorted(grows_note, reverse=True) if s > 1.0)
    verdict = "PASS" if ratio <= TARGET_SWEEPS else "MISS"
    out.append(
        f"whole audit at {PROJECT_N:,}: {fmt(ratio)} inference sweeps -> {verdict}"
        f" (target <= {TARGET_SWEEPS:g}); phases above one sweep: {over or 'none'}.\n"
        f"GPU compute {fmt(gpu_s, 0)} s; decoding every study's image once (the sweep)"
        f" at {fmt(decode, 0)} images/s ({H100_DECODE_WORKERS} workers at this machine's"
        f" per-core rate) {fmt(img_rows / decode, 0)} s: "
        f"{'loading' if img_rows / decode > gpu_s else 'the model'} bounds the wall time"
        f" (about {fmt(max(img_rows / decode, gpu_s) / 60, 1)} min if the two overlap).\n"
    )
    return "\n".join(out)


# --- main ----------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), sys.argv[sys.argv.index("--") + 1 :])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--quick", action="store_true", help="N = 32, a smoke test")
    parser.add_argument("--fusions", nargs="+", default=["concat", "attention"])
    parser.add_argument("--text", default="minilm", choices=["minilm", "tiny", "none"])
    parser.add_argument("--backbone", default="resnet50", help="timm image encoder")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--max-length", type=int, default=64, help="report tokens")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--checks", default=None, help="comma-separated (default: every check)")
    parser.add_argument("--keep", type=Path, default=None, help="keep data and reports here")
    parser.add_argument("--out", type=Path, default=None, help="results Markdown file")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --keep: reuse the audits a killed or earlier run finished there (and its"
        " weights) instead of running them again",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="CHECK.PARAM=VALUE",
        help="check parameters for the audit (e.g. smaller caps on a slow CPU; a capped"
        " stage's fixed cost is projected to its default cap), or runtime.KEY=VALUE (e.g."
        " runtime.memory_budget_mb=1024)",
    )
    args = parser.parse_args()
    sizes = [32] if args.quick else sorted(args.sizes)
    out_md = args.out or (None if args.quick else HERE / "results" / "realistic.md")
    base = args.keep or Path(tempfile.mkdtemp(prefix="mmaudit-realistic-"))
    base.mkdir(parents=True, exist_ok=True)

    text_folder = text_setup(args.text, base)
    if args.text == "minilm" and text_folder is None:
        print("MiniLM rows skipped: the minilm extra is not installed"
              " (pip install 'mmaudit[minilm]'); running image + labs only")  # fmt: skip
    text_name = args.text if text_folder else "none"
    t = time.perf_counter()
    manifest = make_data(base / "data", max(sizes), args.image_size)
    print(f"data: {max(sizes)} studies at {args.image_size}px in {time.perf_counter() - t:.0f} s",
          flush=True)  # fmt: skip
    decode = decode_rate(base / "data", args.image_size)

    sections, raw = [], {}
    for fusion in args.fusions:
        variant = f"{args.backbone} + {text_name} text + labs, {fusion} fusion"
        kwargs = {
            "backbone": args.backbone,
            "text_folder": text_folder,
            "fusion": fusion,
            "_image_size": args.image_size,
            "_max_length": args.max_length,
        }
        weights = base / f"{fusion}.pt"
        flops = save_weights(kwargs, weights, keep=args.reuse)
        runs = []
        for n in sizes:
            work = base / f"{fusion}_{n}"
            kept = reused_run(work) if args.reuse else None
            if kept is not None:
                stats, counts, wall = kept
                print(f"{variant}, N={n}: reused the audit kept in {work}", flush=True)
            else:
                if work.exists():
                    shutil.rmtree(work)
                work.mkdir()
                cfg = write_config(work, subset_manifest(manifest, n), weights, kwargs, args)
                stats, counts, wall = run_child(cfg, work / "report", work, args.checks)
            report = json.loads((work / "report" / "report.json").read_text())
            rows = phase_rows({"counts": counts, "stats": stats}, report)
            timings = report.get("timings", {})
            sweep_s = timings.get("sweep", float("nan"))
            sweep_rate = n / sweep_s if sweep_s else float("nan")
            if "data_wait_s" in timings and "model_s" in timings:
                bottleneck = (
                    f"data wait {fmt(timings['data_wait_s'], 1)} s vs model"
                    f" {fmt(timings['model_s'], 1)} s: "
                    + ("loading" if timings["data_wait_s"] > timings["model_s"] else "the model")
                    + " is the bottleneck"
                )
            else:
                bottleneck = (
                    "loading" if decode < sweep_rate else "the model"
                ) + " is the bottleneck on one core"
            run = {
                "n": n,
                "wall": wall,
                "model_calls": timings.get("model_calls", 0.0),
                "peak_rss_mib": stats["peak_rss_mib"],
                "rows": rows,
                "decode_per_s": decode,
                "sweep_images_per_s": sweep_rate,
                "bottleneck": bottleneck,
                "memory": memory_line(report),
                "statuses": {k: v.get("status") for k, v in report.get("checks", {}).items()},
            }
            runs.append(run)
            rss_note = ""
            if text_name == "minilm" and args.device == "cpu":
                ok = stats["peak_rss_mib"] <= TARGET_RSS_MIB
                rss_note = f" ({'PASS' if ok else 'MISS'} <= {TARGET_RSS_MIB:.0f} MiB)"
            print(f"{variant}, N={n}: {wall:.0f} s, peak RSS {stats['peak_rss_mib']:.0f} MiB"
                  f"{rss_note}", flush=True)  # fmt: skip
        section = analyse(variant, runs, flops, args.set)
        print(section, flush=True)
        sections.append(section)
        raw[variant] = {"flops_per_row": flops, "runs": runs}

    command = "python benchmarks/realistic.py " + " ".join(sys.argv[1:])
    machine = machine_line(args.device)
    if out_md is not None:
        out_md.parent.mkdir(parents=True, exist_ok=True)
        out_md.write_text(
            "# Realistic-size audit benchmark\n\n"
            "Written by `benchmarks/realistic.py` (see its docstring for what is measured).\n\n"
            f"Command: `{command}`\n\nMachine: {machine}\n\n"
            "fe = forward-equivalents of the encoder backbone per study (a row under autograd"
            " counts 3); sweeps = FLOPs of the phase over those of one inference sweep.\n\n"
            + "\n\n".join(sections)
        )
        print(f"wrote {out_md}")
    if args.json:
        args.json.write_text(json.dumps({"command": command, "machine": machine, **raw}))
    if args.keep is None:
        shutil.rmtree(base, ignore_errors=True)


def machine_line(device: str) -> str:
    """The machine in one line: CPU, cores, memory, torch, and the GPU when used."""
    import torch

    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            mem = f", {int(fh.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except OSError:
        pass
    gpu = ""
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = f", GPU {torch.cuda.get_device_name(0)}"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores{mem},"
        f" torch {torch.__version__}, device {device}{gpu}"
    )


if __name__ == "__main__":
    main()
