#!/usr/bin/env bash
# Transfer on real data: pretrain a masked autoencoder on one half of pbmc68k (genes named by symbol), then
# fine-tune and kNN-evaluate on the other half (genes named by Ensembl id, 15 % fewer, 50 extra, shuffled):
# SSL-pretrained vs supervised from scratch (same recipe, random init) vs PCA; report over seeds.
#   bash scripts/transfer_demo.sh                 # the README's table
#   OUT=/tmp/demo EPOCHS=2 FT_EPOCHS=2 SEEDS=0 bash scripts/transfer_demo.sh   # a smoke run
# Variables: OUT (work folder), EPOCHS (pretraining), FT_EPOCHS (fine-tuning), SEEDS (fine-tuning seeds, comma
# list), PRETRAIN_SEEDS (pretraining seeds: each checkpoint is kNN-evaluated, the first one is fine-tuned), MODES,
# LOGGER; CKPT=<checkpoint> skips pretraining and uses that checkpoint.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
OUT="${OUT:-$ROOT/logs/transfer_demo}"
EPOCHS="${EPOCHS:-40}"
FT_EPOCHS="${FT_EPOCHS:-20}"
SEEDS="${SEEDS:-0,1,2,3,4}"
PRETRAIN_SEEDS="${PRETRAIN_SEEDS:-0,1,2,3,4}"
MODES="${MODES:-full,frozen,linear_probe}"
LOGGER="${LOGGER:-csv}"
COMMON=(logger="$LOGGER" trainer.enable_progress_bar=false)
rm -rf "$OUT/data" "$OUT/finetune" "$OUT/knn" "$OUT/report"
mkdir -p "$OUT"

# source.h5ad/.zarr and target.h5ad/.zarr (the stores as cellssl-prepare writes them)
python scripts/make_transfer_data.py --out "$OUT/data"
PRETRAIN=(model=mae data=zarr data.store_path="$OUT/data/source.zarr" data.label_key=bulk_labels data.batch_size=32
  data.block_size=16 "${COMMON[@]}" trainer.max_epochs="$EPOCHS")
if [[ -z "${CKPT:-}" ]]; then
  # pretraining uses no labels (the source's are only for its own kNN table)
  rm -rf "$OUT/pretrain"
  if [[ "$PRETRAIN_SEEDS" == *,* ]]; then  # one checkpoint per seed: pretrain/<job>/checkpoints/last.ckpt
    cellssl-train -m seed="$PRETRAIN_SEEDS" "${PRETRAIN[@]}" hydra.sweep.dir="$OUT/pretrain"
    CKPTS="$(ls -d "$OUT"/pretrain/*/checkpoints/last.ckpt | paste -sd, -)"
    CKPT="$OUT/pretrain/0/checkpoints/last.ckpt"
  else
    cellssl-train seed="$PRETRAIN_SEEDS" "${PRETRAIN[@]}" hydra.run.dir="$OUT/pretrain"
    CKPT="$OUT/pretrain/checkpoints/last.ckpt"
  fi
fi
CKPTS="${CKPTS:-$CKPT}"
TARGET=(data=zarr data.store_path="$OUT/data/target.zarr" data.label_key=bulk_labels data.batch_size=32
  data.block_size=16 dataset_name=pbmc68k_target)
cellssl-finetune -m pretrained="$CKPT",null mode="$MODES" seed="$SEEDS" "${TARGET[@]}" "${COMMON[@]}" \
  trainer.max_epochs="$FT_EPOCHS" hydra.sweep.dir="$OUT/finetune"
if [[ "$CKPTS" == *,* ]]; then  # kNN of every pretraining seed's checkpoint
  cellssl-evaluate -m pretrained="$CKPTS" "${TARGET[@]}" logger="$LOGGER" hydra.sweep.dir="$OUT/knn"
else
  cellssl-evaluate pretrained="$CKPT" "${TARGET[@]}" logger="$LOGGER" hydra.run.dir="$OUT/knn"
fi
cellssl-report multirun_dir="$OUT" hydra.run.dir="$OUT/report" "title='pbmc68k halves: pretrained on the source, read out on the target'"
