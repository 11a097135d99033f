#!/usr/bin/env bash
# The GPU measurement of issue 7 in one device call: install the carried wheels offline, build a 2M-cell ×
# 19,331-gene synthetic store, train the paper's MAE and BYOL from it (sparse path, host-dense baseline, compiled),
# and write the results to $OUT. Run here first: `bash scripts/device/fetch_wheels.sh` (makes .wheels/), then with
# the device tool:
#   run(command="bash scripts/device/gpu_bench.sh", carry=[".wheels"], timeout_s=600)
# Extra arguments go to the measurement's bench_train.py (e.g. --workers 4, --repeats 2). Results in $OUT:
# bench_train.json (rewritten after every run) and bench_train.txt (the tables), smoke.*, env.txt (versions, GPU).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-/tmp/cellssl-gpu-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1
started=$SECONDS
[[ -d .wheels ]] || { echo "gpu_bench: no .wheels/ here: run scripts/device/fetch_wheels.sh and carry .wheels" >&2; exit 2; }
"$PY" -m pip install -q --no-index --find-links .wheels hydra-core omegaconf zarr anndata wandb submitit hatchling editables
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e .
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" -c "import torch, lightning, tensorstore, zarr, hydra; print('python', __import__('sys').version.split()[0],
'torch', torch.__version__, 'cuda', torch.version.cuda, 'lightning', lightning.__version__, 'tensorstore',
tensorstore.__version__, 'zarr', zarr.__version__, 'hydra', hydra.__version__)"
  nproc; free -g | head -2
  echo "install: $((SECONDS - started)) s"
} | tee "$OUT/env.txt"
# 1. smoke test of the CUDA path on a small store (fails fast, before the long generation): ~1 min
"$PY" scripts/bench_train.py --cells 20000 --batch-size 2048 --warmup 2 --steps 3 --repeats 1 --loader-batches 3 \
  --processes "$(nproc)" --workdir /tmp/cellssl-smoke --json "$OUT/smoke.json" > "$OUT/smoke.txt" 2>&1 \
  || { tail -50 "$OUT/smoke.txt"; echo "gpu_bench: the smoke run failed (see $OUT/smoke.txt)" >&2; exit 1; }
tail -25 "$OUT/smoke.txt"
# 2. the measurement: 2M cells x 19,331 genes generated with every core, then MAE and BYOL, sparse path /
#    host-dense baseline / compiled, interleaved repeats until the budget (keeps the call under its 10 minutes)
"$PY" scripts/bench_train.py --cells 2000000 --genes 19331 --batch-size 8192 --compile --workers 0 \
  --warmup 8 --steps 40 --dense-steps 10 --repeats 3 --budget "$((480 - SECONDS))" --processes "$(nproc)" \
  --workdir /tmp/cellssl-bench-train --json "$OUT/bench_train.json" "$@" 2>&1 | tee "$OUT/bench_train.txt"
echo "total: $((SECONDS - started)) s" | tee -a "$OUT/env.txt"
