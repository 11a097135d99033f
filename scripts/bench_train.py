"""End-to-end training throughput: store → sparse batches → device → model step, against host-densified batches.

    python scripts/bench_train.py                                    # on a GPU: 2M cells × 19,331 genes, batch 8,192
    python scripts/bench_train.py --cells 100000 --batch-size 1024   # a CPU-sized run (accelerator=cpu)
    bash scripts/device/gpu_bench.sh                                 # the recipe for the (offline) GPU machine

Builds (or reuses, under ``--workdir``) a synthetic store, then trains the paper's recipes through a real Lightning
Trainer with the shipped configs (``experiment=paper_mae`` / ``paper_byol``: random masking 50 %, batch 8,192;
``trainer=gpu`` on CUDA, ``trainer=cpu`` otherwise), each for ``--warmup`` + ``--steps`` optimiser steps:
- ``sparse``: the training path: sparse CSR batches (pinned on a background thread on CUDA), asynchronous
  copies, densified, normalised, masked and augmented on the device;
- ``dense``: the naive baseline: the same model fed batches densified to float32 on the host (``data.dense=true``);
- ``sparse+compile`` with ``--compile``: the training path with ``model.compile=true``.
Runs are interleaved over ``--repeats`` (each variant once, then again), so drifts in machine load hit all alike.
Reports end-to-end cells/s over the timed steps (median of repeats), the ratio to the host-dense baseline, GPU
utilisation (sampled through NVML or nvidia-smi), the time of a 22.2M-cell epoch at that rate, and the loader's
CPU cost per cell: CPU-seconds per million cells for read + decompress + batch assembly (``CellDataLoader``,
no workers, all of the process's threads) and for the host side of the host → device path (the copy into pinned
memory and the asynchronous copy; without CUDA, a plain copy of the same three arrays as a proxy for the pinning
copy), measured before each repeat. From these the number of loader cores one GPU needs at the measured rate
follows (printed). ``--loader-only`` measures the loader alone; ``--json`` writes everything.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cellssl.data import CellDataModule
from cellssl.data.context import data_context
from cellssl.data.normalize import normalized_dense
from cellssl.data.transfer import batch_to_device, is_pinned, pin_batch
from cellssl.methods import build_model
from cellssl.tasks import config_dir
from cellssl.tasks.common import quiet_library_noise

SCTAB_CELLS = 22_200_000  # the paper's training set: one epoch of it is what the issue times
CUDA = torch.cuda.is_available()


# -- the store ------------------------------------------------------------------------------------------------------
def build_store(workdir: Path, n_cells: int, n_genes: int, processes: int) -> Path:
    """The synthetic store of this size, generated once (to a temporary name, renamed when complete)."""
    from cellssl.store.synthetic import synthetic_to_store

    store = workdir / f"syn{n_cells}x{n_genes}.zarr"
    if not store.exists():
        partial = store.with_suffix(".partial.zarr")
        shutil.rmtree(partial, ignore_errors=True)
        started = time.perf_counter()
        synthetic_to_store(partial, n_cells, n_genes=n_genes, processes=processes, progress=False)
        partial.rename(store)
        print(f"built {store} in {time.perf_counter() - started:.0f} s", flush=True)
    return store


# -- the loader's CPU cost --------------------------------------------------------------------------------------
def loader_cost(store: Path, batch_size: int, n_batches: int, device: torch.device) -> dict[str, float]:
    """CPU-seconds per million cells of (a) reading + batch assembly and (b) the host side of host → device."""
    datamodule = CellDataModule(str(store), batch_size=batch_size, pin_memory=False)
    batches, kept, cells = iter(datamodule.train_dataloader()), [], 0
    next(batches)  # opens the store, starts the prefetch
    cpu, wall = time.process_time(), time.perf_counter()
    for _, batch in zip(range(n_batches), batches, strict=False):
        cells += batch["cell_id"].numel()
        if len(kept) < 4:
            kept.append(batch)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    batches.close()
    result = {"read_assemble_cpu_s_per_mcells": cpu / cells * 1e6, "read_assemble_cells_per_s": cells / wall}
    result["bytes_per_cell_sparse"] = sum(
        t.numel() * t.element_size()
        for b in kept
        for t in (b["counts"].crow_indices(), b["counts"].col_indices(), b["counts"].values())
    ) / sum(b["cell_id"].numel() for b in kept)
    result["bytes_per_cell_dense"] = 4.0 * kept[0]["counts"].shape[1]

    # (b): the pinning copy and the asynchronous copies, repeated over the kept batches. Without CUDA there is no
    # pinned memory: copy the same three arrays into buffers allocated beforehand, as pinning does into the blocks
    # torch's caching host allocator keeps (so neither includes fresh page faults)
    arrays = [(b["counts"].crow_indices(), b["counts"].col_indices(), b["counts"].values()) for b in kept]
    buffers = [tuple(torch.empty_like(a) for a in group) for group in arrays]
    moved_cells, cpu, wall = 0, time.process_time(), time.perf_counter()
    for _ in range(5):
        for batch, sources, targets in zip(kept, arrays, buffers, strict=True):
            if device.type == "cuda":
                on_device = batch_to_device(pin_batch(batch, device), device)
            else:
                on_device = [target.copy_(source) for source, target in zip(sources, targets, strict=True)]
            moved_cells += batch["cell_id"].numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    result["host_to_device_cpu_s_per_mcells"] = cpu / moved_cells * 1e6
    result["host_to_device_cells_per_s"] = moved_cells / wall
    del on_device

    # (c) on the device: densify + normalise of a batch already there (device time, not host CPU)
    on_device = batch_to_device(kept[0], device)
    normalized_dense(on_device)
    _sync(device)
    started = time.perf_counter()
    for _ in range(5):
        normalized_dense(on_device)
    _sync(device)
    result["device_normalize_ms_per_batch"] = (time.perf_counter() - started) / 5 * 1000
    result["device_normalize_batch_cells"] = kept[0]["cell_id"].numel()
    return result


def input_path(store: Path, batch_size: int, n_batches: int, device: torch.device, dense: bool) -> dict[str, float]:
    """Cells/s and host CPU-s per million cells from the store to the model's normalised dense input on ``device``,
    without the model: sparse batches normalised on the device, or (``dense``) batches densified on the host."""
    datamodule = CellDataModule(str(store), batch_size=batch_size, pin_memory=device.type == "cuda", dense=dense)
    loader = datamodule.train_dataloader()
    loader.pin_device = device if device.type == "cuda" else None
    batches, cells = iter(loader), 0
    normalized_dense(batch_to_device(next(batches), device))  # opens the store, starts the prefetch
    _sync(device)
    cpu, wall = time.process_time(), time.perf_counter()
    for _, batch in zip(range(n_batches), batches, strict=False):
        normalized_dense(batch_to_device(batch, device))
        cells += batch["cell_id"].numel()
    _sync(device)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    batches.close()
    return {"cells_per_s": cells / wall, "cpu_s_per_mcells": cpu / cells * 1e6}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- GPU utilisation ----------------------------------------------------------------------------------------------
class UtilisationSampler:
    """Samples the GPU's utilisation (% of time a kernel ran) every ``interval`` s, through NVML or nvidia-smi."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.samples, self.source = interval, [], None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> float | None:
        if self.source in (None, "nvml"):
            try:
                value = float(torch.cuda.utilization())
                self.source = "nvml"
                return value
            except Exception:  # no pynvml / NVML: fall back to nvidia-smi
                self.source = "nvidia-smi"
        if shutil.which("nvidia-smi") is None:
            self.source = "none"
            return None
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
        )
        return float(out.stdout.split()[0]) if out.returncode == 0 and out.stdout.strip() else None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            value = self._read()
            if value is not None:
                self.samples.append(value)

    def start(self) -> None:
        if CUDA:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return statistics.mean(self.samples) if self.samples else float("nan")


