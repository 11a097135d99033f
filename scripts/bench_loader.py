"""Loader benchmark: cells/s for shuffled batches from this loader and its peers, side by side.

    python scripts/bench_loader.py --cells 200000 --workdir /tmp/bench   # builds the inputs once, then measures

Builds a synthetic store (N cells × 20,000 genes) and its `.h5ad` export, then runs each loader in its own
process (so peak memory is its own), for ``--seconds`` after warm-up, with batches of ``--batch-size``:
1. cellssl: CellDataLoader over the store (tensorstore reads, prefetch thread), runs of `--mix` rows shuffled
   within each group; `cellssl-rows` is the same loader shuffling single rows (`mix_size=1`);
2. annbatch (0.3.x, zarrs pipeline) on its own pre-shuffled collection built from the `.h5ad`
   (run by scripts/peers/annbatch_runner.py in .venv-annbatch; skipped when that venv is absent);
3. anndata backed: random sorted row indices from the backed `.h5ad` (the naive baseline);
4. ceiling: the store's CSR arrays read and decompressed sequentially through tensorstore, no batching.
Also the mean per-batch label entropy against batches drawn truly at random, and h5ad → store conversion
speed. Prints a markdown table; ``--json`` writes the raw results. Medians over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ANNBATCH_PYTHON = ROOT / ".venv-annbatch" / "bin" / "python"


def entropy(labels: np.ndarray) -> float:
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _own_memory_mb() -> dict:
    """What this process holds itself (anonymous memory), against the file pages it maps: the page cache is not
    in either, so a cold read's cached store pages never count as the loader's memory."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile", "VmHWM")}


def storage_read_bytes() -> int:
    """Bytes this process has had read from storage (the page cache's misses), from /proc/self/io."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["read_bytes"])


def _timed_passes(batches, passes: int, label_of) -> dict:
    """Consume whole passes (epochs) of ``batches`` from the first batch on: start-up and first reads are timed."""
    cells, n, entropies, read_before, start = 0, 0, [], storage_read_bytes(), time.perf_counter()
    for _ in range(passes):
        for batch in batches():
            size, labels = label_of(batch)
            cells, n = cells + size, n + 1
            entropies.append(entropy(labels))
    elapsed = time.perf_counter() - start
    return {
        "cells_per_s": cells / elapsed,
        "batches": n,
        "cells": cells,
        "elapsed_s": elapsed,
        "label_entropy": float(np.mean(entropies)),
        "pass_read_mb": (storage_read_bytes() - read_before) / 1e6,
    }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(batches, seconds: float, warmup: int, label_of) -> dict:
    """Consume ``batches`` for ``seconds`` after ``warmup`` batches; cells/s and per-batch label entropy."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    cells, n, entropies, start, cpu = 0, 0, [], time.perf_counter(), _cpu_s()
    for batch in iterator:
        size, labels = label_of(batch)
        cells, n = cells + size, n + 1
        entropies.append(entropy(labels))
        if time.perf_counter() - start > seconds:
            break
    elapsed = time.perf_counter() - start
    return {
        "cells_per_s": cells / elapsed,
        "batches": n,
        "label_entropy": float(np.mean(entropies)),
        "cpu_us_per_cell": (_cpu_s() - cpu) / cells * 1e6,
    }


def run_cellssl(
    store: str,
    batch_size: int,
    seconds: float,
    workers: int,
    block_size: int,
    group: int,
    mix: int,
    passes: int = 0,
    prefetch: int = 1,
) -> dict:
    from cellssl.data.datamodule import CellDataLoader
    from cellssl.data.dataset import CellBatchDataset

    dataset = CellBatchDataset(
        store,
        "train",
        batch_size,
        block_size=block_size,
        shuffle_batches=group,
        label_key="cell_type",
        mix_size=mix,
        prefetch_groups=prefetch,
    )
    epoch = [0]
    loader = CellDataLoader(dataset, lambda peek=False: (epoch[0], 0, 1, []), num_workers=workers)  # as in training

    def epochs():
        while True:
            yield from loader
            epoch[0] += 1

    def label_of(batch):
        return len(batch["cell_id"]), batch["label"].numpy()

    def one_epoch():
        yield from loader
        epoch[0] += 1

    # whole epochs when --passes (a cold read must be: the store cannot stay cached), else a timed window
    result = _timed_passes(one_epoch, passes, label_of) if passes else _timed(epochs(), seconds, 3, label_of)
    settings = {
        "block_size": block_size,
        "shuffle_batches": group,
        "mix_size": mix,
        "num_workers": workers,
        "prefetch_groups": prefetch,
    }
    return {**result, "settings": settings}


