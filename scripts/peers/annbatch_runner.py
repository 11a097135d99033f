"""Throughput of annbatch 0.3.x as a peer loader: build its pre-shuffled collection, time shuffled batches.

Runs under .venv-annbatch (Python >= 3.12; see setup_annbatch.sh), never under the project's .venv:

    .venv-annbatch/bin/python scripts/peers/annbatch_runner.py --h5ad a.h5ad [b.h5ad ...] --workdir DIR \
        [--label-key cell_type] [--batch-size 4096] [--seconds 20] [--max-batches N] [--skip-build]

(a) ``annbatch.DatasetCollection.add_adatas`` writes the shuffled, sharded Zarr v3 collection to
``DIR/annbatch_collection.zarr`` (in a child process, so its memory is reported apart from the loader's);
(b) ``annbatch.Loader`` with annbatch's ``RandomSampler`` yields shuffled scipy CSR batches (as delivered, not
densified) for ``--seconds`` / ``--max-batches`` after ``--warmup-batches``, epoch after epoch, with the zarrs
codec pipeline; (c) one line of JSON goes to stdout, everything else (progress bars, warnings) to stderr.
Inputs may also be AnnData Zarr stores (a directory), e.g. a cellssl store.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import platform
import resource
import shutil
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import zarr
from humanfriendly import parse_size

COLLECTION_NAME = "annbatch_collection.zarr"
BUILD_RECORD = "annbatch_collection.build.json"
ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"
# annbatch's documented on-disk defaults for DatasetCollection.add_adatas (0.3.1): 64 obs per zarr chunk,
# 1 GB shards, Blosc lz4 clevel 3 with byte shuffle, 1000-row contiguous blocks moved between output datasets.
N_OBS_PER_CHUNK = 64
SHARD_SIZE = "1GB"
SHUFFLE_CHUNK_SIZE = 1000


def _configure_zarr(strict: bool) -> None:
    """Select the zarrs (Rust) codec pipeline, which annbatch's docs call necessary for local-disk performance."""
    import zarrs  # noqa: F401  (importing registers the pipeline)

    zarr.config.set({"codec_pipeline.path": ZARRS_PIPELINE, "codec_pipeline.strict": strict})
    warnings.filterwarnings("ignore", message=".*vlen-utf8.*", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"annbatch.*")


def _lenient() -> Any:
    """Context in which zarrs may fall back to zarr-python's pipeline (for obs strings, read once, untimed)."""
    return zarr.config.set({"codec_pipeline.strict": False})


def _open_input(path: str) -> h5py.Group | zarr.Group:
    """Open an .h5ad file (h5py) or an AnnData Zarr store (directory) read-only."""
    return zarr.open_group(path, mode="r") if Path(path).is_dir() else h5py.File(path, "r")


def _x_elem(root: h5py.Group | zarr.Group, counts_layer: str | None) -> Any:
    if counts_layer is None:
        return root["X"]
    if "layers" not in root or counts_layer not in root["layers"]:
        raise SystemExit(f"annbatch_runner: an input has no layers/{counts_layer}")
    return root["layers"][counts_layer]


def _is_sparse_group(elem: Any) -> bool:
    return elem.attrs.get("encoding-type") in ("csr_matrix", "csc_matrix")


def _index(group: h5py.Group | zarr.Group) -> pd.Index:
    return pd.Index(ad.io.read_elem(group[group.attrs.get("_index", "_index")]))


def _load_input(
    path: str, *, label_key: str | None, counts_layer: str | None, max_cells: int | None = None
) -> ad.AnnData:
    """``load_adata`` for the build: lazy X (dask, 1000-row chunks), obs = only the label column, var = names.

    annbatch's default loader would carry every obs column, obsm, layers and raw into the collection; the
    benchmark needs only the counts and (optionally) one label.
    """
    root = _open_input(path)
    obs_group = root["obs"]
    columns = {}
    if label_key is not None:
        if label_key not in obs_group:
            raise SystemExit(f"annbatch_runner: {path}: obs has no column {label_key!r}")
        columns[label_key] = ad.io.read_elem(obs_group[label_key])
    adata = ad.AnnData(
        X=ad.experimental.read_elem_lazy(_x_elem(root, counts_layer)),
        obs=pd.DataFrame(columns, index=_index(obs_group)),
        var=pd.DataFrame(index=_index(root["var"])),
    )
    return adata if max_cells is None else adata[:max_cells].copy()


