"""The README's method table over seeds: every method pretrained on pbmc68k by real ``cellssl-train -m`` multiruns
(one per epoch budget), then ``cellssl-report`` on them (summary.md, summary.png) and a Markdown table of mean ± s.d.
over seeds of the zero-shot kNN macro F1 (test split, train split as reference, k = 5) of the trained encoder,
its random initialisation and PCA, and the reconstruction EV under the common 50 % mask.

    python scripts/method_table.py [--seeds 0,1,2,3,4] [--out logs/method_table] [--epochs-masking 20]
        [--epochs-other 15] [--threads 2]

Each sweep is ``cellssl-train -m model=<methods> seed=<seeds> trainer.max_epochs=<epochs> logger=csv
data.batch_size=32`` (the settings of docs/benchmarks.md); the runs are deterministic for a fixed seed and thread
count (``--threads`` sets OMP/MKL threads and torch's; recorded as ``env/torch_threads`` in every metrics.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

SWEEPS = {  # name: (model overrides, epochs argument)
    "masking": (["model=mae,mae_programme,mae_programme_to_tf,mae_programme_to_programme"], "masking"),
    "masking_nb": (["model=mae", "model.reconstruction_loss=nb"], "masking"),
    "joint_embedding": (["model=byol,barlow_twins,vicreg,simclr"], "other"),
    "supervised": (["model=supervised", "data.label_key=bulk_labels"], "other"),
}
COLUMNS = {
    "knn/encoder/macro_f1": "kNN F1 trained",
    "knn/random_encoder/macro_f1": "random init",
    "knn/pca/macro_f1": "PCA (64)",
    "reconstruction_common_mask/encoder/weighted_ev": "EV, common 50 % mask",
    "reconstruction/encoder/weighted_ev": "EV, own mask",
}


def run(command: list[str], env: dict[str, str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env)


def collect(out: Path) -> pd.DataFrame:
    """One row per run: its method (model name and loss), seed, steps, thread count and the table's metrics."""
    rows = []
    for path in sorted((out / "sweeps").rglob("metrics.json")):
        metrics = json.loads(path.read_text())
        config = (path.parent / ".hydra" / "overrides.yaml").read_text()
        model = next(line.split("=", 1)[1] for line in config.splitlines() if "- model=" in line)
        method = f"{model} (NB loss)" if "reconstruction_loss=nb" in config else model
        row = {"method": method, "seed": next(int(s.split("=")[1]) for s in config.split() if s.startswith("seed="))}
        row |= {"steps": metrics["trainer/global_step"], "threads": metrics["env/torch_threads"]}
        row |= {"train s": metrics["time/train_s"], **{label: metrics.get(key) for key, label in COLUMNS.items()}}
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(runs: pd.DataFrame) -> str:
    """Methods as rows, mean ± s.d. over seeds of each column (training times, from a machine that may be shared,
    stay in method_table_runs.csv)."""
    lines = ["| method | steps | " + " | ".join(COLUMNS.values()) + " |", "| --- " * (len(COLUMNS) + 2) + "|"]
    for method, group in runs.groupby("method", sort=False):
        cells = []
        for label in COLUMNS.values():
            values = group[label].dropna()
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}" if len(values) else "–")
        lines.append(f"| {method} | {int(group['steps'].median())} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", type=Path, default=Path("logs/method_table"))
    parser.add_argument("--epochs-masking", type=int, default=20)
    parser.add_argument("--epochs-other", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=None, help="comma list of sweeps to run (default: all)")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "WANDB_MODE": "offline"}
    epochs = {"masking": args.epochs_masking, "other": args.epochs_other}
    started = time.perf_counter()
    for name, (overrides, budget) in SWEEPS.items():
        if args.only and name not in args.only.split(","):
            continue
        command = [str(bin_dir / "cellssl-train"), "-m", *overrides, f"seed={args.seeds}"]
        command += [f"trainer.max_epochs={epochs[budget]}", "logger=csv", "data.batch_size=32"]
        command += ["trainer.enable_progress_bar=false", f"hydra.sweep.dir={args.out / 'sweeps' / name}"]
        run(command, env)
    report = [
        str(bin_dir / "cellssl-report"),
        f"multirun_dir={args.out / 'sweeps'}",
        f"hydra.run.dir={args.out}/report",
    ]
    run([*report, "title='pbmc68k, zero-shot kNN on the test split'"], env)
    runs = collect(args.out)
    runs.to_csv(args.out / "method_table_runs.csv", index=False)
    table = markdown(runs)
    (args.out / "method_table.md").write_text(table + "\n")
    minutes = (time.perf_counter() - started) / 60
    threads = sorted(int(t) for t in runs["threads"].unique())
    print(f"\n{table}\n\n{len(runs)} runs, torch threads {threads}, {minutes:.1f} min; {args.out}/report/summary.png")


if __name__ == "__main__":
    main()