def run_backed(h5ad: str, batch_size: int, seconds: float) -> dict:
    import anndata as ad

    adata = ad.read_h5ad(h5ad, backed="r")
    labels = adata.obs["cell_type"].to_numpy()
    rng = np.random.default_rng(0)

    def batches():
        while True:
            rows = np.sort(rng.choice(adata.n_obs, batch_size, replace=False))
            yield adata.X[rows], labels[rows]

    return _timed(batches(), seconds, 1, lambda b: (b[0].shape[0], b[1]))


def run_ceiling(store: str, seconds: float, in_flight: int = 4) -> dict:
    """Read data/indices sequentially in 4 Mi-element slices, ``in_flight`` slices at a time: bytes only."""
    from cellssl.store import CellStore

    reader = CellStore(store).counts
    indptr = reader.arrays["indptr"].read().result()
    n_cells, nnz, step = len(indptr) - 1, int(indptr[-1]), 1 << 22
    done, start, cpu = 0, time.perf_counter(), _cpu_s()
    while time.perf_counter() - start < seconds:
        for lo in range(0, nnz, step * in_flight):
            highs = [min(lo + (i + 1) * step, nnz) for i in range(in_flight) if lo + i * step < nnz]
            futures = [
                reader.arrays[name][lo + i * step : hi].read()
                for i, hi in enumerate(highs)
                for name in ("data", "indices")
            ]
            for future in futures:
                future.result()
            done += highs[-1] - lo
            if time.perf_counter() - start > seconds:
                break
    elapsed = time.perf_counter() - start
    cells = done / (nnz / n_cells)
    return {
        "cells_per_s": cells / elapsed,
        "label_entropy": float("nan"),
        "cpu_us_per_cell": (_cpu_s() - cpu) / cells * 1e6,
    }


def random_entropy(store: str, batch_size: int, n: int = 50) -> float:
    from cellssl.store import CellStore

    store_ = CellStore(store)
    codes, _ = store_.labels("cell_type")
    start, stop = store_.split_range("train")
    rng = np.random.default_rng(1)
    return float(
        np.mean([entropy(codes[rng.choice(np.arange(start, stop), batch_size, replace=False)]) for _ in range(n)])
    )


def child(args: argparse.Namespace) -> None:
    if args.run == "build":
        h5ad_needed = bool({"annbatch", "backed"} & set(args.peers.split(",")))
        store, h5ad, timings = build_inputs(args.workdir, args.cells, args.genes, h5ad_needed)
        print(json.dumps({"store": str(store), "h5ad": str(h5ad), "timings": timings}))
        return
    if args.run == "cellssl":
        out = run_cellssl(
            args.store,
            args.batch_size,
            args.seconds,
            args.workers,
            args.block_size,
            args.group,
            args.mix,
            args.passes,
            args.prefetch,
        )
    elif args.run == "backed":
        out = run_backed(args.h5ad, args.batch_size, args.seconds)
    else:
        out = run_ceiling(args.store, args.seconds)
    out["peak_rss_mb"] = _peak_rss_mb()
    out["memory_at_end_mb"] = _own_memory_mb()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = usage.ru_utime + usage.ru_stime  # the whole process: start-up, reading and the batches
    print(json.dumps(out))


def _children_read_bytes() -> int:
    """Bytes the finished children read from storage (not from the page cache): ru_inblock counts 512-byte blocks."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_inblock * 512


def cpu_ticks() -> tuple[int, int]:
    """(all, steal) jiffies of the machine so far (/proc/stat): a VM's steal is time its host gave elsewhere."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values[:8]), values[7]


