#!/usr/bin/env bash
# Download, here (with network), the wheels the offline GPU machine lacks for scripts/device/gpu_bench.sh.
# Its python3 (3.12) already holds torch, lightning, tensorstore, numpy, scipy, pandas, scikit-learn, h5py,
# torchmetrics and nvidia-ml-py (.library/device/KINDS.md) but not hydra-core, omegaconf, zarr, anndata, wandb
# or submitit. The whole dependency closure of those is resolved for CPython 3.12 on manylinux x86_64; wheels of
# packages the image already has go to .wheels-image/ (kept here, for the offline check below, never carried),
# the rest to .wheels/ (carried to the machine: `run(carry=[".wheels"], ...)`). Both folders are git-ignored.
#   bash scripts/device/fetch_wheels.sh            # download and split
#   bash scripts/device/fetch_wheels.sh --check    # also: install offline into a throwaway Python 3.12 venv
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
# what the benchmark path imports, at the versions the project is tested with here (wandb < 0.23: see pyproject)
WANTED=(hydra-core==1.3.* omegaconf==2.3.* "zarr>=3.0.8,<3.2" "anndata>=0.11,<0.13" "wandb>=0.19,<0.23" submitit
  hatchling editables)  # hatchling, editables: to install the project itself offline (--no-build-isolation -e)
# already on the GPU image (KINDS.md, "Python packages already there"): not carried
IMAGE="torch lightning lightning-utilities tensorstore ml-dtypes numpy scipy pandas scikit-learn h5py torchmetrics
nvidia-ml-py psutil packaging typing-extensions pyyaml tqdm requests urllib3 idna certifi charset-normalizer click
protobuf python-dateutil six fsspec filelock jinja2 markupsafe sympy mpmath networkx joblib threadpoolctl cloudpickle
msgpack attrs setuptools wheel pip pluggy pathspec"
PLATFORMS=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
  --platform manylinux_2_34_x86_64)
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# hydra-core needs antlr4-python3-runtime 4.9.*, published as a source archive only: build its (pure-Python) wheel
python3 -m pip wheel -q --no-deps --wheel-dir "$TMP" "antlr4-python3-runtime==4.9.*"
python3 -m pip download -q --dest "$TMP" --find-links "$TMP" --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 "${PLATFORMS[@]}" "${WANTED[@]}"
rm -rf .wheels .wheels-image
mkdir -p .wheels .wheels-image
norm() { tr 'A-Z_.' 'a-z--'; }
on_image="$(printf '%s\n' $IMAGE | norm)"
for wheel in "$TMP"/*.whl; do
  name="$(basename "$wheel" | cut -d- -f1 | norm)"
  if grep -qxF -- "$name" <<<"$on_image"; then
    mv "$wheel" .wheels-image/
  else
    mv "$wheel" .wheels/
  fi
done
echo "carried (.wheels): $(ls .wheels | wc -l) wheels, $(du -sh .wheels | cut -f1); on the image already" \
  "(.wheels-image): $(ls .wheels-image | wc -l)"
ls .wheels

if [[ "${1:-}" == "--check" ]]; then
  # A throwaway Python 3.12 venv stands in for the image (without torch): what the image has (.wheels-image, plus
  # tensorstore and tqdm, fetched for the check only), then exactly gpu_bench.sh's offline install from .wheels,
  # then the torch-free part of the benchmark: compose the paper's config, write a synthetic store, read it back.
  PY312="${PY312:-$(ls -d ~/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | head -1)}"
  [[ -x "$PY312" ]] || { echo "fetch_wheels: no Python 3.12 found (set PY312)" >&2; exit 1; }
  python3 -m pip download -q --dest .wheels-image --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 "${PLATFORMS[@]}" tensorstore tqdm
  VENV="$TMP/venv312"
  "$PY312" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --no-index --no-deps .wheels-image/*.whl
  "$VENV/bin/python" -m pip install -q --no-index --find-links .wheels hydra-core omegaconf zarr anndata wandb \
    submitit hatchling editables
  "$VENV/bin/python" -m pip install -q --no-index --no-deps --no-build-isolation -e .
  (cd "$TMP" && "$VENV/bin/python" - <<'PY')
import sys
from importlib.metadata import version

import anndata, hydra, omegaconf, submitit, wandb, zarr  # noqa: F401, E401  (what the image lacked)
from hydra import compose, initialize_config_dir

from cellssl.store import CellStore
from cellssl.store.synthetic import synthetic_to_store
from cellssl.tasks import config_dir

with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
    cfg = compose("train", overrides=["experiment=paper_mae", "data.store_path=s", "data.label_key=cell_type"])
assert cfg.data.batch_size == 8192 and cfg.model.masking.rate == 0.5 and cfg.trainer.precision == "bf16-mixed"
store = CellStore(synthetic_to_store("check.zarr", 300, n_genes=200, n_donors=8, progress=False))
counts, _ = store.read_split("train")
assert counts.shape[1] == 200 and counts.nnz > 0
versions = ", ".join(f"{name} {version(name)}" for name in ("hydra-core", "zarr", "anndata", "wandb", "submitit"))
print(f"offline install OK on Python {sys.version.split()[0]} ({versions}): paper_mae composed, store written and read")
PY
fi
