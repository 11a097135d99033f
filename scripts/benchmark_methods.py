"""CPU step time of every method: one optimisation step (normalise, mask/augment, forward, loss, backward,
optimiser, BYOL's EMA) on real pbmc68k batches already in memory, so data loading is not measured.

    python scripts/benchmark_methods.py [--batch-sizes 32 256] [--steps 30] [--repeats 3]

Prints a Markdown table of per-step medians (ms): the median over ``--steps`` timed steps (after 3 warm-up
steps) of each repeat, then the median over repeats. Repeats are interleaved (every method once, then again),
so a burst of load from other processes on a shared machine spreads over methods instead of hitting one.
Builds the pbmc68k store under data/ on first use.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cellssl.data.dataset import batch_from_csr
from cellssl.methods import build_model
from cellssl.store import CellStore, prepare_store
from cellssl.tasks import config_dir

METHODS = [
    ("mae", []),
    ("mae", ["model.reconstruction_loss=nb"]),
    ("mae_programme", []),
    ("mae_programme_to_tf", []),
    ("mae_programme_to_programme", []),
    ("byol", []),
    ("barlow_twins", []),
    ("vicreg", []),
    ("simclr", []),
    ("supervised", []),
]


def step_times(model_name: str, overrides: list[str], store: CellStore, batch_size: int, steps: int) -> list[float]:
    """Seconds per optimisation step, for ``steps`` steps after 3 warm-up steps."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model_name}", *overrides])
    torch.manual_seed(0)
    codes, _ = store.labels("bulk_labels")
    context = {
        "n_genes": store.n_genes,
        "gene_names": list(store.gene_names),
        "n_classes": int(codes.max()) + 1,
        "class_counts": torch.bincount(torch.from_numpy(codes)).tolist(),
    }
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), context).train()
    optimizer = model.configure_optimizers()
    counts, ids = store.read_split("train")
    batches = []
    for start in range(0, batch_size * (steps + 3), batch_size):
        rows = torch.randint(0, counts.shape[0], (batch_size,), generator=torch.Generator().manual_seed(start))
        rows = rows.numpy()
        batches.append(batch_from_csr(counts[rows], ids[rows], codes[ids[rows]]))
    times = []
    for index, batch in enumerate(batches):
        started = time.perf_counter()
        loss = model.loss(batch, "train")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.on_train_batch_end(loss, batch, index)
        if index >= 3:
            times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store", type=Path, default=Path("data/pbmc68k.zarr"))
    args = parser.parse_args()
    if not args.store.exists():
        prepare_store("pbmc68k", args.store, label_columns=["bulk_labels"], seed=0)
    store = CellStore(args.store)
    header = " | ".join(f"batch {b} (ms/step)" for b in args.batch_sizes)
    print(f"| method | {header} |\n| --- |{' --- |' * len(args.batch_sizes)}")
    medians: dict[tuple[int, int], list[float]] = {}
    for _ in range(args.repeats):
        for index, (model_name, overrides) in enumerate(METHODS):
            for batch_size in args.batch_sizes:
                times = step_times(model_name, overrides, store, batch_size, args.steps)
                medians.setdefault((index, batch_size), []).append(statistics.median(times))
    for index, (model_name, overrides) in enumerate(METHODS):
        cells = [f"{1000 * statistics.median(medians[index, b]):.1f}" for b in args.batch_sizes]
        print(f"| {' '.join([model_name, *overrides])} | {' | '.join(cells)} |")
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.repeats} repeats")
    print(f"load average at the end (1, 5, 15 min): {load}")


if __name__ == "__main__":
    main()
