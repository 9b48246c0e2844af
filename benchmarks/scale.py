"""Cost curves: wall time and peak RSS of `mmaudit run` at N = 1k, 4k, 16k synthetic studies.

Generates the studies with the sample generator (into a temporary folder, never committed),
audits each with the bundled `shortcut` checkpoint through the normal CLI in a fresh process,
and prints time(4N)/time(N) and RSS(4N)/RSS(N), plus 1 vs 2 processes (torchrun, gloo) at the
smallest N. Targets: time ratio <= 4.4 per 4x N, RSS ratio <= 1.3.

    python benchmarks/scale.py [--sizes 1000 4000 16000] [--checks performance] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def make_data(folder: Path, n: int) -> Path:
    from mmaudit.sample.generate import generate_sample

    generate_sample(folder, n=n, seed=1)
    shutil.copytree(ROOT / "sample_data" / "tokenizer", folder / "tokenizer", dirs_exist_ok=True)
    cfg = yaml.safe_load((ROOT / "configs" / "sample.yaml").read_text())
    cfg["model"]["checkpoint"] = str(ROOT / "sample_data" / "checkpoints" / "shortcut")
    cfg["data"]["manifest"] = str(folder / "manifest.csv")
    cfg["data"]["text"]["tokenizer"] = str(folder / "tokenizer")
    cfg["data"].pop("split", None)  # audit every generated study
    cfg["runtime"].update({"device": "cpu", "progress": False})
    path = folder / "audit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


PEAK = (
    "import resource, subprocess, sys;"
    "rc = subprocess.run(sys.argv[1:], capture_output=True).returncode;"
    "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB, largest process) of a command, measured in a fresh
    wrapper process so that earlier runs do not count."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK, *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    rc, peak_kib = proc.stdout.split()[-2:]
    if rc not in ("0", "1"):
        sys.exit(f"failed ({rc}): {' '.join(cmd)}")
    return seconds, int(peak_kib) / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--checks", default=None, help="comma-separated checks (default: all)")
    parser.add_argument("--keep", type=Path, default=None, help="keep data and reports here")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="mmaudit-scale-"))
    rows = []
    extra = ["--checks", args.checks] if args.checks else []
    for n in args.sizes:
        cfg = make_data(base / f"n{n}", n)
        seconds, rss = run(
            [str(BIN / "mmaudit"), "run", str(cfg), "-o", str(base / f"report{n}"),
             "--fail-on", "never", "--no-progress", *extra]
        )  # fmt: skip
        rows.append({"n": n, "seconds": seconds, "peak_rss_mib": rss})
        print(f"N={n:>6}: {seconds:7.1f} s, peak RSS {rss:7.0f} MiB", flush=True)
    for a, b in zip(rows, rows[1:], strict=False):
        print(
            f"N {a['n']} -> {b['n']}: time x{b['seconds'] / a['seconds']:.2f},"
            f" RSS x{b['peak_rss_mib'] / a['peak_rss_mib']:.2f}"
        )
    n0 = args.sizes[0]
    cfg = base / f"n{n0}" / "audit.yaml"
    two, _ = run(
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "mmaudit", "run",
         str(cfg), "-o", str(base / "report_2proc"), "--fail-on", "never", "--no-progress", *extra]
    )  # fmt: skip
    print(f"N={n0}: 1 process {rows[0]['seconds']:.1f} s, 2 processes {two:.1f} s"
          f" (x{rows[0]['seconds'] / two:.2f})")  # fmt: skip
    (base / "scale.json").write_text(json.dumps({"rows": rows, "two_processes_s": two}, indent=2))
    if args.keep is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
