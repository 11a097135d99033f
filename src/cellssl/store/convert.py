"""AnnData (in memory or backed `.h5ad`, one or several files) → cell store, in bounded memory.

The split and each cell's final row (grouped by split, shuffled within it) are decided from obs and the row
lengths alone; the counts are then read in storage order and every row is copied to its final slot. Row
lengths come from the row pointers for backed CSR files whose genes all enter the vocabulary, so such files
are read once, validated on the way; any other input gets a first pass that validates and counts (and keeps
small inputs in memory). Rows are placed in one array when the data fits ``memory_mb`` as stored (narrow
values, int16 indices), else scattered into buckets of consecutive final rows on disk and placed bucket by
bucket. Chunks are read ahead on two threads (h5py releases the GIL). Memory stays near ``memory_mb`` plus a
few chunks, whatever the input size. With ``n_top_genes``, the merged vocabulary is first cut to its most
variable genes (:mod:`cellssl.store.hvg`; two more passes over backed files).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from cellssl.store.buckets import RowBuckets
from cellssl.store.format import DEFAULT_CHUNK_SIZE, DEFAULT_SHARD_SIZE, narrowest_count_dtype
from cellssl.store.hvg import check_hvg_options, seurat_v3_in_memory, seurat_v3_out_of_core
from cellssl.store.output import check_output
from cellssl.store.plan import buckets_by_entries, final_order, positions_of, write_buckets
from cellssl.store.sources import BUILTIN_SOURCES
from cellssl.store.splits import assign_splits
from cellssl.store.validation import InputError, check_columns, check_counts, check_unique_genes
from cellssl.store.vocabulary import GeneTable, VocabularyMapping, build_vocabulary
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


def _csr_block(matrix: Any, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``[start, stop)`` as CSR without stored zeros (a cell whose entries are all zeros is empty)."""
    block = sp.csr_matrix(matrix[start:stop])
    block.eliminate_zeros()
    return block


def _row_chunks(matrix: Any, n_rows: int, chunk_rows: int) -> Iterator[tuple[int, sp.csr_matrix]]:
    starts = range(0, n_rows, chunk_rows)
    blocks = _read_ahead(lambda start: _csr_block(matrix, start, min(start + chunk_rows, n_rows)), starts)
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


