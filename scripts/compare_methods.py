"""Train every method on pbmc68k with the same seed and print one table: loss first → last epoch and kNN macro F1
of the trained encoder, its random initialisation and PCA (test split, k = 5, reference = train split).

    python scripts/compare_methods.py [--epochs-masking 20] [--epochs-other 15] [--seed 0]

Each run is exactly ``cellssl-train model=<method> trainer.max_epochs=<epochs> logger=csv seed=<seed>``
(the configs of tests/methods/test_learning.py, which runs the NB variant for 12 epochs), run in this
process; outputs go to logs/compare/<method>.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark_methods import METHODS
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from cellssl.tasks import config_dir
from cellssl.tasks.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs-masking", type=int, default=20)
    parser.add_argument("--epochs-other", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = Path.cwd()
    rows = []
    for model, extra in METHODS:
        epochs = args.epochs_masking if model.startswith("mae") else args.epochs_other
        label = " ".join([model, *extra])
        overrides = [f"model={model}", f"trainer.max_epochs={epochs}", "logger=csv", f"seed={args.seed}", *extra]
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, "trainer.enable_progress_bar=false"])
        with open_dict(cfg):
            cfg.paths.root_dir = str(root)
            cfg.paths.output_dir = str(root / "logs" / "compare" / label.replace(" ", "_").replace("=", "-"))
        m = train(cfg)
        history = m["train/loss_history"]
        rows.append(
            f"| {label} | {epochs} ({m['trainer/global_step']}) | {history[0]:.4g} → {history[-1]:.4g} | "
            f"{m['knn/encoder/macro_f1']:.3f} | {m['knn/random_encoder/macro_f1']:.3f} | "
            f"{m['knn/pca/macro_f1']:.3f} | {m['time/train_s']:.0f} s |"
        )
    print("\n| model | epochs (steps) | train loss first → last epoch | kNN F1 trained | random | PCA | training |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
