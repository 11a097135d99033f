#!/usr/bin/env bash
# Shared set-up of demo.sh and test.sh (sourced): a .venv with torch and the package installed.
# - creates .venv when absent (CELLSSL_VENV overrides its path; an already active virtualenv is used as is);
# - installs torch==2.13.0 only when no torch is importable (any other spec pulls multi-GB CUDA wheels;
#   a torch >= 2.3 that the user already has is kept);
# - (re)installs the package with its dev extras when pyproject.toml changed since the last install (with uv when
#   it installs, else pip).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  VENV="${CELLSSL_VENV:-$ROOT/.venv}"
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup: creating $VENV" >&2
    python3 -m venv "$VENV"
  fi
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
fi
python - <<'PY' || { echo "setup: Python >= 3.10 is required" >&2; exit 1; }
import sys
sys.exit(sys.version_info < (3, 10))
PY
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==2.13.0 (CPU build)" >&2
  python -m pip install -q "torch==2.13.0"
fi
STAMP="$VIRTUAL_ENV/.cellssl-setup-stamp"
WANT="$(cat "$ROOT/pyproject.toml" | sha1sum | cut -c1-16):$ROOT:bytecode"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]] || ! python -c "import cellssl" 2>/dev/null; then
  echo "setup: installing cellssl and its dependencies" >&2
  # uv installs the same resolution as pip, several times faster: it downloads, builds and unpacks in parallel
  # (the dev extras, hnswlib's build included, in 43 s on a fresh venv and cold cache, 2-core machine; CI's
  # set-up went from ~6.5 min with pip, its whole run less its tests, to ~1 min). pip stays the fallback; torch is
  # installed by pip above because uv does not read pip's configuration (local wheels, constraints)
  # --compile-bytecode: with PYTHONDONTWRITEBYTECODE set (as on CI's machines) every process would otherwise
  # compile lightning, torchmetrics and the rest from source: `import cellssl.tasks.finetune` took 49-56 s without
  # bytecode and 19-20 s with it on a busy 2-core machine (3 Dec 2026)
  if python -m pip install -q uv 2>/dev/null && python -m uv pip install -q --compile-bytecode -e "$ROOT[dev]"; then
    :
  else
    python -m pip install -q -e "$ROOT[dev]"
  fi
  python -m compileall -q "$ROOT/src" > /dev/null || true  # cellssl's own modules (editable install)
  echo "$WANT" > "$STAMP"
fi
# offline by default: no step may need the network or an API key
export WANDB_MODE="${WANDB_MODE:-offline}" WANDB_SILENT="${WANDB_SILENT:-true}"
cd "$ROOT"