def in_subprocess(python: Path | str, argv: list[str], env: dict[str, str] | None = None) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    read_before, ticks_before = _children_read_bytes(), cpu_ticks()
    result = subprocess.run([str(python), *argv], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed:\n{result.stderr[-3000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    ticks = [after - before for after, before in zip(cpu_ticks(), ticks_before, strict=True)]
    steal = 100 * ticks[1] / max(ticks[0], 1)
    return {**out, "disk_read_mb": (_children_read_bytes() - read_before) / 1e6, "steal_pct": steal}


def build_inputs(workdir: Path, n_cells: int, n_genes: int, h5ad_needed: bool = True) -> tuple[Path, Path, dict]:
    """The synthetic store and its .h5ad export (built once per size), and the conversion speed.

    Without ``h5ad_needed`` (no peer reads the .h5ad) only the store is built: at millions of cells the
    export would be tens of GB.
    """
    import anndata as ad

    from cellssl.store import CellStore, anndata_to_store
    from cellssl.store.synthetic import synthetic_to_store

    store, h5ad, converted = (
        workdir / f"syn{n_cells}.zarr",
        workdir / f"syn{n_cells}.h5ad",
        workdir / f"conv{n_cells}.zarr",
    )
    timings = {}
    if not store.exists():
        start = time.perf_counter()
        synthetic_to_store(store, n_cells, n_genes=n_genes, processes=os.cpu_count() or 1)
        timings["generate_cells_per_s"] = n_cells / (time.perf_counter() - start)
    meta = CellStore(store).metadata
    timings["nnz_per_cell"] = meta["nnz"] / meta["n_cells"]
    if not h5ad_needed:
        return store, h5ad, timings
    if not h5ad.exists():
        adata = ad.io.read_zarr(store)
        adata.X = adata.X.astype(np.float32)  # as single-cell files usually hold counts
        adata.write_h5ad(h5ad)
        del adata
    start = time.perf_counter()
    anndata_to_store([h5ad], converted, label_columns=["cell_type"], donor_column="donor_id", overwrite=True)
    timings["convert_h5ad_cells_per_s"] = n_cells / (time.perf_counter() - start)
    return store, h5ad, timings


def store_files(root: Path) -> list[Path]:
    """Every file of a store (or collection), the chunk files of each array in the order they were written."""

    def order(path: Path) -> tuple:
        return (str(path.parent), int(path.name) if path.name.isdigit() else -1, path.name)

    return sorted((f for f in root.rglob("*") if f.is_file()), key=order)


def csr_files(store: Path) -> list[Path]:
    """The chunk files of the store's CSR ``data`` and ``indices``, in written order (what a pass reads)."""
    return [f for f in store_files(store / "X") if f.parent.parent.name in ("data", "indices")]


def evict(roots: list[Path]) -> int:
    """Drop these stores' pages from the page cache (posix_fadvise DONTNEED on every file, after fdatasync, so
    no dirty page stays); returns the bytes still resident afterwards (``fincore``; 0 when evicted)."""
    files = [f for root in roots for f in store_files(root)]
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    resident = 0
    for lo in range(0, len(files), 2000):  # fincore prints resident bytes per file
        out = subprocess.run(
            ["fincore", "-b", "-n", "-o", "RES", *map(str, files[lo : lo + 2000])],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        resident += sum(int(v) for v in out.split())
    return resident


def disk_pass(store: Path) -> dict:
    """The disk's own sequential rate on the store's CSR files, cold: `cat` of the chunk files in written order
    into `dd` (16 MiB blocks) — what a loader reading the whole store could reach at best."""
    files = csr_files(store)
    resident = evict([store])
    start = time.perf_counter()
    cat = subprocess.Popen(["cat", *map(str, files)], stdout=subprocess.PIPE)
    dd = subprocess.run(
        ["dd", "of=/dev/null", "bs=16M", "iflag=fullblock"],
        stdin=cat.stdout,
        capture_output=True,
        text=True,
        check=True,
    )
    cat.wait()
    elapsed = time.perf_counter() - start
    size = sum(f.stat().st_size for f in files)
    return {
        "mb_per_s": size / elapsed / 1e6,
        "bytes": size,
        "elapsed_s": elapsed,
        "resident_before": resident,
        "dd": dd.stderr.strip().splitlines()[-1],
    }


def flags(options: dict) -> list[str]:
    """``{"batch-size": 4096}`` → ``["--batch-size", "4096"]``."""
    return [a for key, value in options.items() for a in (f"--{key}", str(value))]


def disk_depth(store: Path, readers: list[int], repeats: int, every: int = 10) -> None:
    """The disk's rate with several files read at once (`xargs -P N cat | dd`), cold, on every ``every``-th CSR
    chunk file of the store: how much a loader with many reads in flight can get beyond one `cat`."""
    files = csr_files(store)[::every]
    size = sum(f.stat().st_size for f in files)
    rates: dict[int, list[float]] = {n: [] for n in readers}
    for _ in range(repeats):
        for n in readers:
            resident = evict([store])
            start = time.perf_counter()
            xargs = subprocess.Popen(
                ["xargs", "-0", "-P", str(n), "-n", "16", "cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            dd = subprocess.Popen(
                ["dd", "of=/dev/null", "bs=16M", "iflag=fullblock", "status=none"], stdin=xargs.stdout
            )
            xargs.stdin.write(b"\0".join(str(f).encode() for f in files))
            xargs.stdin.close()
            if xargs.wait() or dd.wait():
                raise RuntimeError(f"--disk-depth: reading {store}'s files failed (xargs cat | dd)")
            rates[n].append(size / (time.perf_counter() - start) / 1e6)
            print(f"{n} readers: {rates[n][-1]:.0f} MB/s (resident before: {resident} B)", file=sys.stderr)
    print(f"\n{len(files)} files, {size / 1e9:.1f} GB, cold; {time.strftime('%Y-%m-%d %H:%M')}")
    print("| files read at once | MB/s (median) | runs |\n| --- | --- | --- |")
    for n, rs in rates.items():
        print(f"| {n} | {statistics.median(rs):.0f} | {' / '.join(f'{r:.0f}' for r in rs)} |")


def cold_main(args: argparse.Namespace, store: Path) -> None:
    """``--cold``: per repeat, the disk's sequential pass, then each loader's whole pass(es), every one after
    evicting the store (and annbatch's collection) from the page cache."""
    from cellssl.store import CellStore

    meta = CellStore(store).metadata
    csr_bytes = sum(f.stat().st_size for f in store_files(store / "X"))
    bytes_per_cell = csr_bytes / meta["n_cells"]
    collection = args.annbatch_collection
    knobs = {"passes": args.passes, "batch-size": args.batch_size, "block-size": args.block_size}
    knobs |= {"group": args.group, "mix": args.mix}
    cellssl = [__file__, "--run", "cellssl", "--store", str(store), *flags(knobs)]
    loaders = {f"cellssl prefetch_groups={n}": [*cellssl, "--prefetch", n] for n in args.cold_prefetch.split(",")}
    if collection is not None:  # annbatch's collection, built from (a part of) the same store
        runner = [str(ROOT / "scripts/peers/annbatch_runner.py"), "--h5ad", str(store), "--skip-build"]
        knobs = {"workdir": collection.parent, "label-key": "cell_type", "batch-size": args.batch_size}
        knobs |= {"seconds": 1e9, "warmup-batches": 0, "passes": args.passes}
        knobs |= {"chunk-size": args.annbatch_chunk_size, "preload-nchunks": args.annbatch_preload_nchunks}
        loaders["annbatch"] = [*runner, *flags(knobs)]
    runs: dict[str, list[dict]] = {"disk": [], **{name: [] for name in loaders}}
    for _ in range(args.repeats):
        runs["disk"].append(disk_pass(store))
        for name, argv in loaders.items():
            resident = evict([store] + ([collection] if collection else []))
            python = ANNBATCH_PYTHON if name == "annbatch" else sys.executable
            argv = [str(a) for a in argv]
            runs[name].append({**in_subprocess(python, argv), "resident_before": resident})
        print(json.dumps({k: v[-1] for k, v in runs.items()}, default=str), file=sys.stderr)
    report_cold(args, store, meta, bytes_per_cell, runs)


def report_cold(args, store: Path, meta: dict, bytes_per_cell: float, runs: dict[str, list[dict]]) -> None:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    disk = statistics.median(r["mb_per_s"] for r in runs["disk"])
    disk_cells = disk * 1e6 / bytes_per_cell
    reference = random_entropy(str(store), args.batch_size)
    disk_runs = ", ".join(f"{r['mb_per_s']:.0f}" for r in runs["disk"])
    print(
        f"\nstore {store}: {meta['n_cells']:,} cells, {bytes_per_cell * meta['n_cells'] / 1e9:.1f} GB of CSR "
        f"chunks ({bytes_per_cell:.0f} B/cell); RAM {ram / 1e9:.1f} GB; disk {disk:.0f} MB/s = {disk_cells:,.0f} "
        f"cells/s (runs {disk_runs} MB/s); "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}"
    )
    print(
        "| loader | cells/s (median) | runs | vs disk | read from disk / pass | peak RSS | own (anon) at end "
        "| label entropy / random | CPU steal |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for name, rs in runs.items():
        if name == "disk":
            continue
        median = statistics.median(r["cells_per_s"] for r in rs)
        read = statistics.median(r["pass_read_mb"] / args.passes for r in rs) / 1e3
        own = max(r.get("memory_at_end_mb", {}).get("RssAnon", float("nan")) for r in rs)
        entropy_ = statistics.median(r["label_entropy"] for r in rs) / reference
        each = ", ".join(f"{r['cells_per_s']:.0f}" for r in rs)
        steal = statistics.median(r["steal_pct"] for r in rs)
        print(
            f"| {name} | {median:,.0f} | {each} | "
            f"{median / disk_cells:.2f} | {read:.1f} GB | {max(r['peak_rss_mb'] for r in rs) / 1e3:.2f} GB | "
            f"{own / 1e3:.2f} GB | {entropy_:.3f} | {steal:.0f} % |"
        )
    if args.json:
        args.json.write_text(json.dumps({"store": str(store), "meta": meta, "runs": runs}, indent=1, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--group", type=int, default=4, help="batches per shuffle group")
    parser.add_argument("--mix", type=int, default=32, help="rows per run shuffled within a group")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cellssl-bench"))
    parser.add_argument("--peers", default="cellssl,cellssl-rows,annbatch,backed,ceiling")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--annbatch-chunk-size", type=int, default=512, help="annbatch: rows per read")
    parser.add_argument("--annbatch-preload-nchunks", type=int, default=32, help="annbatch: reads per fetch")
    parser.add_argument("--cold", action="store_true", help="whole passes read from disk (store evicted first)")
    parser.add_argument("--disk-depth", help="e.g. 1,8,32: the disk's cold rate with that many files read at once")
    parser.add_argument("--passes", type=int, default=0, help="time whole passes instead of --seconds")
    parser.add_argument("--prefetch", type=int, default=2, help="cellssl: groups read ahead")
    parser.add_argument("--cold-prefetch", default="1,2", help="--cold: cellssl's groups read ahead, each a loader")
    parser.add_argument("--store-path", type=Path, help="an existing store to read (instead of building one)")
    parser.add_argument("--annbatch-collection", type=Path, help="--cold: annbatch's collection to read cold")
    parser.add_argument("--run", choices=["cellssl", "backed", "ceiling", "build"], help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--h5ad", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return child(args)
    known = {"cellssl", "cellssl-rows", "cellssl-prefetch1", "annbatch", "backed", "ceiling"}
    unknown = sorted(set(args.peers.split(",")) - known)
    if unknown:
        parser.error(f"--peers: unknown {', '.join(unknown)}; choose from {', '.join(sorted(known))}")

    if args.disk_depth:
        if args.store_path is None:
            parser.error("--disk-depth reads an existing store: give --store-path")
        return disk_depth(args.store_path, [int(n) for n in args.disk_depth.split(",")], args.repeats)
    if args.cold:
        if args.store_path is None:
            parser.error("--cold reads an existing store: give --store-path")
        args.passes = args.passes or 1
        return cold_main(args, args.store_path)
    args.workdir.mkdir(parents=True, exist_ok=True)
    # peak RSS survives exec on Linux: build the inputs in a child, so this parent stays small
    built = in_subprocess(
        sys.executable,
        [
            __file__,
            "--run",
            "build",
            "--workdir",
            str(args.workdir),
            "--cells",
            str(args.cells),
            "--genes",
            str(args.genes),
            "--peers",
            args.peers,
        ],
    )
    store, h5ad, timings = Path(built["store"]), Path(built["h5ad"]), built["timings"]
    common = ["--batch-size", str(args.batch_size), "--seconds", str(args.seconds)]
    cellssl = [__file__, "--run", "cellssl", "--store", str(store), "--workers", str(args.workers)]
    cellssl += ["--block-size", str(args.block_size), "--group", str(args.group), *common]
    commands = {
        "cellssl": (sys.executable, [*cellssl, "--mix", str(args.mix)]),
        # the same loader shuffling single rows within a group (mix_size 1): what runs of rows save
        "cellssl-rows": (sys.executable, [*cellssl, "--mix", "1"]),
        # one group read ahead (data.prefetch_groups=1, the default before the cold-read measurements)
        "cellssl-prefetch1": (sys.executable, [*cellssl, "--mix", str(args.mix), "--prefetch", "1"]),
        "annbatch": (
            ANNBATCH_PYTHON,
            [
                str(ROOT / "scripts/peers/annbatch_runner.py"),
                "--h5ad",
                str(h5ad),
                "--workdir",
                str(args.workdir / f"annbatch{args.cells}"),
                "--label-key",
                "cell_type",
                "--batch-size",
                str(args.batch_size),
                "--seconds",
                str(args.seconds),
                "--max-batches",
                "1000000",
                "--chunk-size",
                str(args.annbatch_chunk_size),
                "--preload-nchunks",
                str(args.annbatch_preload_nchunks),
            ],
        ),
        "backed": (sys.executable, [__file__, "--run", "backed", "--h5ad", str(h5ad), *common]),
        "ceiling": (sys.executable, [__file__, "--run", "ceiling", "--store", str(store), *common]),
    }
    peers = [p for p in args.peers.split(",") if p != "annbatch" or ANNBATCH_PYTHON.exists()]
    runs: dict[str, list[dict]] = {p: [] for p in peers}
    for repeat in range(args.repeats):
        for peer in peers:  # interleaved, so drifts in machine load hit every peer alike
            python, argv = commands[peer]
            if peer == "annbatch" and repeat > 0:
                argv = [*argv, "--skip-build"]
            runs[peer].append(in_subprocess(python, argv))
    reference = random_entropy(str(store), args.batch_size)
    median = {p: statistics.median(r["cells_per_s"] for r in runs[p]) for p in peers}
    rows = []
    for peer in peers:
        entropies = [r.get("label_entropy", float("nan")) for r in runs[peer]]
        rows.append(
            {
                "loader": peer,
                "cells_per_s (median)": median[peer],
                "runs": ", ".join(f"{r['cells_per_s']:.0f}" for r in runs[peer]),
                "vs annbatch": median[peer] / median["annbatch"] if "annbatch" in median else float("nan"),
                "vs ceiling": median[peer] / median["ceiling"] if "ceiling" in median else float("nan"),
                "label entropy / random": statistics.median(entropies) / reference,
                "peak RSS MB": max(r["peak_rss_mb"] for r in runs[peer]),
                "CPU steal %": statistics.median(r["steal_pct"] for r in runs[peer]),
            }
        )
    machine = f"{platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
    print(
        f"\n{args.cells} cells x {args.genes} genes ({timings['nnz_per_cell']:.0f} non-zeros/cell), "
        f"batch {args.batch_size}, {args.seconds:.0f} s x {args.repeats} runs per loader; {machine}"
    )
    print("| " + " | ".join(rows[0]) + " |\n|" + " --- |" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    print(
        f"\nrandom-batch label entropy {reference:.3f} nats; " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"workdir": str(args.workdir), "json": str(args.json)},
                    "timings": timings,
                    "runs": runs,
                    "rows": rows,
                },
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