class _StoredZeros(Exception):
    """Stored zeros in a file whose row lengths were taken from its row pointers: count them again (pass 1)."""


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

    def entries(self, show: bool | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every file's stored values (validated) and their vocabulary columns, chunk by chunk, in storage order:
        what the out-of-core highly-variable-gene selection sums up."""
        with tqdm(total=sum(n for n, _ in self.shapes), desc="gene variances", unit="cells", disable=show) as bar:
            for i, (name, cols) in enumerate(zip(self.names, self.columns, strict=True)):
                for _, data, indices, indptr in self._chunks(i):
                    data = np.asarray(data)
                    if len(data):
                        check_counts(data, name, self.field, normalised=self.normalised)
                    target = cols[np.asarray(indices)]
                    keep = target >= 0
                    yield data[keep], target[keep]
                    bar.update(len(indptr) - 1)

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
                    if self.lengths_from_indptr and not block.data.all():
                        raise _StoredZeros()  # the planned row lengths count them
                    block.eliminate_zeros()  # as pass 1 did
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


@dataclass
class _Inputs:
    """The opened sources: AnnData objects (files opened backed), names, gene tables and count matrices."""

    adatas: list[ad.AnnData]
    names: list[str]
    tables: list[GeneTable]
    matrices: list[Any]
    field: str

    @property
    def n_cells(self) -> int:
        return sum(a.n_obs for a in self.adatas)

    def obs(self, columns: Sequence[str]) -> pd.DataFrame:
        """The obs ``columns`` of every cell, as strings, indexed by cell id (``<file number>:<id>`` when the
        same id occurs in two files)."""
        frames = [
            pd.DataFrame({c: a.obs[c].astype(str).to_numpy() for c in columns}, index=a.obs_names.astype(str))
            for a in self.adatas
        ]
        obs = pd.concat(frames)
        if len(self.adatas) > 1 and obs.index.has_duplicates:
            obs.index = pd.Index([f"{i}:{cell}" for i, a in enumerate(self.adatas) for cell in a.obs_names.astype(str)])
        return obs


def _open_source(source: str | Path | ad.AnnData, source_name: str | None) -> tuple[ad.AnnData, str]:
    """An AnnData as it is, or an `.h5ad` path opened backed, and its name in messages."""
    if isinstance(source, ad.AnnData):
        return source, source_name or "anndata"
    path = Path(source)
    if not path.is_file():
        raise InputError(str(path), "path", "file not found", "give the path of an existing .h5ad file")
    try:
        return ad.read_h5ad(path, backed="r"), str(path)
    except Exception as err:  # h5py/anndata raise many types for a corrupt file
        raise InputError(
            str(path), "file", f"not a readable .h5ad ({type(err).__name__}: {err})", "re-export it"
        ) from err


def _open_inputs(
    sources: Sequence[str | Path | ad.AnnData],
    counts_layer: str | None,
    columns: Sequence[str],
    source_name: str | None,
) -> _Inputs:
    """Open and check every source: unique gene names, the obs columns, not empty; its genes and counts."""
    adatas, names = zip(*(_open_source(source, source_name) for source in sources), strict=True)
    tables = []
    for adata, name in zip(adatas, names, strict=True):
        var = _var_of(adata, counts_layer)
        check_unique_genes(var.index, name)
        check_columns(adata.obs, columns, name)
        if adata.n_obs == 0 or var.shape[0] == 0:
            raise InputError(
                name, "X", f"the data set is empty (shape {adata.n_obs} × {var.shape[0]})", "give cells and genes"
            )
        tables.append(GeneTable.from_var(var, name))
    matrices = [_counts_matrix(a, counts_layer, name) for a, name in zip(adatas, names, strict=True)]
    field = "X" if counts_layer in (None, "X") else ("raw.X" if counts_layer == "raw" else f"layers['{counts_layer}']")
    return _Inputs(list(adatas), list(names), tables, matrices, field)


def _highly_variable(
    mapping: VocabularyMapping, inputs: _Inputs, n_top_genes: int, flavor: str, chunk_rows: int, show: bool | None
) -> np.ndarray:
    """The ``highly_variable`` mask over the merged vocabulary: scanpy itself when every source is in memory,
    else :func:`~cellssl.store.hvg.seurat_v3_out_of_core` over the files' chunks."""
    n_genes = len(mapping.genes.symbols)
    if not any(a.isbacked for a in inputs.adatas):
        blocks = []
        for matrix, name, cols in zip(inputs.matrices, inputs.names, mapping.columns, strict=True):
            check_counts(matrix, name, inputs.field)
            blocks.append(_remap_genes(sp.csr_matrix(matrix, dtype=np.float32), cols, n_genes))
        return seurat_v3_in_memory(sp.vstack(blocks, format="csr"), n_top_genes, flavor)
    reader = _CountReader(inputs.matrices, inputs.names, mapping.columns, n_genes, inputs.field, False, chunk_rows)
    return seurat_v3_out_of_core(lambda: reader.entries(show), inputs.n_cells, n_genes, n_top_genes)


def _select_genes(
    mapping: VocabularyMapping, inputs: _Inputs, n_top_genes: int, flavor: str, chunk_rows: int, show: bool | None
) -> tuple[VocabularyMapping, dict[str, Any]]:
    """The mapping onto the ``n_top_genes`` highly variable genes of the merged vocabulary (all cells, raw counts),
    and what the store's metadata records of the selection."""
    n_genes, in_memory = len(mapping.genes.symbols), not any(a.isbacked for a in inputs.adatas)
    try:
        keep = np.flatnonzero(_highly_variable(mapping, inputs, n_top_genes, flavor, chunk_rows, show))
    except InputError:
        raise
    except ValueError as err:  # loess needs a few cells and genes with a variance
        problem = f"{flavor} failed on {inputs.n_cells} cells × {n_genes} genes ({err})"
        raise InputError(", ".join(inputs.names), "genes.n_top_genes", problem, "drop genes.n_top_genes") from err
    log.info(
        "genes: the %d most variable of %d (%s on raw counts of all %d cells)",
        len(keep),
        n_genes,
        flavor,
        inputs.n_cells,
    )
    record = {
        "n_top_genes": int(n_top_genes),
        "flavor": flavor,
        "cells": "all",
        "genes_before": n_genes,
        "computed": "scanpy" if in_memory else "out of core",
    }
    return mapping.subset(keep), record


@dataclass
class _RowPlan:
    """Where every input cell goes: its final row (``-1``: dropped as empty), the written cells' obs and row
    lengths in final order."""

    position: np.ndarray
    obs: pd.DataFrame
    lengths: np.ndarray
    n_empty: int


def _plan_rows(
    obs: pd.DataFrame,
    nonzeros: np.ndarray,
    names: Sequence[str],
    fractions: Sequence[float],
    seed: int,
    donor: str | None,
) -> _RowPlan:
    """Drop cells without counts in the vocabulary, split the others, and give each its final row."""
    kept = nonzeros > 0
    n_empty = int((~kept).sum())
    if n_empty:
        log.warning("dropped %d empty cells (no counts in the vocabulary's genes)", n_empty)
    if not kept.any():
        raise InputError(", ".join(names), "X", "every cell is empty", "check that the data holds counts")
    split = np.full(len(obs), "", dtype=object)
    split[kept] = assign_splits(obs[kept], tuple(fractions), seed, donor)
    order = final_order(split, seed)
    final_obs = obs.iloc[order].copy()
    final_obs["split"] = split[order]
    return _RowPlan(positions_of(order, len(obs)), final_obs, nonzeros[order], n_empty)


def _place(
    reader: _CountReader, plan: _RowPlan, normalised: bool, memory_mb: float, output: Path, show: bool | None
) -> tuple[RowBuckets, float]:
    """Every row to its final slot, in one array or through buckets spilled to disk; returns them and the largest
    count. A count too large for the placement type (uint16 unless pass 1 saw the largest) places again wider."""
    if reader.max_value is not None:
        dtype = narrowest_count_dtype(reader.max_value, normalised)
    else:
        dtype = np.dtype(np.float32 if normalised else np.uint16)
    while True:
        buckets = buckets_by_entries(plan.lengths, dtype, reader.n_genes, memory_mb, output)
        if buckets.n_buckets > 1:
            log.info(
                "shuffling %d cells through %d buckets on disk (memory_mb=%s)",
                len(plan.lengths),
                buckets.n_buckets,
                memory_mb,
            )
        try:
            return buckets, reader.place(buckets, plan.position, dtype, show)
        except _CountTooLarge as err:
            log.info("a count of %g does not fit %s: placing again as %s", err.value, dtype, err.dtype)
            dtype = err.dtype
            buckets.close()
        except BaseException:
            buckets.close()
            raise


def _source_paths(sources: Sequence[Any]) -> list[Path]:
    """The files behind the sources: paths, and the files of backed AnnData objects."""
    paths = []
    for source in sources:
        if isinstance(source, str | Path):
            paths.append(Path(source))
        elif isinstance(source, ad.AnnData) and source.isbacked and source.filename is not None:
            paths.append(Path(source.filename))
    return paths


def _plan_and_place(
    reader: _CountReader,
    obs: pd.DataFrame,
    names: Sequence[str],
    fractions: Sequence[float],
    seed: int,
    donor: str | None,
    memory_mb: float,
    output: Path,
    show: bool | None,
) -> tuple[_RowPlan, tuple[RowBuckets, float]]:
    """Row lengths (pass 1, unless read from the row pointers), each cell's final row, every row placed (pass 2)."""
    nonzeros = np.concatenate(reader.row_lengths(memory_mb, show))
    plan = _plan_rows(obs, nonzeros, names, fractions, seed, donor)
    return plan, _place(reader, plan, reader.normalised, memory_mb, output, show)


def _check_output(output: str | Path, sources: Sequence[Any], memory_mb: float, overwrite: bool) -> Path:
    if memory_mb <= 0:
        raise ValueError(f"memory_mb must be positive, got {memory_mb}")
    output = check_output(output, overwrite, inputs=_source_paths(sources))
    if not sources:
        raise InputError(str(output), "sources", "no input data sets", "give at least one .h5ad path")
    return output


def anndata_to_store(
    sources: Sequence[str | Path | ad.AnnData],
    output: str | Path,
    *,
    counts_layer: str | None = None,
    label_columns: Sequence[str] = (),
    donor_column: str | None = None,
    vocabulary: str = "union",
    match_by: str = "auto",
    n_top_genes: int | None = None,
    flavor: str = "seurat_v3",
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
    """Convert AnnData objects or `.h5ad` paths (opened backed) into one cell store at ``output``.

    Steps: open and check the sources; one gene vocabulary (:func:`build_vocabulary`), optionally cut to the
    ``n_top_genes`` highly variable genes (``flavor`` ``seurat_v3``, on all cells); row lengths (pass 1, unless
    read from the row pointers); each cell's final row; every row placed (pass 2); the rows written in order.
    """
    output = _check_output(output, sources, memory_mb, overwrite)
    columns = [*label_columns, *([donor_column] if donor_column else [])]
    inputs = _open_inputs(sources, counts_layer, columns, source_name)
    check_hvg_options(n_top_genes, flavor, normalised, ", ".join(inputs.names))
    show = None if progress else True  # None: tqdm shows bars only on a terminal
    mapping = build_vocabulary(inputs.tables, inputs.names, vocabulary, match_by)
    hvg = None
    if n_top_genes is not None:
        mapping, hvg = _select_genes(mapping, inputs, n_top_genes, flavor, chunk_rows, show)
    n_genes = len(mapping.genes.symbols)
    reader = _CountReader(inputs.matrices, inputs.names, mapping.columns, n_genes, inputs.field, normalised, chunk_rows)
    steps = (reader, inputs.obs(columns), inputs.names, split_fractions, seed, donor_column, memory_mb, output, show)
    try:
        plan, (buckets, max_value) = _plan_and_place(*steps)
    except _StoredZeros:  # a row of only stored zeros is an empty cell: count the entries again, without them
        log.info("stored zeros in the counts: counting each cell's entries again")
        reader.lengths_from_indptr = False
        plan, (buckets, max_value) = _plan_and_place(*steps)
    names = inputs.names
    source = source_name or (names[0] if len(names) == 1 else f"{len(names)} files: " + ", ".join(names))
    metadata = {
        "dropped_empty_cells": plan.n_empty,
        "seed": int(seed),
        "match_by": mapping.match_by,
        "gene_overlap": mapping.overlap_report(names),
        "highly_variable_genes": hvg,
    }
    options = {
        "count_dtype": narrowest_count_dtype(max_value, normalised),
        "ensembl_ids": mapping.genes.ensembl_ids,
        "label_columns": label_columns,
        "donor_column": donor_column,
        "source": source,
        "normalised": normalised,
        "chunk_size": chunk_size,
        "shard_size": shard_size,
        "overwrite": overwrite,
        "extra_metadata": metadata,
        "measured": mapping.measured(),
    }
    with buckets, StoreWriter(output, mapping.genes.symbols, **options) as writer:
        write_buckets(buckets, writer, lambda rows: plan.obs.iloc[rows], show)
    return output


def write_store(adata: ad.AnnData, path: str | Path, *, source: str = "anndata", **options: Any) -> Path:
    """One in-memory AnnData as a cell store: :func:`prepare_store` (kept for existing callers)."""
    return prepare_store(adata, path, source_name=source, progress=False, **options)


def prepare_store(
    source: ad.AnnData | str | Path | Sequence[str | Path | ad.AnnData], output: str | Path, **options: Any
) -> Path:
    """Prepare a cell store at ``output`` from an in-memory AnnData, an `.h5ad` path, a list of them, or a
    built-in data set (``"pbmc68k"``).

    ``options`` are :func:`anndata_to_store`'s: ``label_columns``, ``donor_column``, ``counts_layer`` (where
    the raw counts are: ``X``, ``raw`` or a layer), ``vocabulary`` (``union``, ``intersection`` or a gene-list
    path) and ``match_by`` for several sources, ``n_top_genes``/``flavor`` (highly variable genes, selected with
    scanpy's ``seurat_v3`` on the raw counts of all cells), ``split_fractions``, ``seed``, ``memory_mb``,
    ``overwrite``, ... Files are read backed, in bounded memory. Bad input raises :class:`InputError` with one
    line, and nothing is left at ``output``. Returns the store's path (open it with
    :class:`~cellssl.store.CellStore`, or ``anndata.io.read_zarr``).

    Examples
    --------
    >>> import scanpy as sc
    >>> from cellssl.store import CellStore, prepare_store
    >>> adata = sc.read_h5ad("atlas.h5ad")  # raw counts in X
    >>> path = prepare_store(adata, "atlas.zarr", label_columns=["cell_type"], donor_column="donor_id")
    >>> prepare_store(["a.h5ad", "b.h5ad"], "ab.zarr", vocabulary="intersection", n_top_genes=2000)
    PosixPath('ab.zarr')
    >>> CellStore(path).genes.symbols[:3]  # doctest: +SKIP
    """
    if isinstance(source, ad.AnnData):
        return anndata_to_store([source], output, **options)
    if isinstance(source, str) and source in BUILTIN_SOURCES:
        options = {"source_name": source, "progress": False, **options}
        return anndata_to_store([BUILTIN_SOURCES[source]()], output, **options)
    sources = [source] if isinstance(source, str | Path) else list(source)
    return anndata_to_store(sources, output, **options)
