#!/usr/bin/env bash
# Set up .venv-annbatch: a Python >= 3.12 virtualenv with annbatch 0.3.x and its fast local-disk path
# (the zarrs Rust codec pipeline), for scripts/peers/annbatch_runner.py. Idempotent: an existing venv is
# reused and pip only installs what is missing or at another version. Prints the installed versions.
#
#   bash scripts/peers/setup_annbatch.sh
#
# Environment:
#   ANNBATCH_VENV      venv path                      (default: <repo>/.venv-annbatch)
#   PYTHON312          interpreter to create it with  (default: python3.12 on PATH, else pyenv's 3.12.1)
#   ANNBATCH_UNPINNED  =1: install "annbatch[zarrs]>=0.3,<0.4" and let pip pick the rest, instead of the
#                      tested set below (annbatch reaches into zarr/anndata internals, so drift can break it)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ANNBATCH_VENV:-$ROOT/.venv-annbatch}"

# The tested set (2 cores, CPU only). annbatch itself requires Python >= 3.12, anndata >= 0.12.9,
# zarr >= 3.1.4; the [zarrs] extra adds zarrs >= 0.2.1. No torch: the runner takes scipy CSR batches
# (annbatch's `to=None`), and torch's sparse CSR conversion is zero-copy anyway. No cupy: no GPU here.
PINNED=(
  "annbatch[zarrs]==0.3.1"
  "zarrs==0.2.3"
  "zarr==3.4.2"
  "anndata[lazy]==0.13.4"
  "dask==2026.8.0"
  "h5py==3.16.0"
  "numpy==2.5.5"
  "scipy==1.18.1"
  "pandas==3.1.1"
)
UNPINNED=("annbatch[zarrs]>=0.3,<0.4")

is_py312() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }

find_python() {
  if [[ -n "${PYTHON312:-}" ]]; then echo "$PYTHON312"; return; fi
  # a pyenv shim named python3.12 may exist without working, so each candidate is run, not just found
  for cand in python3.12 python3.13 /root/.pyenv/versions/3.12.1/bin/python3.12; do
    if command -v "$cand" >/dev/null 2>&1 && is_py312 "$(command -v "$cand")"; then command -v "$cand"; return; fi
  done
  echo "setup_annbatch: no Python >= 3.12 found; set PYTHON312=/path/to/python3.12" >&2
  exit 1
}

if [[ -x "$VENV/bin/python" ]] && is_py312 "$VENV/bin/python"; then
  echo "setup_annbatch: reusing $VENV" >&2
else
  if [[ -e "$VENV" ]]; then
    echo "setup_annbatch: $VENV exists but has no Python >= 3.12; remove it and re-run" >&2
    exit 1
  fi
  PY="$(find_python)"
  is_py312 "$PY" || { echo "setup_annbatch: $PY is not a working Python >= 3.12 (annbatch needs it)" >&2; exit 1; }
  echo "setup_annbatch: creating $VENV with $PY" >&2
  "$PY" -m venv "$VENV"
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
if [[ "${ANNBATCH_UNPINNED:-0}" == "1" ]]; then
  SPECS=("${UNPINNED[@]}")
else
  SPECS=("${PINNED[@]}")
fi
echo "setup_annbatch: pip install ${SPECS[*]}" >&2
"$VENV/bin/python" -m pip install -q "${SPECS[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

# Smoke test of the fast path: the zarrs pipeline must be importable and selectable.
"$VENV/bin/python" - <<'PY'
import platform
from importlib.metadata import version

import zarr
import zarrs  # noqa: F401

import annbatch  # noqa: F401

zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
pkgs = ["annbatch", "zarrs", "zarr", "anndata", "dask", "h5py", "numpy", "scipy", "pandas"]
print(f"python {platform.python_version()}")
for p in pkgs:
    print(f"{p} {version(p)}")
PY
echo "setup_annbatch: ready; run with $VENV/bin/python scripts/peers/annbatch_runner.py --help" >&2
