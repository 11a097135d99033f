"""Each loader at its best setting: sweep annbatch's ``chunk_size × preload_nchunks`` and cellssl's knobs.

    python scripts/bench_loader_sweep.py --workdir /tmp/b200 --cells 200000   # inputs from bench_loader.py

Every setting runs in its own process (``scripts/bench_loader.py --run cellssl`` / ``scripts/peers/
annbatch_runner.py``) on the inputs ``bench_loader.py`` built in ``--workdir``, for ``--seconds`` after warm-up,
``--repeats`` times, the settings interleaved run by run. A setting qualifies when its per-batch label entropy is
≥ ``--min-entropy`` (0.95) of batches drawn at random; the best qualifying setting of each loader is marked.
Prints markdown tables; ``--json`` writes the raw runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loader import ANNBATCH_PYTHON, ROOT, in_subprocess, random_entropy

# annbatch: rows per contiguous read (its collection stores 64 rows per zarr chunk) × chunks per fetch, with
# chunk_size × preload_nchunks ≥ the batch; cellssl: one knob at a time from its defaults
ANNBATCH_GRID = [(c, p) for c, p in itertools.product([64, 128, 256, 512, 1024], [8, 16, 32, 64, 128])]
CELLSSL_DEFAULTS = {"block-size": 1024, "group": 4, "mix": 32, "prefetch": 2}
CELLSSL_VARIATIONS = {"block-size": [512, 2048], "group": [2, 8], "mix": [16, 64, 128], "prefetch": [1, 3]}


def settings(batch_size: int) -> dict[str, tuple[Path | str, list[str]]]:
    """Each setting's name and its (python, argv) without the inputs."""
    out = {}
    for chunk, preload in ANNBATCH_GRID:
        if chunk * preload >= batch_size:
            out[f"annbatch chunk_size={chunk} preload_nchunks={preload}"] = (
                ANNBATCH_PYTHON,
                ["--chunk-size", str(chunk), "--preload-nchunks", str(preload)],
            )
    variants = [dict(CELLSSL_DEFAULTS)]
    variants += [{**CELLSSL_DEFAULTS, k: v} for k, values in CELLSSL_VARIATIONS.items() for v in values]
    for v in variants:
        name = "cellssl " + " ".join(f"{k.replace('-', '_')}={x}" for k, x in v.items())
        out[name] = (sys.executable, [a for k, x in v.items() for a in (f"--{k}", str(x))])
    return out


def command(name: str, extra: list[str], args: argparse.Namespace) -> list[str]:
    common = ["--batch-size", str(args.batch_size), "--seconds", str(args.seconds)]
    if name.startswith("annbatch"):
        h5ad = args.workdir / f"syn{args.cells}.h5ad"
        work = args.workdir / f"annbatch{args.cells}"
        runner = str(ROOT / "scripts/peers/annbatch_runner.py")
        return [
            runner,
            "--h5ad",
            str(h5ad),
            "--workdir",
            str(work),
            "--skip-build",
            "--label-key",
            "cell_type",
            "--max-batches",
            "1000000",
            *common,
            *extra,
        ]
    store = args.workdir / f"syn{args.cells}.zarr"
    return [str(ROOT / "scripts/bench_loader.py"), "--run", "cellssl", "--store", str(store), *common, *extra]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cellssl-bench"))
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--min-entropy", type=float, default=0.95)
    parser.add_argument("--only", default="", help="comma list of loader names to sweep (annbatch, cellssl)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    chosen = {
        n: s for n, s in settings(args.batch_size).items() if not args.only or n.split()[0] in args.only.split(",")
    }
    runs: dict[str, list[dict]] = {name: [] for name in chosen}
    for _ in range(args.repeats):
        for name, (python, extra) in chosen.items():  # interleaved, so drifts in load hit every setting alike
            runs[name].append(in_subprocess(python, command(name, extra, args)))
            print(f"{name}: {runs[name][-1]['cells_per_s']:.0f} cells/s", file=sys.stderr)
    report(args, runs)


def report(args: argparse.Namespace, runs: dict[str, list[dict]]) -> None:
    reference = random_entropy(str(args.workdir / f"syn{args.cells}.zarr"), args.batch_size)
    rows = []
    for name, rs in runs.items():
        median = statistics.median(r["cells_per_s"] for r in rs)
        entropy = statistics.median(r["label_entropy"] for r in rs) / reference
        steal = statistics.median(r["steal_pct"] for r in rs)
        rows.append(
            (
                name,
                median,
                ", ".join(f"{r['cells_per_s']:.0f}" for r in rs),
                entropy,
                steal,
                max(r["peak_rss_mb"] for r in rs),
            )
        )
    best = {}
    for name, median, _each, entropy, _steal, _rss in rows:
        loader = name.split()[0]
        if entropy >= args.min_entropy and median > best.get(loader, ("", 0))[1]:
            best[loader] = (name, median)
    print(
        f"\n{args.cells} cells, batch {args.batch_size}, {args.seconds:.0f} s x {args.repeats} runs per setting; "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    print("| setting | cells/s (median) | runs | label entropy / random | CPU steal | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, median, each, entropy, steal, rss in sorted(rows, key=lambda r: (r[0].split()[0], -r[1])):
        mark = "**" if best.get(name.split()[0], ("",))[0] == name else ""
        print(f"| {mark}{name}{mark} | {median:,.0f} | {each} | {entropy:.3f} | {steal:.0f} % | {rss / 1e3:.2f} GB |")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "best": best}, indent=1, default=str))


if __name__ == "__main__":
    main()
