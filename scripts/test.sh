#!/usr/bin/env bash
# Set up, lint, then run the test suite. Arguments pass through to pytest: bash scripts/test.sh -k store
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check src tests scripts
ruff format --check src tests scripts
# the suite on every core (most tests wait on subprocesses or one thread), a test file per worker so that module
# fixtures (the transfer demo) are built once and the SLURM tests run one after another; CELLSSL_TEST_WORKERS=0
# runs it serially. With several workers each torch process uses one thread (OMP_NUM_THREADS=1, unless set):
# two workers each running torch on every core oversubscribe the CPU, and a 2-core machine then runs 2-7x slower
WORKERS="${CELLSSL_TEST_WORKERS:-$(nproc)}"
if [[ "$WORKERS" != 0 && "$WORKERS" != 1 ]]; then
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
fi
exec python -m pytest -n "$WORKERS" --dist loadfile "$@"
