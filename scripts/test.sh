#!/usr/bin/env bash
# Set up, lint, then run the test suite. Arguments pass through to pytest: bash scripts/test.sh -k store
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check src tests scripts
ruff format --check src tests scripts
# the suite on every core (most tests wait on subprocesses or one thread), a test file per worker so that module
# fixtures (the transfer demo) are built once and the SLURM tests run one after another; CELLSSL_TEST_WORKERS=0
# runs it serially
exec python -m pytest -n "${CELLSSL_TEST_WORKERS:-$(nproc)}" --dist loadfile "$@"
