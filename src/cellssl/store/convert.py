"""AnnData (in memory or backed `.h5ad`, one or several files) → cell store, in bounded memory.

The split and each cell's final row (grouped by split, shuffled within it) are decided from obs and the row
lengths alone; the counts are then read in storage order and every row is copied to its final slot. Row
lengths come from the row pointers for backed CSR files whose genes all enter the vocabulary, so such files
are read once, validated on the way; any other input gets a first pass that validates and counts (and keeps
small inputs in memory). Rows are placed in one array when the data fits ``memory_mb`` as stored (narrow
values, int16 indices), else scattered into buckets of consecutive final rows on disk and placed bucket by
bucket. Chunks are read ahead on two threads (h5py releases the GIL). Memory stays near ``memory_mb`` plus a
few chunks, whatever the input size.
"""

from __future__ import annotations

import logging
import math
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

from cellssl.store.buckets import RowBuckets
from cellssl.store.format import DEFAULT_CHUNK_SIZE, DEFAULT_SHARD_SIZE, index_dtype_for, narrowest_count_dtype
from cellssl.store.sources import BUILTIN_SOURCES
from cellssl.store.splits import SPLITS, assign_splits
from cellssl.store.validation import InputError, check_columns, check_counts, check_unique_genes
from cellssl.store.vocabulary import GeneTable, build_vocabulary
from cellssl.store.writer import StoreWriter

log = logging.getLogger(__name__)

# stored entries per chunk read from a backed CSR file (32 MB as float32 values and int32 indices)
CHUNK_NONZEROS = 1 << 22


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


def _csr_chunks(matrix: ad.abc.CSRDataset, chunk_nonzeros: int) -> Iterator[tuple[int, Any, Any, np.ndarray]]:
    """A backed CSR matrix as ``(first row, values, column indices, row pointers from 0)`` of runs of whole rows
    holding about ``chunk_nonzeros`` entries, read straight from the file's arrays."""
    indptr = matrix.group["indptr"][:]
    n_rows, nnz = len(indptr) - 1, int(indptr[-1])
    cuts = np.searchsorted(indptr, np.arange(chunk_nonzeros, nnz, chunk_nonzeros))
    bounds = np.unique(np.concatenate([[0], cuts[(cuts > 0) & (cuts < n_rows)], [n_rows]]))
    values, columns = matrix.group["data"], matrix.group["indices"]

    def read(k: int) -> tuple[Any, Any]:
        first, last = int(indptr[bounds[k]]), int(indptr[bounds[k + 1]])
        return values[first:last], columns[first:last]

    chunks = _read_ahead(read, range(len(bounds) - 1))
    for k, (data, indices) in enumerate(chunks):
        rows = indptr[bounds[k] : bounds[k + 1] + 1]
        yield int(bounds[k]), data, indices, rows - rows[0]


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


class _CountTooLarge(Exception):
    """A count beyond the placement dtype: pass 2 starts again with ``dtype``."""

    def __init__(self, value: float, dtype: np.dtype) -> None:
        super().__init__(f"count {value:g} needs {dtype}")
        self.value, self.dtype = value, dtype


def _as_counts(values: np.ndarray, dtype: np.dtype, name: str, field: str, normalised: bool) -> np.ndarray:
    """``values`` validated and cast to the placement ``dtype``, in one cast and one comparison.

    A value survives the round trip through an unsigned integer type exactly when it is a whole number in that
    type's range: NaN, infinite, negative, fractional and too large values all come back different. On a
    difference, :func:`check_counts` names the bad values, or the count is too large for ``dtype``.
    """
    if dtype.kind == "f":
        check_counts(values, name, field, normalised=normalised)
        return values.astype(dtype, copy=False)
    with np.errstate(invalid="ignore"):  # NaN and out-of-range casts are caught by the comparison
        cast = values.astype(dtype)
    if np.array_equal(cast, values):
        return cast
    top = check_counts(values, name, field, normalised=normalised)
    raise _CountTooLarge(top, narrowest_count_dtype(top, normalised))