class ThroughputTimer(L.Callback):
    """Times the optimiser steps after ``warmup`` (device synchronised at both ends): cells, seconds, CPU seconds."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.cells, self.result = warmup, 0, {}
        self.sampler = UtilisationSampler()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            _sync(module.device)
            self.started, self.cpu = time.perf_counter(), time.process_time()
            self.sampler.start()
        if trainer.global_step >= self.warmup:
            self.cells += batch["cell_id"].numel()
            self.steps = trainer.global_step + 1 - self.warmup

    def on_train_end(self, trainer, module) -> None:
        _sync(module.device)
        seconds = time.perf_counter() - self.started
        self.result = {
            "cells_per_s": self.cells / seconds,
            "step_ms": seconds / self.steps * 1000,
            "process_cpu_s_per_mcells": (time.process_time() - self.cpu) / self.cells * 1e6,
            "gpu_utilisation_pct": self.sampler.stop(),
            "gpu_utilisation_source": self.sampler.source,
            "cells": self.cells,
            "steps": self.steps,
            "peak_gpu_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if CUDA else float("nan"),
        }


# -- one training run ---------------------------------------------------------------------------------------------
def train_run(store: Path, method: str, feed: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    overrides = [
        f"experiment=paper_{method}",
        f"trainer={'gpu' if CUDA else 'cpu'}",
        f"data.store_path={store}",
        "data.label_key=cell_type",
        f"data.batch_size={args.batch_size}",
        "data.adapt_batch_size=false",  # measure the batch size asked for, even on a small store
        f"data.num_workers={args.workers}",
        f"data.dense={feed == 'dense'}",
        f"model.compile={feed.endswith('compile')}",
        *([f"trainer.precision={args.precision}"] if args.precision else []),
    ]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    L.seed_everything(0, verbose=False)
    datamodule: CellDataModule = instantiate(cfg.data)
    datamodule.setup()
    model = build_model(
        OmegaConf.to_container(cfg.model, resolve=True), data_context(datamodule.store, datamodule.label_key)
    )
    timer = ThroughputTimer(args.warmup)
    checks = PathCheck()
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=False)
    trainer_cfg.update(
        default_root_dir=str(workdir / "runs"),
        max_epochs=-1,
        max_steps=args.warmup + (args.dense_steps or args.steps if feed == "dense" else args.steps),
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer = instantiate(trainer_cfg, logger=False, callbacks=[timer, checks])
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(model, datamodule=datamodule)
    result = {**timer.result, **checks.result, "precision": str(trainer.precision)}
    expected = {"host_layout": "torch.sparse_csr" if feed != "dense" else "torch.strided"}
    if CUDA:  # the training path on a GPU: pinned on the host, still sparse on the device
        expected.update(host_pinned=True, device_layout=f"{expected['host_layout']} on cuda:0")
    wrong = {k: result.get(k) for k, v in expected.items() if result.get(k) != v}
    if wrong:
        raise RuntimeError(f"the batch path is not as it should be: {wrong}, expected {expected}")
    return result


class PathCheck(L.Callback):
    """Records what the first training batch looked like before and after the transfer (layout, pinned, device)."""

    def __init__(self) -> None:
        self.result: dict[str, Any] = {}

    def on_fit_start(self, trainer, module) -> None:
        datamodule, transfer = trainer.datamodule, trainer.datamodule.transfer_batch_to_device

        def recording(batch, device, dataloader_idx):
            if "host_layout" not in self.result:
                self.result.update(host_layout=str(batch["counts"].layout), host_pinned=is_pinned(batch))
            moved = transfer(batch, device, dataloader_idx)
            self.result.setdefault("device_layout", f"{moved['counts'].layout} on {moved['counts'].device}")
            return moved

        datamodule.transfer_batch_to_device = recording


# -- report -------------------------------------------------------------------------------------------------------
def duration(seconds: float) -> str:
    if seconds < 600:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 36_000 else f"{seconds / 3600:.0f} h"


def table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if v != v else f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=2_000_000 if CUDA else 100_000)
    parser.add_argument("--genes", type=int, default=19_331)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--methods", default="mae,byol")
    parser.add_argument("--feeds", default="sparse,dense", help="sparse (the training path), dense (host-densified)")
    parser.add_argument("--compile", action="store_true", help="also run the sparse path with model.compile=true")
    parser.add_argument("--steps", type=int, default=40, help="timed optimiser steps per run")
    parser.add_argument("--dense-steps", type=int, help="timed steps of the (slow) host-dense runs (default --steps)")
    parser.add_argument("--budget", type=float, help="seconds: start no run after this (results so far are kept)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before (compilation, cuDNN, prefetch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="loader processes (data.num_workers)")
    parser.add_argument("--precision", help="trainer.precision (default: the trainer config's: gpu bf16-mixed)")
    parser.add_argument("--loader-batches", type=int, default=30, help="batches read for the loader's CPU cost")
    parser.add_argument("--loader-only", action="store_true", help="measure the loader's CPU cost only (no training)")
    parser.add_argument("--processes", type=int, default=os.cpu_count(), help="store generation processes")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cellssl-bench-train"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    quiet_library_noise()
    warnings.filterwarnings("ignore", message="The `srun` command")  # a SLURM hint, once per Trainer
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # "GPU available ..." for every run
    args.workdir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if CUDA else "cpu")

    store = build_store(args.workdir, args.cells, args.genes, args.processes)
    feeds = args.feeds.split(",") + (["sparse+compile"] if args.compile else [])
    variants = [] if args.loader_only else [(m, f) for m in args.methods.split(",") for f in feeds]
    runs: dict[tuple[str, str], list[dict]] = {v: [] for v in variants}
    costs: list[dict[str, float]] = []
    errors: list[str] = []
    failed = False
    for repeat in range(args.repeats):
        costs.append(loader_cost(store, args.batch_size, args.loader_batches, device))  # interleaved as well
        for feed in ("sparse", "dense"):
            path = input_path(store, args.batch_size, args.loader_batches, device, dense=feed == "dense")
            costs[-1].update({f"input_{feed}_{k}": v for k, v in path.items()})
        cost = {k: statistics.median(c[k] for c in costs) for k in costs[0]}
        for method, feed in variants:
            if args.budget is not None and time.perf_counter() - started > args.budget:
                errors.append(f"{method} {feed} repeat {repeat + 1}: not run, --budget {args.budget:.0f} s spent")
                continue
            try:
                result = train_run(store, method, feed, args, args.workdir)
            except Exception as error:  # one failing variant (e.g. compile) must not lose the others' results
                errors.append(f"{method} {feed}: {type(error).__name__}: {error}")
                print(errors[-1], file=sys.stderr, flush=True)
                failed = True
                continue
            runs[method, feed].append(result)
            print(f"{method} {feed}: {result['cells_per_s']:,.0f} cells/s", flush=True)
            if args.json:  # written after every run, so a run cut short still leaves its results
                args.json.write_text(json.dumps({"loader_cost": cost, "runs": _keyed(runs)}, indent=2, default=str))
    for key in ("input_sparse_cells_per_s", "input_dense_cells_per_s"):
        cost[f"runs_{key}"] = [c[key] for c in costs]
    cost["runs_read_assemble_cpu_s_per_mcells"] = [c["read_assemble_cpu_s_per_mcells"] for c in costs]
    cost["runs_host_to_device_cpu_s_per_mcells"] = [c["host_to_device_cpu_s_per_mcells"] for c in costs]
    report(args, device, cost, {v: r for v, r in runs.items() if r}, errors)
    if failed:
        sys.exit(1)  # after the report: what was measured is kept


def _keyed(runs: dict[tuple[str, str], list[dict]]) -> dict[str, list[dict]]:
    return {f"{m}/{f}": r for (m, f), r in runs.items()}


def report(args, device, cost: dict, runs: dict[tuple[str, str], list[dict]], errors: list[str]) -> None:
    """Print the tables (and write ``--json``)."""
    variants = list(runs)
    median = {v: statistics.median(r["cells_per_s"] for r in runs[v]) for v in variants}
    rows, records = [], []
    for method, feed in variants:
        rs = runs[method, feed]
        baseline = median.get((method, "dense"), float("nan"))
        record = {
            "method": method,
            "feed": feed,
            "cells_per_s": median[method, feed],
            "runs": [r["cells_per_s"] for r in rs],
            "vs_host_dense": median[method, feed] / baseline,
            "step_ms": statistics.median(r["step_ms"] for r in rs),
            "gpu_utilisation_pct": statistics.median(r["gpu_utilisation_pct"] for r in rs),
            "epoch_22m_s": SCTAB_CELLS / median[method, feed],
            "process_cpu_s_per_mcells": statistics.median(r["process_cpu_s_per_mcells"] for r in rs),
            "checks": {k: rs[0][k] for k in ("host_layout", "host_pinned", "device_layout", "precision")},
            "peak_gpu_mem_gb": max(r["peak_gpu_mem_gb"] for r in rs),
        }
        records.append(record)
        rows.append(
            [
                method,
                feed,
                record["cells_per_s"],
                " / ".join(f"{c:,.0f}" for c in record["runs"]),
                f"{record['vs_host_dense']:.2f}x",
                record["step_ms"],
                record["gpu_utilisation_pct"],
                duration(record["epoch_22m_s"]),
                record["process_cpu_s_per_mcells"],
            ]
        )
    name = torch.cuda.get_device_name() if CUDA else platform.processor() or platform.machine()
    machine = f"{platform.node()}, {name}, {os.cpu_count()} cores, torch {torch.__version__}"
    runs_text = "loader only" if args.loader_only else f"{args.warmup} + {args.steps} steps"
    print(
        f"\n{args.cells:,} cells x {args.genes:,} genes, batch {args.batch_size:,}, {runs_text} x {args.repeats} "
        f"runs, {args.workers} loader workers, device {device}; {machine}, {time.strftime('%Y-%m-%d %H:%M')}\n"
    )
    header = [
        "model",
        "feed",
        "cells/s (median)",
        "runs",
        "vs host-dense",
        "ms/step",
        "GPU util %",
        "22.2M-cell epoch",
        "process CPU-s / M cells",
    ]
    print(table(header, rows))
    print(f"\nchecks (first run): {records[0]['checks'] if records else None}")
    for error in errors:
        print(f"NOT MEASURED: {error}")
    print()
    per_cell = cost["read_assemble_cpu_s_per_mcells"] + cost["host_to_device_cpu_s_per_mcells"]
    print(
        table(
            ["loader stage (medians)", "CPU-s / M cells", "runs", "cells/s"],
            [
                [
                    "read + decompress + batch assembly (no workers)",
                    cost["read_assemble_cpu_s_per_mcells"],
                    " / ".join(f"{c:.3g}" for c in cost["runs_read_assemble_cpu_s_per_mcells"]),
                    cost["read_assemble_cells_per_s"],
                ],
                [
                    "host -> device: pin + async copy" if CUDA else "host -> device: memcpy proxy of the pin copy",
                    cost["host_to_device_cpu_s_per_mcells"],
                    " / ".join(f"{c:.3g}" for c in cost["runs_host_to_device_cpu_s_per_mcells"]),
                    cost["host_to_device_cells_per_s"],
                ],
                ["total host CPU of the loader path", per_cell, "", float("nan")],
            ],
        )
    )
    ratio = cost["input_sparse_cells_per_s"] / cost["input_dense_cells_per_s"]
    print(f"\ninput path without the model, store -> normalised dense input on {device} ({ratio:.2f}x):\n")
    print(
        table(
            ["input path (medians)", "cells/s", "runs", "host CPU-s / M cells"],
            [
                [
                    f"sparse batches, normalised on {device}",
                    cost["input_sparse_cells_per_s"],
                    " / ".join(f"{c:,.0f}" for c in cost["runs_input_sparse_cells_per_s"]),
                    cost["input_sparse_cpu_s_per_mcells"],
                ],
                [
                    "batches densified on the host (naive)",
                    cost["input_dense_cells_per_s"],
                    " / ".join(f"{c:,.0f}" for c in cost["runs_input_dense_cells_per_s"]),
                    cost["input_dense_cpu_s_per_mcells"],
                ],
            ],
        )
    )
    print(
        f"\nbytes moved per cell: {cost['bytes_per_cell_sparse']:,.0f} sparse vs {cost['bytes_per_cell_dense']:,.0f} "
        f"dense float32; densify + normalise on {device}: {cost['device_normalize_ms_per_batch']:.2f} ms per "
        f"{int(cost['device_normalize_batch_cells']):,} cells"
    )
    for record in records:
        if record["feed"] == "sparse":
            cores = record["cells_per_s"] * per_cell / 1e6
            print(
                f"{record['method']}: at {record['cells_per_s']:,.0f} cells/s one device needs {cores:.2f} loader "
                f"cores; 8 per node need {8 * cores:.1f} cores"
            )
    target = 250_000 * per_cell / 1e6
    print(f"at the target of 250,000 cells/s per GPU: {target:.2f} loader cores per GPU, {8 * target:.1f} for 8")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "machine": machine,
                    "device": str(device),
                    "date": time.strftime("%Y-%m-%d %H:%M"),
                    "loader_cost": cost,
                    "results": records,
                    "errors": errors,
                    "runs": _keyed(runs),
                },
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