def _bytes_per_row(path: str, counts_layer: str | None) -> float:
    """Uncompressed bytes per cell of the counts matrix (what annbatch holds in memory per row while shuffling)."""
    root = _open_input(path)
    x = _x_elem(root, counts_layer)
    if _is_sparse_group(x):
        n_obs = int(x.attrs["shape"][0])
        nnz = x["data"].shape[0]
        total = nnz * (x["data"].dtype.itemsize + x["indices"].dtype.itemsize)
        total += x["indptr"].shape[0] * x["indptr"].dtype.itemsize
    else:
        n_obs = int(x.shape[0])
        total = int(np.prod(x.shape)) * x.dtype.itemsize
    return total / max(n_obs, 1)


def _dataset_size_obs(paths: list[str], dataset_size: str, counts_layer: str | None) -> int:
    """``--dataset-size`` as a cell count: an int passes through, a size ("4GB") is divided by bytes per cell."""
    if dataset_size.isdigit():
        return int(dataset_size)
    per_row = float(np.mean([_bytes_per_row(p, counts_layer) for p in paths]))
    return max(SHUFFLE_CHUNK_SIZE, int(parse_size(dataset_size, binary=True) / max(per_row, 1.0)))


def _build(args: argparse.Namespace, collection_path: str, conn: Any) -> None:
    """Child process: write the pre-shuffled collection and send back its wall time."""
    with contextlib.redirect_stdout(sys.stderr):
        _configure_zarr(strict=False)
        from annbatch import DatasetCollection

        n_obs_per_dataset = _dataset_size_obs(args.h5ad, args.dataset_size, args.counts_layer)
        t0 = time.perf_counter()
        DatasetCollection(collection_path, mode="a").add_adatas(
            args.h5ad,
            load_adata=lambda p: _load_input(
                str(p), label_key=args.label_key, counts_layer=args.counts_layer, max_cells=args.max_cells
            ),
            n_obs_per_chunk=N_OBS_PER_CHUNK,
            shard_size=SHARD_SIZE,
            dataset_size=n_obs_per_dataset,
            shuffle_chunk_size=min(SHUFFLE_CHUNK_SIZE, n_obs_per_dataset),
            shuffle=True,
            rng=np.random.default_rng(args.seed),
        )
        conn.send({"build_s": time.perf_counter() - t0, "n_obs_per_dataset": n_obs_per_dataset})
        conn.close()


def _maybe_build(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    collection_path = workdir / COLLECTION_NAME
    record_path = workdir / BUILD_RECORD
    inputs = [str(Path(p).resolve()) for p in args.h5ad]
    if args.skip_build and collection_path.exists():
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        if record.get("inputs") not in (None, inputs):
            print(f"annbatch_runner: warning: {collection_path} was built from {record['inputs']}", file=sys.stderr)
        if args.label_key is not None and record.get("label_key", args.label_key) != args.label_key:
            raise SystemExit(f"annbatch_runner: {collection_path} has no obs {args.label_key!r}; drop --skip-build")
        return {
            "build_s": None,
            "build_reused": True,
            "build_s_previous": record.get("build_s"),
            "build_peak_rss_mb": None,
            "n_obs_per_dataset": record.get("n_obs_per_dataset"),
        }
    if collection_path.exists():
        zarr_json = collection_path / "zarr.json"
        if not zarr_json.exists():
            raise SystemExit(f"annbatch_runner: {collection_path} exists and is not a Zarr v3 group; not removing it")
        shutil.rmtree(collection_path)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")  # a fresh process: its peak RSS is the build's alone
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_build, args=(args, str(collection_path), child))
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:  # the child died before sending
        result = None
    proc.join()
    if proc.exitcode != 0 or result is None:
        raise SystemExit(f"annbatch_runner: building the collection failed (exit code {proc.exitcode})")
    result["build_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    record_path.write_text(
        json.dumps(
            {"inputs": inputs, **result, "label_key": args.label_key, "counts_layer": args.counts_layer}, indent=1
        )
    )
    return {**result, "build_reused": False}


def _loader_adata(group: zarr.Group, label_key: str | None) -> ad.AnnData:
    """``load_adata`` for ``Loader.use_collection``: on-disk X and, if given, the one obs column to yield.

    With no obs columns annbatch yields ``obs=None`` and skips its per-batch pandas work entirely.
    """
    x = group["X"]
    backed = ad.io.sparse_dataset(x) if isinstance(x, zarr.Group) else x
    columns = {}
    if label_key is not None:
        with _lenient():  # string categories are vlen-utf8, which zarrs does not decode; X never is
            columns[label_key] = ad.io.read_elem(group["obs"][label_key])
    return ad.AnnData(X=backed, obs=pd.DataFrame(columns, index=pd.RangeIndex(backed.shape[0]).astype(str)))


