"""AnnData (in memory or backed `.h5ad`, one or several files) → cell store, in bounded memory.

Pass 1 streams every file in row chunks to validate the counts and count what will be written (empty
cells, non-zeros, the largest value); for large backed CSR files whose genes all enter the vocabulary it
reads only the values (row lengths come from the row pointers). Chunks are read ahead on two threads. The
split and each cell's final row (grouped by split, shuffled within it) are then decided from obs alone.
Pass 2 streams the files again, maps genes onto the shared vocabulary, and scatters each chunk's rows into
buckets of consecutive final rows (on disk when the data exceeds ``memory_mb``); each bucket is then sorted
into final order and appended to the :class:`StoreWriter`. The buckets and the pass-1 cache stay near
``memory_mb`` whatever the input size.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from cellssl.store.buckets import BYTES_PER_NONZERO, RowBuckets
from cellssl.store.format import DEFAULT_CHUNK_SIZE, DEFAULT_SHARD_SIZE, narrowest_count_dtype
from cellssl.store.sources import BUILTIN_SOURCES
from cellssl.store.splits import SPLITS, assign_splits
from cellssl.store.validation import InputError, check_columns, check_counts, check_unique_genes
from cellssl.store.vocabulary import GeneTable, build_vocabulary
from cellssl.store.writer import StoreWriter

log = logging.getLogger(__name__)

# bytes a pass-1 block costs per stored entry: a float32 value and an int32 column index, as files hold them
BYTES_CACHED_PER_NONZERO = 8


def _counts_matrix(adata: ad.AnnData, counts_layer: str | None, name: str) -> Any:
    """The matrix holding counts: X, a layer, or raw.X (backed datasets stay on disk)."""
    if counts_layer in (None, "X"):
        matrix = adata.X
    elif counts_layer == "raw":
        if adata.raw is None:
            raise InputError(name, "raw", "the file has no .raw", "set counts_layer to X or a layer name")
        matrix = adata.raw.X
    elif counts_layer in adata.layers:
        matrix = adata.layers[counts_layer]
    else:
        layers = ", ".join(adata.layers.keys()) or "none"
        raise InputError(name, f"layers['{counts_layer}']", "no such layer", f"choose one of: X, raw, {layers}")
    if matrix is None:
        raise InputError(name, "X", "the data set has no count matrix", "set counts_layer")
    return matrix


def _read_ahead(read: Callable[[int], Any], starts: Sequence[int], read_ahead: int = 2) -> Iterator[Any]:
    """``read(start)`` for each start, in order, the next ``read_ahead`` running on threads meanwhile (h5py
    releases the GIL while it reads: two readers read twice as fast here, and reading overlaps validation,
    scattering and writing)."""
    with ThreadPoolExecutor(max_workers=read_ahead) as readers:
        pending = deque(readers.submit(read, start) for start in starts[:read_ahead])
        for i in range(len(starts)):
            result = pending.popleft().result()
            if i + read_ahead < len(starts):
                pending.append(readers.submit(read, starts[i + read_ahead]))
            yield result


def _row_chunks(matrix: Any, n_rows: int, chunk_rows: int) -> Iterator[tuple[int, sp.csr_matrix]]:
    starts = range(0, n_rows, chunk_rows)
    blocks = _read_ahead(lambda start: sp.csr_matrix(matrix[start : min(start + chunk_rows, n_rows)]), starts)
    yield from zip(starts, blocks, strict=True)


def _slice(values: Any, length: int, start: int) -> np.ndarray:
    return values[start : start + length]


def _stored_nonzeros(matrix: Any) -> int | None:
    """Stored entries of a backed CSR matrix, from its last row pointer; None for any other matrix."""
    return int(matrix.group["indptr"][-1]) if isinstance(matrix, ad.abc.CSRDataset) else None


def _var_of(adata: ad.AnnData, counts_layer: str | None) -> pd.DataFrame:
    return adata.raw.var if counts_layer == "raw" and adata.raw is not None else adata.var


def _remap_genes(block: sp.csr_matrix, columns: np.ndarray, n_genes: int) -> sp.csr_matrix:
    """Move a chunk's genes to their vocabulary columns (``-1``: dropped), keeping rows sorted by column."""
    if len(columns) == n_genes and np.array_equal(columns, np.arange(n_genes)):
        return block  # the file's genes are the vocabulary
    target = columns[block.indices]
    kept = columns >= 0
    if np.all(np.diff(columns[kept]) > 0):  # order preserved: filter entries, no sort needed
        keep = target >= 0
        if keep.all():
            return sp.csr_matrix((block.data, target, block.indptr), shape=(block.shape[0], n_genes))
        running = np.concatenate([[0], np.cumsum(keep)])
        return sp.csr_matrix((block.data[keep], target[keep], running[block.indptr]), shape=(block.shape[0], n_genes))
    keep = target >= 0
    row_of = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
    return sp.csr_matrix((block.data[keep], (row_of[keep], target[keep])), shape=(block.shape[0], n_genes))