class _CountReader:
    """The input count matrices, read chunk by chunk in storage order: pass 1 and pass 2 of the conversion.

    Backed CSR files whose genes all enter the vocabulary need no pass 1 (``lengths_from_indptr``): their row
    lengths are the row pointers' differences, and their values are validated in pass 2. Any other input gets
    a pass 1 that validates, counts each row's entries in the vocabulary and keeps the blocks while they fit
    half of ``memory_mb``, so that small inputs are read once.
    """

    def __init__(
        self,
        matrices: Sequence[Any],
        names: Sequence[str],
        columns: Sequence[np.ndarray],
        n_genes: int,
        field: str,
        normalised: bool,
        chunk_rows: int,
    ) -> None:
        self.matrices, self.names, self.columns = matrices, names, columns
        self.shapes = [m.shape for m in matrices]  # a backed matrix reads its shape from the file at every call
        self.n_genes, self.field, self.normalised, self.chunk_rows = n_genes, field, normalised, chunk_rows
        self.lengths_from_indptr = all(isinstance(m, ad.abc.CSRDataset) for m in matrices) and all(
            (c >= 0).all() for c in columns
        )
        self.cached: list[list[sp.csr_matrix]] | None = None
        self.max_value: float | None = None  # the largest count, once a pass has validated every value

    def row_lengths(self, memory_mb: float, show: bool | None) -> list[np.ndarray]:
        """Each file's stored entries per row, counting only genes in the vocabulary."""
        if self.lengths_from_indptr:
            return [np.diff(m.group["indptr"][:]).astype(np.int64) for m in self.matrices]
        lengths, max_value = [], 0.0
        cached: list[list[sp.csr_matrix]] | None = []
        cached_bytes = 0
        with tqdm(total=sum(n for n, _ in self.shapes), desc="validate", unit="cells", disable=show) as bar:
            for matrix, name, cols, (n_rows, _) in zip(
                self.matrices, self.names, self.columns, self.shapes, strict=True
            ):
                file_lengths = np.empty(n_rows, dtype=np.int64)
                if cached is not None:
                    cached.append([])
                for start, block in _row_chunks(matrix, n_rows, self.chunk_rows):
                    max_value = max(max_value, check_counts(block, name, self.field, normalised=self.normalised))
                    file_lengths[start : start + block.shape[0]] = _nonzeros_per_row(block, cols)
                    if cached is not None:
                        cached_bytes += block.data.nbytes + block.indices.nbytes + block.indptr.nbytes
                        cached = None if cached_bytes > memory_mb * 2**19 else cached  # half the budget
                        if cached is not None:
                            cached[-1].append(block)
                    bar.update(block.shape[0])
                lengths.append(file_lengths)
        self.cached, self.max_value = cached, max_value
        return lengths

    def _chunks(self, i: int) -> Iterator[tuple[int, Any, Any, np.ndarray]]:
        """File ``i`` as ``(first row, values, column indices, row pointers from 0)``, in storage order."""
        matrix = self.matrices[i]
        if self.cached is not None:
            start = 0
            for block in self.cached[i]:
                yield start, block.data, block.indices, block.indptr
                start += block.shape[0]
        elif isinstance(matrix, ad.abc.CSRDataset):
            yield from _csr_chunks(matrix, CHUNK_NONZEROS)
        else:
            for start, block in _row_chunks(matrix, self.shapes[i][0], self.chunk_rows):
                yield start, block.data, block.indices, block.indptr

    def place(self, buckets: RowBuckets, position: np.ndarray, dtype: np.dtype, show: bool | None) -> float:
        """Pass 2: every kept row into ``buckets`` under its final ``position``; returns the largest count.

        Values not validated by a pass 1 are checked here, chunk by chunk; a count beyond ``dtype`` raises
        :class:`_CountTooLarge` so that the caller can place again with a wider type.
        """
        validate = self.max_value is None
        max_value, first_row = 0.0, 0
        with tqdm(total=sum(n for n, _ in self.shapes), desc="place", unit="cells", disable=show) as bar:
            for i, (name, cols, (n_rows, n_columns)) in enumerate(
                zip(self.names, self.columns, self.shapes, strict=True)
            ):
                for start, data, indices, indptr in self._chunks(i):
                    if validate and len(data):
                        data = _as_counts(data, dtype, name, self.field, self.normalised)
                        max_value = max(max_value, float(data.max()))
                    else:  # validated in pass 1
                        data = np.asarray(data).astype(dtype, copy=False)
                    block = sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, n_columns))
                    block = _remap_genes(block, cols, self.n_genes)
                    if not block.has_sorted_indices:
                        block.sort_indices()
                    dest = position[first_row + start : first_row + start + block.shape[0]]
                    rows = np.flatnonzero(dest >= 0)
                    ends = block.indptr[rows + 1]
                    buckets.put(block.data, block.indices, block.indptr[rows], ends, dest[rows])
                    bar.update(block.shape[0])
                first_row += n_rows
        if validate:
            self.max_value = max_value
        return self.max_value


