"""h5ad → store conversion benchmark: cells/s of ``anndata_to_store`` on the loader benchmark's synthetic `.h5ad`.

    python scripts/bench_convert.py --cells 200000 --repeats 5 --memory-mb 1024,256
    python scripts/bench_convert.py --src src,/tmp/old/src   # this tree against a checkout of another commit

Builds (once) the same inputs as ``scripts/bench_loader.py`` (synthetic store → float32 CSR `.h5ad`), then runs
each conversion in a fresh process, so every run pays what a user's ``cellssl-prepare`` pays except Python's
imports: the backed reads, validation, the shuffle (in memory, or through buckets on disk when the data
exceeds ``--memory-mb``), and the tensorstore writes. The previous output is removed before the clock starts.
Settings run interleaved (drifts in machine load hit every setting alike). Prints a markdown table of
medians and peak RSS per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loader import in_subprocess


def convert_once(h5ad: str, output: str, memory_mb: float) -> dict:
    from cellssl.store import CellStore, anndata_to_store

    start = time.perf_counter()
    anndata_to_store(
        [h5ad], output, label_columns=["cell_type"], donor_column="donor_id", memory_mb=memory_mb, overwrite=True,
        progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    n_cells = CellStore(output).metadata["n_cells"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "cells_per_s": n_cells / seconds, "peak_rss_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-mb", default="1024", help="comma list of memory_mb settings")
    parser.add_argument("--src", default="", help="comma list of source trees (src folders) to compare")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cellssl-bench"))
    parser.add_argument("--run", nargs=3, help=argparse.SUPPRESS)  # h5ad output memory_mb: one conversion
    args = parser.parse_args()
    if args.run:
        print(json.dumps(convert_once(args.run[0], args.run[1], float(args.run[2]))))
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    # peak RSS survives fork and exec on Linux: the inputs are built in a child, so that this parent stays small
    # and each conversion's peak is its own
    loader_bench = str(Path(__file__).resolve().parent / "bench_loader.py")
    build = ["--run", "build", "--workdir", str(args.workdir), "--cells", str(args.cells), "--genes", str(args.genes)]
    h5ad = Path(in_subprocess(sys.executable, [loader_bench, *build, "--peers", "backed"])["h5ad"])
    output = args.workdir / f"bench_convert{args.cells}.zarr"
    trees = [str(Path(t).resolve()) for t in args.src.split(",") if t] or [""]
    missing = [t for t in trees if t and not (Path(t) / "cellssl").is_dir()]
    if missing:
        parser.error(f"--src: no cellssl package in {', '.join(missing)}")
    settings = [(tree, float(m)) for tree in trees for m in args.memory_mb.split(",")]
    runs: dict[tuple[str, float], list[dict]] = {setting: [] for setting in settings}
    for _ in range(args.repeats):
        for tree, memory_mb in settings:
            shutil.rmtree(output, ignore_errors=True)
            env = {"PYTHONPATH": tree} if tree else {}
            runs[tree, memory_mb].append(
                in_subprocess(sys.executable, [__file__, "--run", str(h5ad), str(output), str(memory_mb)], env)
            )
    shutil.rmtree(output, ignore_errors=True)
    print(
        f"\n{args.cells} cells x {args.genes} genes from {h5ad.name} ({h5ad.stat().st_size / 1e9:.2f} GB), "
        f"{args.repeats} runs per setting; {platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print("| source | memory_mb | cells/s (median) | runs (cells/s) | seconds (median) | peak RSS MB (max) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (tree, memory_mb), results in runs.items():
        rates = [r["cells_per_s"] for r in results]
        print(
            f"| {tree or 'installed'} | {memory_mb:g} | {statistics.median(rates):,.0f} | "
            f"{' / '.join(f'{r:,.0f}' for r in rates)} | {statistics.median(r['seconds'] for r in results):.2f} | "
            f"{max(r['peak_rss_mb'] for r in results):,.0f} |"
        )


if __name__ == "__main__":
    main()