def _nonzeros_per_row(block: sp.csr_matrix, columns: np.ndarray) -> np.ndarray:
    """Stored entries per row that fall into the vocabulary."""
    if (columns >= 0).all():
        return np.diff(block.indptr)
    running = np.concatenate([[0], np.cumsum(columns[block.indices] >= 0)])
    return running[block.indptr[1:]] - running[block.indptr[:-1]]


def anndata_to_store(
    sources: Sequence[str | Path | ad.AnnData],
    output: str | Path,
    *,
    counts_layer: str | None = None,
    label_columns: Sequence[str] = (),
    donor_column: str | None = None,
    vocabulary: str = "union",
    match_by: str = "auto",
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    normalised: bool = False,
    chunk_rows: int = 16_384,
    memory_mb: float = 1024,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
    progress: bool = True,
    source_name: str | None = None,
) -> Path:
    """Convert AnnData objects or `.h5ad` paths (opened backed) into one cell store at ``output``."""
    output = Path(output)
    if memory_mb <= 0:
        raise ValueError(f"memory_mb must be positive, got {memory_mb}")
    if output.exists() and not overwrite:
        raise InputError(str(output), "output", "a store already exists here", "remove it or pass overwrite=true")
    if not sources:
        raise InputError(str(output), "sources", "no input data sets", "give at least one .h5ad path")
    adatas, names = [], []
    for source in sources:
        if isinstance(source, ad.AnnData):
            adatas.append(source)
            names.append(source_name or "anndata")
            continue
        path = Path(source)
        if not path.is_file():
            raise InputError(str(path), "path", "file not found", "give the path of an existing .h5ad file")
        try:
            adatas.append(ad.read_h5ad(path, backed="r"))
        except Exception as err:  # h5py/anndata raise many types for a corrupt file
            raise InputError(
                str(path), "file", f"not a readable .h5ad ({type(err).__name__}: {err})", "re-export it"
            ) from err
        names.append(str(path))

    columns = [*label_columns, *([donor_column] if donor_column else [])]
    tables = []
    for adata, name in zip(adatas, names, strict=True):
        var = _var_of(adata, counts_layer)
        check_unique_genes(var.index, name)
        check_columns(adata.obs, columns, name)
        if adata.n_obs == 0 or var.shape[0] == 0:
            raise InputError(
                name, "X", f"the data set is empty (shape {adata.n_obs} × {var.shape[0]})", "give cells and genes"
            )
        tables.append(GeneTable.from_var(var))
    mapping = build_vocabulary(tables, names, vocabulary, match_by)
    n_genes = len(mapping.genes.symbols)

    # pass 1: validate and measure, chunk by chunk
    matrices = [_counts_matrix(a, counts_layer, name) for a, name in zip(adatas, names, strict=True)]
    field = "X" if counts_layer in (None, "X") else ("raw.X" if counts_layer == "raw" else f"layers['{counts_layer}']")
    stored = [_stored_nonzeros(m) for m in matrices]
    # backed CSR files whose genes all enter the vocabulary, too large for the pass-1 cache: their row lengths are
    # the row pointers' differences, so pass 1 reads only the values (half the bytes) to check them
    values_only = (
        all(n is not None for n in stored)
        and all((cols >= 0).all() for cols in mapping.columns)
        and sum(stored) * BYTES_CACHED_PER_NONZERO > memory_mb * 2**19
    )
    nonzeros, max_value = [], 0.0
    cached: list[list[sp.csr_matrix]] | None = None if values_only else []  # pass-1 blocks, while they fit
    cached_bytes = 0
    show = None if progress else True  # None: tqdm shows bars only on a terminal
    with tqdm(total=sum(a.n_obs for a in adatas), desc="validate", unit="cells", disable=show) as bar:
        for adata, name, cols, matrix in zip(adatas, names, mapping.columns, matrices, strict=True):
            if values_only:
                indptr = matrix.group["indptr"][:]
                nonzeros.append(np.diff(indptr).astype(np.int64))
                values, step = matrix.group["data"], max(1, chunk_rows * int(indptr[-1]) // max(adata.n_obs, 1))
                starts = range(0, int(indptr[-1]), step)
                chunks = _read_ahead(functools.partial(_slice, values, step), starts)
                for start, chunk in zip(starts, chunks, strict=True):
                    check_counts(chunk, name, field, normalised=normalised)
                    max_value = max(max_value, float(chunk.max()))
                    bar.update(int(np.searchsorted(indptr, start + len(chunk)) - np.searchsorted(indptr, start)))
                continue
            file_nonzeros = np.empty(adata.n_obs, dtype=np.int64)
            if cached is not None:
                cached.append([])
            for start, block in _row_chunks(matrix, adata.n_obs, chunk_rows):
                check_counts(block, name, field, normalised=normalised)
                if block.nnz:
                    max_value = max(max_value, float(block.data.max()))
                file_nonzeros[start : start + block.shape[0]] = _nonzeros_per_row(block, cols)
                if cached is not None:
                    cached_bytes += block.data.nbytes + block.indices.nbytes + block.indptr.nbytes
                    cached = None if cached_bytes > memory_mb * 2**19 else cached  # half the budget
                    if cached is not None:
                        cached[-1].append(block)
                bar.update(block.shape[0])
            nonzeros.append(file_nonzeros)

    # plan: drop empty cells, split, and give every kept cell its final row
    obs = pd.concat(
        [
            pd.DataFrame({c: a.obs[c].astype(str).to_numpy() for c in columns}, index=a.obs_names.astype(str))
            for a in adatas
        ]
    )
    if len(adatas) > 1 and obs.index.has_duplicates:  # the same barcode in two files: prefix with the file
        obs.index = pd.Index([f"{i}:{cell}" for i, a in enumerate(adatas) for cell in a.obs_names.astype(str)])
    nonzeros = np.concatenate(nonzeros)
    kept = nonzeros > 0
    n_empty = int((~kept).sum())
    if n_empty:
        log.warning("dropped %d empty cells (no counts in the vocabulary's genes)", n_empty)
    if not kept.any():
        raise InputError(", ".join(names), "X", "every cell is empty", "check that the data holds counts")
    split = np.full(len(obs), "", dtype=object)
    split[kept] = assign_splits(obs[kept], tuple(split_fractions), seed, donor_column)
    position = np.full(len(obs), -1, dtype=np.int64)
    rng, offset = np.random.default_rng(seed + 1), 0
    for name in SPLITS:
        rows = np.flatnonzero(split == name)
        position[rows[rng.permutation(len(rows))]] = offset + np.arange(len(rows))
        offset += len(rows)
    final_obs = obs.iloc[np.argsort(np.where(kept, position, np.iinfo(np.int64).max))[:offset]].copy()
    final_obs["split"] = split[kept][np.argsort(position[kept])]

    # buckets of consecutive final rows holding about memory_mb each
    nnz_in_order = nonzeros[kept][np.argsort(position[kept])]
    total_bytes = int(nnz_in_order.sum()) * BYTES_PER_NONZERO
    n_buckets = max(1, math.ceil(total_bytes / (memory_mb * 2**20)))
    cumulative = np.cumsum(nnz_in_order)
    edges = np.searchsorted(cumulative, np.linspace(0, cumulative[-1], n_buckets + 1)[1:-1])
    edges = np.concatenate([[0], edges, [offset]])
    output.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{output.name}.buckets-", dir=output.parent)) if n_buckets > 1 else None
    if workdir is not None:
        log.info("shuffling %d cells through %d buckets on disk (memory_mb=%s)", offset, n_buckets, memory_mb)
    dtype = narrowest_count_dtype(max_value, normalised)
    try:
        buckets = RowBuckets(n_buckets, workdir)
        bar = tqdm(total=len(obs), desc="scatter", unit="cells", disable=show or n_buckets == 1)
        first_row = 0
        for i, (adata, matrix, cols) in enumerate(zip(adatas, matrices, mapping.columns, strict=True)):
            if cached is not None:
                chunks = zip(np.cumsum([0] + [b.shape[0] for b in cached[i]]), cached[i], strict=False)
            else:
                chunks = _row_chunks(matrix, adata.n_obs, chunk_rows)
            for start, block in chunks:
                dest = position[first_row + start : first_row + start + block.shape[0]]
                keep_rows = dest >= 0
                if not keep_rows.all():
                    block, dest = block[keep_rows], dest[keep_rows]
                block = _remap_genes(block, cols, n_genes)
                # the stored type already (validated in pass 1): fewer bytes through the buckets and the sort
                block = sp.csr_matrix((block.data.astype(dtype, copy=False), block.indices, block.indptr), block.shape)
                bucket_of = np.searchsorted(edges, dest, side="right") - 1
                if n_buckets == 1:
                    buckets.put(0, block, dest)
                else:
                    for b in np.unique(bucket_of):
                        sel = bucket_of == b
                        buckets.put(int(b), block[sel], dest[sel])
                bar.update(len(keep_rows))
            first_row += adata.n_obs
        cached = None
        bar.close()

        source = source_name or (names[0] if len(names) == 1 else f"{len(names)} files: " + ", ".join(names))
        with StoreWriter(
            output,
            mapping.genes.symbols,
            count_dtype=dtype,
            ensembl_ids=mapping.genes.ensembl_ids,
            label_columns=label_columns,
            donor_column=donor_column,
            source=source,
            normalised=normalised,
            chunk_size=chunk_size,
            shard_size=shard_size,
            overwrite=overwrite,
            extra_metadata={
                "dropped_empty_cells": n_empty,
                "seed": int(seed),
                "match_by": mapping.match_by,
                "gene_overlap": mapping.overlap_report(names),
            },
        ) as writer:
            for b in tqdm(range(n_buckets), desc="write", unit="bucket", disable=show or n_buckets == 1):
                taken = buckets.take(b)
                if taken is not None:
                    counts, dest = taken
                    writer.append(counts, final_obs.iloc[dest])
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return output


def write_store(adata: ad.AnnData, path: str | Path, *, source: str = "anndata", **options: Any) -> Path:
    """Write one in-memory AnnData (counts in ``X``) as a cell store; options as :func:`anndata_to_store`."""
    return anndata_to_store([adata], path, source_name=source, progress=False, **options)


def prepare_store(source: str | Sequence[str], output: str | Path, **options: Any) -> Path:
    """A built-in data set (``pbmc68k``), an `.h5ad` path, or a list of paths → a cell store at ``output``."""
    if isinstance(source, str) and source in BUILTIN_SOURCES:
        return write_store(BUILTIN_SOURCES[source](), output, source=source, **options)
    paths = [source] if isinstance(source, str | Path) else list(source)
    return anndata_to_store(paths, output, **options)
