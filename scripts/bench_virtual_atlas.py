"""Generation speed of the virtual atlas (docs/simulator.md): cells/s for an auxiliary atlas with the default
world (2,000 genes), for each number of processes; also the CPU time of this process (the sampling when
processes=1). Runs are interleaved over ``--repeats``, so drifts in machine load hit all alike.

    OMP_NUM_THREADS=1 python scripts/bench_virtual_atlas.py --cells 100000 --processes 1,2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from cellssl.store.virtual_atlas import sidecar_paths, virtual_atlas_to_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--processes", default="1,2", help="comma-separated numbers of processes")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="folder for the stores (removed after each run)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_virtual_atlas_"))
    for repeat in range(args.repeats):
        for processes in map(int, args.processes.split(",")):
            out = workdir / f"auxiliary_{processes}.zarr"
            wall, cpu = time.perf_counter(), time.process_time()
            virtual_atlas_to_store(
                out, n_genes=args.genes, auxiliary={"n_cells": args.cells}, processes=processes, progress=False
            )
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(
                f"repeat {repeat} processes={processes}: {args.cells:,} cells x {args.genes:,} genes in {wall:.1f} s "
                f"= {args.cells / wall:,.0f} cells/s (this process's CPU {cpu:.1f} s)",
                flush=True,
            )
            shutil.rmtree(out)
            for path in sidecar_paths(out).values():
                path.unlink()
    if not args.workdir:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
