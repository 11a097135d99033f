#!/usr/bin/env bash
# Set up, lint, then run the test suite. Arguments pass through to pytest: bash scripts/test.sh -k store
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check src tests scripts
ruff format --check src tests scripts
exec python -m pytest "$@"
