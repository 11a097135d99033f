"""Overhead of the online evaluation (``callbacks.online_evaluation``) on training time: the same ``cellssl-train``
command with and without the callback, interleaved run by run, one compute thread, medians of ``--repeats``.

    python scripts/bench_online_eval.py                         # both configs, 3 repeats each
    python scripts/bench_online_eval.py --configs pbmc68k --repeats 5

Configs: ``pbmc68k``, the default ``cellssl-train`` (MAE, 40 epochs of 16 steps of 32 cells; the callback at its
defaults evaluates the 105 val cells at the start and each epoch end, within its 5 % budget); ``synthetic``, the
default MAE on a synthetic labelled store (``--cells`` × ``--genes``, 20 cell types) with the ``data=zarr`` defaults
(batch 8,192) for ``--epochs`` epochs, evaluating 2,000 val cells. Both with ``logger=csv`` and no final
evaluation. Training time is the task's ``time/train_s`` (``trainer.fit``); the callback's own time is the sum of
its logged ``online/eval_s``. From the per-evaluation time and the step time the script also prints the overhead
of evaluating every ``every_n_steps`` steps of a long run (arithmetic, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd


def build_synthetic(workdir: Path, n_cells: int, n_genes: int) -> Path:
    from cellssl.store.synthetic import synthetic_to_store

    store = workdir / f"syn{n_cells}x{n_genes}.zarr"
    if not store.exists():
        partial = store.with_suffix(".partial.zarr")
        synthetic_to_store(partial, n_cells, n_genes=n_genes, overwrite=True, progress=False)
        partial.rename(store)
    return store


def run(workdir: Path, name: str, overrides: list[str], with_callback: bool, repeat: int) -> dict[str, float]:
    """One ``cellssl-train`` run in a fresh process; its training time and the callback's logged time."""
    run_dir = workdir / "runs" / f"{name}-{'with' if with_callback else 'without'}-{repeat}"
    variant = [] if with_callback else ["callbacks.online_evaluation=null"]
    common = ["logger=csv", "evaluation.enabled=false", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CELLSSL_DATA_DIR": str(workdir / "data"), "WANDB_MODE": "offline"}
    command = [str(Path(sys.executable).parent / "cellssl-train"), *common, *overrides, *variant]
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    logged = pd.read_csv(run_dir / "csv" / "metrics.csv")
    evals = logged["online/eval_s"].dropna() if "online/eval_s" in logged else pd.Series(dtype=float)
    return {
        "train_s": metrics["time/train_s"],
        "steps": metrics["trainer/global_step"],
        "eval_s": float(evals.sum()),
        "evaluations": len(evals),
        "eval_median_s": float(evals.median()) if len(evals) else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="pbmc68k,synthetic")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cells", type=int, default=50_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--every-n-steps", type=int, default=1000, help="for the long-run projection")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_online_eval"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    configs = {"pbmc68k": []}
    if "synthetic" in args.configs:
        store = build_synthetic(args.workdir, args.cells, args.genes)
        configs["synthetic"] = [
            "data=zarr",
            f"data.store_path={store}",
            "data.label_key=cell_type",
            f"trainer.max_epochs={args.epochs}",
        ]
    configs = {name: configs[name] for name in args.configs.split(",")}
    print(f"{time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {os.cpu_count()} cores, OMP_NUM_THREADS=1")
    print(f"load average at start: {os.getloadavg()}")
    results: dict[tuple[str, bool], list[dict]] = {}
    for repeat in range(args.repeats):
        for name, overrides in configs.items():
            for with_callback in (True, False):
                measured = run(args.workdir, name, overrides, with_callback, repeat)
                results.setdefault((name, with_callback), []).append(measured)
                print(name, "with" if with_callback else "without", measured, flush=True)
    print(f"load average at end: {os.getloadavg()}\n")
    print(
        "| config | steps | training without (median) | with (median) | difference | callback's own time | "
        f"evaluations | per evaluation | every {args.every_n_steps} steps of this step time |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in configs:
        with_runs, without_runs = results[(name, True)], results[(name, False)]
        with_s = statistics.median(r["train_s"] for r in with_runs)
        without_s = statistics.median(r["train_s"] for r in without_runs)
        own = statistics.median(r["eval_s"] / r["train_s"] for r in with_runs)
        per_eval = statistics.median(r["eval_median_s"] for r in with_runs)
        step_s = without_s / with_runs[0]["steps"]
        projected = per_eval / (args.every_n_steps * step_s)
        evaluations = "/".join(str(r["evaluations"]) for r in with_runs)
        print(
            f"| {name} | {with_runs[0]['steps']} | {without_s:.1f} s | {with_s:.1f} s | "
            f"{100 * (with_s / without_s - 1):+.1f} % | {100 * own:.2f} % | {evaluations} | {per_eval * 1000:.0f} ms | "
            f"{100 * projected:.3f} % |"
        )
        pairs = list(zip(with_runs, without_runs, strict=True))
        runs = ", ".join(f"{a['train_s']:.1f}/{b['train_s']:.1f}" for a, b in pairs)
        paired = statistics.median(a["train_s"] / b["train_s"] - 1 for a, b in pairs)
        print(f"  runs (with/without): {runs}; median of the paired differences {100 * paired:+.1f} %")


if __name__ == "__main__":
    main()
