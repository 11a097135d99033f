#!/usr/bin/env bash
# Set up, then pretrain the masked autoencoder on the built-in pbmc68k data and print the evaluation table.
# Arguments pass through to the Hydra app: bash scripts/demo.sh trainer.max_epochs=3 hydra.run.dir=/tmp/run1
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec cellssl-train experiment=pbmc68k_mae trainer.enable_progress_bar=false "$@"