def _buckets_for(lengths: np.ndarray, dtype: np.dtype, n_genes: int, memory_mb: float, output: Path) -> RowBuckets:
    """Buckets of consecutive final rows holding about ``memory_mb`` each as stored (values + int16/32 indices)."""
    indices = index_dtype_for(n_genes)
    total_bytes = int(lengths.sum()) * (dtype.itemsize + indices.itemsize)
    n_buckets = max(1, math.ceil(total_bytes / (memory_mb * 2**20)))
    cumulative = np.cumsum(lengths)
    cuts = np.searchsorted(cumulative, np.linspace(0, cumulative[-1], n_buckets + 1)[1:-1])
    edges = np.concatenate([[0], cuts, [len(lengths)]])
    if n_buckets > 1:
        log.info("shuffling %d cells through %d buckets on disk (memory_mb=%s)", len(lengths), n_buckets, memory_mb)
    return RowBuckets(edges, dtype, indices, spill_next_to=output, row_lengths=lengths)


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
    matrices = [_counts_matrix(a, counts_layer, name) for a, name in zip(adatas, names, strict=True)]
    field = "X" if counts_layer in (None, "X") else ("raw.X" if counts_layer == "raw" else f"layers['{counts_layer}']")
    show = None if progress else True  # None: tqdm shows bars only on a terminal
    reader = _CountReader(matrices, names, mapping.columns, n_genes, field, normalised, chunk_rows)
    nonzeros = np.concatenate(reader.row_lengths(memory_mb, show))

    # plan: drop empty cells, split, and give every kept cell its final row
    obs = pd.concat(
        [
            pd.DataFrame({c: a.obs[c].astype(str).to_numpy() for c in columns}, index=a.obs_names.astype(str))
            for a in adatas
        ]
    )
    if len(adatas) > 1 and obs.index.has_duplicates:  # the same barcode in two files: prefix with the file
        obs.index = pd.Index([f"{i}:{cell}" for i, a in enumerate(adatas) for cell in a.obs_names.astype(str)])
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
    in_final_order = np.argsort(position[kept])
    final_obs = obs[kept].iloc[in_final_order].copy()
    final_obs["split"] = split[kept][in_final_order]
    lengths = nonzeros[kept][in_final_order]

    # pass 2: every row to its final slot, in one array or through buckets spilled to disk; a count too large for
    # the placement type (uint16 unless pass 1 saw the largest) starts the pass again with a wider one
    if reader.max_value is not None:
        place_dtype = narrowest_count_dtype(reader.max_value, normalised)
    else:
        place_dtype = np.dtype(np.float32 if normalised else np.uint16)
    while True:
        buckets = _buckets_for(lengths, place_dtype, n_genes, memory_mb, output)
        try:
            max_value = reader.place(buckets, position, place_dtype, show)
            break
        except _CountTooLarge as err:
            log.info("a count of %g does not fit %s: placing again as %s", err.value, place_dtype, err.dtype)
            place_dtype = err.dtype
            buckets.close()
        except BaseException:
            buckets.close()
            raise

    source = source_name or (names[0] if len(names) == 1 else f"{len(names)} files: " + ", ".join(names))
    with (
        buckets,
        StoreWriter(
            output,
            mapping.genes.symbols,
            count_dtype=narrowest_count_dtype(max_value, normalised),
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
        ) as writer,
    ):
        for b in tqdm(range(buckets.n_buckets), desc="write", unit="bucket", disable=show or buckets.n_buckets == 1):
            taken = buckets.take(b)
            if taken is not None:
                data, indices, indptr, rows = taken
                writer.append_arrays(data, indices, indptr, final_obs.iloc[rows], copy=buckets.reuses_arrays)
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
