"""First touch of fresh memory: numpy's huge-page-advised ``np.empty`` against a plain anonymous mapping.

    python scripts/bench_first_touch.py --gb 1 --repeats 3

Why the converters allocate their placement arrays with ``cellssl.store.buckets.unadvised_empty``: numpy
advises the kernel to back arrays of 4 MB or more with huge pages, and where none can be had (fragmented
memory, THP ``defrag=madvise``) each first touch stalls. Each allocation is filled once and timed; the two
kinds alternate, with a pause before each so that memory freed by the previous one has gone back to the
host, as it has between two conversions. Prints a markdown table of medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from cellssl.store.buckets import unadvised_empty


def fill_seconds(allocate, n: int) -> float:
    start = time.perf_counter()
    array = allocate(n, np.uint16)
    array.fill(1)
    seconds = time.perf_counter() - start
    del array
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pause", type=float, default=6.0, help="seconds before each allocation")
    args = parser.parse_args()
    n = int(args.gb * 1e9) // 2
    kinds = {"np.empty (numpy's huge-page advice)": np.empty, "unadvised_empty (plain mapping)": unadvised_empty}
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(args.repeats):
        for kind, allocate in kinds.items():
            time.sleep(args.pause)
            seconds[kind].append(fill_seconds(allocate, n))
    thp = Path("/sys/kernel/mm/transparent_hugepage/defrag")
    print(
        f"\nfill {args.gb:g} GB of fresh memory, {args.repeats} runs each; {platform.node()}, {os.cpu_count()} cores, "
        f"THP defrag: {thp.read_text().strip() if thp.exists() else 'n/a'}; {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print("| allocation | seconds (median) | runs |")
    print("| --- | --- | --- |")
    for kind, runs in seconds.items():
        print(f"| {kind} | {statistics.median(runs):.2f} | {' / '.join(f'{s:.2f}' for s in runs)} |")


if __name__ == "__main__":
    main()
