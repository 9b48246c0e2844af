#!/usr/bin/env bash
# One command on one GPU (about 8 minutes on an H100): prints the device, then runs
#   - benchmarks/realistic.py at N = 16,384 (ResNet-50 at 224x224 + MiniLM + labs, concat
#     fusion, every check, bf16 on cuda),
#   - benchmarks/saliency_speed.py and benchmarks/attribution_speed.py on cuda.
# Everything is written under $OUT when it is set, else ./gpu_results.
#
#     bash benchmarks/gpu.sh
#
# Each step has its own time limit, so that one slow step cannot take the others' time; a
# step that runs out says so and the script goes on. No CUDA device: one line, exit 2.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
DEST="${OUT:-./gpu_results}"


if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu.sh: no CUDA device visible to torch ($PY); run this on a machine with a GPU" >&2
    exit 2
fi

mkdir -p "$DEST"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $DEST/NAME.log
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$DEST/$name.log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 124 ]; then
        echo "== $name: stopped after ${limit}s (time limit)" | tee -a "$DEST/$name.log"
    elif [ "$rc" -ne 0 ]; then
        echo "== $name: exit $rc" | tee -a "$DEST/$name.log"
    fi
    echo "== $name: $((SECONDS - start)) s"
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    "$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, bf16 {torch.cuda.is_bf16_supported()}')"
    nproc
} 2>&1 | tee "$DEST/device.txt"

step realistic 330 "$PY" benchmarks/realistic.py --sizes 16384 --fusions concat \
    --device cuda --precision bf16 --batch-size 256 --keep "$DEST/realistic_work" \
    --out "$DEST/realistic.md" --json "$DEST/realistic.json"
rm -rf "$DEST/realistic_work"  # 16k PNGs and reports: too big to bring back
step saliency_speed 60 "$PY" benchmarks/saliency_speed.py --device cuda --precision bf16 --repeats 5
step attribution_speed 60 "$PY" benchmarks/attribution_speed.py --device cuda \
    --json "$DEST/attribution_speed.json"
echo "results in $DEST"