def _codes(labels: Any) -> np.ndarray:
    """Integer codes of a label column (categorical codes, else factorised values)."""
    if isinstance(labels, pd.Series) and isinstance(labels.dtype, pd.CategoricalDtype):
        return labels.cat.codes.to_numpy()
    return pd.factorize(np.asarray(labels))[0]


def _storage_read_bytes() -> int:
    """Bytes this process has had read from storage (the page cache's misses), from /proc/self/io."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["read_bytes"])


def _entropy(codes: np.ndarray) -> float:
    """Shannon entropy (nats) of the distribution of integer label codes."""
    counts = np.bincount(codes[codes >= 0])
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _measure(args: argparse.Namespace, collection_path: Path) -> dict[str, Any]:
    from annbatch import DatasetCollection, Loader

    collection = DatasetCollection(str(collection_path), mode="r")
    via_obs = args.label_key is not None and args.labels_via == "obs"
    via_index = args.label_key is not None and args.labels_via == "index"
    global_codes = None
    if args.label_key is not None:
        with _lenient():  # in the loader's row order: datasets in collection order, rows as stored
            global_codes = _codes(collection.obs(columns=[args.label_key])[args.label_key])
    with ad.settings.override(remove_unused_categories=False):  # keep categorical codes as written (annbatch docs)
        loader = Loader(
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            preload_nchunks=args.preload_nchunks,
            shuffle=True,
            drop_last=True,
            return_index=via_index,
            preload_to_gpu=False,
            to=None,
            rng=np.random.default_rng(args.seed),
        ).use_collection(collection, load_adata=lambda g: _loader_adata(g, args.label_key if via_obs else None))
    first = next(iter(collection))["X"]
    data_arr = first["data"] if isinstance(first, zarr.Group) else first
    pipeline = type(data_arr._async_array.codec_pipeline).__name__

    batches = cells = nnz = epochs = seen = 0
    entropies: list[float] = []
    harness_s = 0.0  # the entropy bookkeeping below is the harness's work, not the loader's: not timed
    x_type = None
    read_before = _storage_read_bytes()
    t0 = time.perf_counter() if args.warmup_batches == 0 else None  # 0: the first fetch is timed too
    deadline = t0 + args.seconds if t0 is not None else math.inf
    done = False
    while not done:
        epochs += 1
        n_before = seen
        for batch in loader:
            x = batch["X"]  # scipy.sparse.csr_matrix (np.ndarray if the input X was dense), already in memory
            seen += 1
            if t0 is not None:
                batches += 1
                cells += x.shape[0]
                nnz += int(x.nnz) if hasattr(x, "nnz") else int(np.count_nonzero(x))
            if args.label_key is not None:
                h0 = time.perf_counter()
                codes = _codes(batch["obs"][args.label_key]) if via_obs else global_codes[batch["index"]]
                entropies.append(_entropy(codes))
                harness_s += time.perf_counter() - h0 if t0 is not None else 0.0
            if t0 is None and seen == args.warmup_batches:
                x_type = f"{type(x).__module__}.{type(x).__name__}"
                t0 = time.perf_counter()
                deadline = t0 + args.seconds
            elif t0 is not None and (
                time.perf_counter() - harness_s >= deadline
                or (args.max_batches is not None and batches >= args.max_batches)
            ):
                done = True
                break
        if seen == n_before:
            raise SystemExit("annbatch_runner: the loader yields no full batch; lower --batch-size")
        if args.passes and epochs >= args.passes:  # whole passes over the collection
            done = True
    elapsed = time.perf_counter() - t0 - harness_s
    out: dict[str, Any] = {
        "cells_per_s": cells / elapsed if batches else None,
        "batches": batches,
        "cells": cells,
        "elapsed_s": round(elapsed, 4),
        "epochs_started": epochs,
        "n_obs": loader.n_obs,
        "n_vars": loader.n_var,
        "nnz_per_cell": round(nnz / cells, 2) if cells else None,
        "x_type": x_type,
        "codec_pipeline": pipeline,
        "pass_read_mb": (_storage_read_bytes() - read_before) / 1e6,  # from storage, not the page cache
    }
    if global_codes is not None:
        out["label_entropy"] = float(np.mean(entropies))  # over every delivered batch, warm-up included
        out["label_entropy_global"] = _entropy(global_codes)  # what a perfectly uniform shuffle approaches
    return out


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--h5ad", nargs="+", required=True, help=".h5ad files (or AnnData .zarr stores) to read")
    p.add_argument("--workdir", required=True, type=Path, help=f"where {COLLECTION_NAME} is written")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--seconds", type=float, default=20.0, help="timed window after the warm-up")
    p.add_argument("--max-batches", type=int, default=None, help="stop after this many timed batches")
    p.add_argument("--warmup-batches", type=int, default=2)
    p.add_argument("--passes", type=int, default=0, help="stop after this many whole passes (epochs)")
    p.add_argument("--max-cells", type=int, default=None, help="build from the first N cells of the input only")
    p.add_argument("--skip-build", action="store_true", help="reuse an existing collection in --workdir")
    p.add_argument("--label-key", default=None, help="obs column: carried into the collection, yielded per batch")
    p.add_argument(
        "--labels-via",
        choices=("obs", "index"),
        default="obs",
        help="obs: annbatch yields the label column in batch['obs'] (its documented path, costs pandas work per "
        "batch); index: it yields row indices (return_index=True) and labels are looked up in an array",
    )
    p.add_argument("--counts-layer", default=None, help="read layers/<name> instead of X (as cellssl-prepare)")
    p.add_argument("--chunk-size", type=int, default=512, help="contiguous rows per read (annbatch default)")
    p.add_argument("--preload-nchunks", type=int, default=32, help="chunks per fetch (annbatch default)")
    p.add_argument(
        "--dataset-size",
        default="2GB",
        help="cells per output dataset, or their uncompressed size; the build holds about 3x this in memory "
        "(annbatch's default, 20GB, does not fit a 24 GiB machine)",
    )
    p.add_argument(
        "--zarrs-strict",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="while loading, fail instead of silently falling back to zarr-python's pipeline",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.batch_size > args.chunk_size * args.preload_nchunks:
        p.error("--batch-size must be <= --chunk-size * --preload-nchunks")
    if args.warmup_batches < 0:
        p.error("--warmup-batches must be >= 0 (0: the first fetch is timed too, as a cold pass must be)")
    return args


def main() -> None:
    args = _parse()
    workdir: Path = args.workdir
    with contextlib.redirect_stdout(sys.stderr):
        build = _maybe_build(args, workdir)
        _configure_zarr(strict=args.zarrs_strict)
        measured = _measure(args, workdir / COLLECTION_NAME)
    result = {
        "loader": "annbatch",
        "version": version("annbatch"),
        "cells_per_s": measured.pop("cells_per_s"),
        "batches": measured.pop("batches"),
        "cells": measured.pop("cells"),
        "build_s": build["build_s"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "build_peak_rss_mb": build["build_peak_rss_mb"],
        **({"label_entropy": measured.pop("label_entropy")} if "label_entropy" in measured else {}),
        **measured,
        "settings": {
            "batch_size": args.batch_size,
            "chunk_size": args.chunk_size,
            "preload_nchunks": args.preload_nchunks,
            "sampler": "RandomSampler(shuffle=True, drop_last=True)",
            "preload_to_gpu": False,
            "to": None,
            "label_key": args.label_key,
            "labels_via": args.labels_via if args.label_key is not None else None,
            "warmup_batches": args.warmup_batches,
            "seconds": args.seconds,
            "max_batches": args.max_batches,
            "seed": args.seed,
            "codec_pipeline_path": zarr.config.get("codec_pipeline.path"),
            "zarrs_strict": args.zarrs_strict,
            "zarr_threads": zarr.config.get("threading.max_workers"),
            "build": {
                "reused": build["build_reused"],
                "build_s_previous": build.get("build_s_previous"),
                "shuffle": True,
                "n_obs_per_dataset": build.get("n_obs_per_dataset"),
                "dataset_size": args.dataset_size,
                "shuffle_chunk_size": SHUFFLE_CHUNK_SIZE,
                "n_obs_per_chunk": N_OBS_PER_CHUNK,
                "shard_size": SHARD_SIZE,
                "compressor": "blosc lz4 clevel=3 shuffle",
                "counts_layer": args.counts_layer,
            },
            "inputs": [str(p) for p in args.h5ad],
            "versions": {p: version(p) for p in ("zarrs", "zarr", "anndata", "numpy", "scipy", "pandas")}
            | {"python": platform.python_version()},
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
