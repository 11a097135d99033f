"""Read a cell store: row ranges of the CSR counts (through tensorstore), labels, genes, split ranges."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import tensorstore as ts
import zarr

from cellssl.store.format import FORMAT_VERSION, index_dtype_for
from cellssl.store.splits import SPLITS
from cellssl.store.validation import InputError
from cellssl.store.vocabulary import GeneTable


def _big_endian(array: ts.TensorStore) -> bool:
    """Whether any ``bytes`` codec of a zarr3 array (sharded or not) says big-endian (cellssl writes little)."""
    text = json.dumps(array.codec.to_json())
    return '"endian": "big"' in text


class CountsReader:
    """Concurrent, asynchronous reads of row ranges of the CSR counts, through tensorstore.

    ``read(runs)`` takes ``[(start, stop), ...]`` row ranges and returns their rows stacked as one CSR
    matrix: all ``indptr`` slices are read at once, then all ``data``/``indices`` slices at once, so
    tensorstore fetches and decompresses every chunk involved in parallel. A missing or truncated chunk
    raises :class:`InputError` naming the array and the chunk (never silently read as zeros).
    """

    def __init__(
        self, path: str | Path, n_genes: int, concurrency: int = 8, metadata: dict[str, Any] | None = None
    ) -> None:
        self.path, self.n_genes = Path(path), n_genes
        context = ts.Context(
            {"data_copy_concurrency": {"limit": concurrency}, "file_io_concurrency": {"limit": 4 * concurrency}}
        )
        self.arrays = {name: self._open(name, context) for name in ("data", "indices", "indptr")}
        if metadata is not None:
            self._check_layout(metadata)

    def _check_layout(self, metadata: dict[str, Any]) -> None:
        """The arrays' shapes and types must be those the metadata records (an edited zarr.json reads wrongly)."""
        n_cells, nnz = int(metadata["n_cells"]), int(metadata["nnz"])
        expected = {
            "data": (nnz, metadata.get("count_dtype")),
            "indices": (nnz, str(index_dtype_for(self.n_genes))),
            "indptr": (n_cells + 1, "int64"),
        }
        for name, (length, dtype) in expected.items():
            array = self.arrays[name]
            if _big_endian(array):
                raise InputError(str(self.path), f"X/{name}", "big-endian values", "re-create the store")
            found = (int(array.shape[0]) if array.rank == 1 else None, str(array.dtype.numpy_dtype))
            if found[0] != length or (dtype is not None and found[1] != dtype):
                raise InputError(
                    str(self.path),
                    f"X/{name}",
                    f"shape {tuple(array.shape)} and dtype {found[1]} do not match the metadata ({length}, {dtype})",
                    "re-create the store with cellssl-prepare",
                )

    def _open(self, name: str, context: ts.Context) -> ts.TensorStore:
        spec = {
            "driver": "zarr3",
            "kvstore": {"driver": "file", "path": str(self.path / "X" / name)},
            "fill_missing_data_reads": False,
        }
        try:
            return ts.open(spec, read=True, context=context).result()
        except ValueError as err:
            raise InputError(str(self.path), f"X/{name}", f"cannot open ({err})", "re-create the store") from err

    def _result(self, name: str, future: ts.Future) -> np.ndarray:
        try:
            return future.result()
        except ValueError as err:  # NOT_FOUND / DATA_LOSS / FAILED_PRECONDITION from a damaged chunk or shard
            raise InputError(
                str(self.path),
                f"X/{name}",
                f"missing or truncated chunk: {err}",
                "re-create the store with cellssl-prepare",
            ) from err

    def _damaged(self, name: str, first: int, problem: str) -> InputError:
        """A damaged stretch of ``X/name`` starting at element ``first``, naming its chunk."""
        chunk = first // int(self.arrays[name].chunk_layout.read_chunk.shape[0])
        return InputError(
            str(self.path), f"X/{name}", f"chunk {chunk}: {problem}", "re-create the store with cellssl-prepare"
        )

    def _check_pointers(self, pointers: list[np.ndarray], runs: list[tuple[int, int]]) -> None:
        """Row pointers must rise and stay within the stored entries (else slicing reads nonsense or fails)."""
        nnz = int(self.arrays["data"].shape[0])
        for p, (start, _) in zip(pointers, runs, strict=True):
            if len(p) and (p[0] < 0 or p[-1] > nnz or (np.diff(p) < 0).any()):
                raise self._damaged("indptr", start, f"row pointers of rows from {start} are not in 0..{nnz}, rising")

    def _check_indices(self, indices: list[np.ndarray], spans: list[tuple[int, int]]) -> None:
        """Column indices must lie in ``[0, n_genes)``: scipy does not check, and writes out of bounds. One pass
        per array: seen as unsigned, a negative index is larger than any gene's."""
        for values, (lo, _) in zip(indices, spans, strict=True):
            if len(values) and values.view(f"u{values.dtype.itemsize}").max() >= self.n_genes:
                raise self._damaged("indices", lo, f"column indices outside 0..{self.n_genes - 1}")

    def read_runs(self, runs: list[tuple[int, int]]) -> RowRuns:
        """Read row ranges ``[(start, stop), ...]`` as they are stored, one set of arrays per range; damaged row
        pointers or column indices raise :class:`InputError` naming the array and the chunk."""
        indptr_futures = [self.arrays["indptr"][a : b + 1].read() for a, b in runs]
        pointers = [self._result("indptr", f) for f in indptr_futures]
        self._check_pointers(pointers, runs)
        spans = [(int(p[0]), int(p[-1])) for p in pointers]
        data_futures = [self.arrays["data"][lo:hi].read() for lo, hi in spans]
        index_futures = [self.arrays["indices"][lo:hi].read() for lo, hi in spans]
        indices = [self._result("indices", f) for f in index_futures]
        self._check_indices(indices, spans)
        return RowRuns(
            starts=np.array([a for a, _ in runs], dtype=np.int64),
            pointers=[(p - p[0]).astype(np.int64, copy=False) for p in pointers],
            data=[self._result("data", f) for f in data_futures],
            indices=indices,
            n_genes=self.n_genes,
        )

    def read(self, runs: list[tuple[int, int]]) -> sp.csr_matrix:
        """Row ranges ``[(start, stop), ...]`` stacked as one CSR matrix with the stored value dtype."""
        part = self.read_runs(runs)
        lengths = np.concatenate([np.diff(p) for p in part.pointers])
        indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        return sp.csr_matrix(
            (np.concatenate(part.data), np.concatenate(part.indices).astype(np.int32, copy=False), indptr),
            shape=(len(lengths), self.n_genes),
        )


@dataclass
class RowRuns:
    """Contiguous row ranges as read from a store: per range, its ``indptr`` (from 0), ``data`` and ``indices``."""

    starts: np.ndarray
    pointers: list[np.ndarray]
    data: list[np.ndarray]
    indices: list[np.ndarray]
    n_genes: int
    _stacked: sp.csr_matrix | None = field(default=None, repr=False)

    def gather(
        self, rows: np.ndarray, value_dtype: np.dtype | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR ``(indptr, indices, data)`` (int32, int32, ``value_dtype``) of ``rows``, in the given order.

        ``rows`` must lie in the read ranges. The batch is assembled run by run: each stretch of consecutive
        rows is one slice copy per array (the int16 → int32 widening of indices happens in that copy), so a
        batch made of runs of rows costs about one pass over its non-zeros.
        """
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        if 4 * len(breaks) > len(rows):  # mostly single rows: one vectorised gather beats a copy per run
            return self._gather_rows(rows, value_dtype)
        firsts, lasts = rows[np.r_[0, breaks]], rows[np.r_[breaks - 1, len(rows) - 1]] + 1
        which = np.searchsorted(self.starts, firsts, side="right") - 1
        spans, lengths = [], []
        for j, first, last in zip(which.tolist(), firsts.tolist(), lasts.tolist(), strict=True):
            pointer = self.pointers[j][first - self.starts[j] : last - self.starts[j] + 1]
            spans.append((j, int(pointer[0]), int(pointer[-1])))
            lengths.append(np.diff(pointer))
        indptr = np.zeros(len(rows) + 1, dtype=np.int32)
        np.cumsum(np.concatenate(lengths), out=indptr[1:])
        data = np.empty(int(indptr[-1]), dtype=value_dtype or self.data[0].dtype)
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        out = 0
        for j, lo, hi in spans:
            data[out : out + hi - lo] = self.data[j][lo:hi]
            indices[out : out + hi - lo] = self.indices[j][lo:hi]
            out += hi - lo
        return indptr, indices, data

    def _gather_rows(self, rows: np.ndarray, value_dtype: np.dtype | None) -> tuple[np.ndarray, ...]:
        if self._stacked is None:  # once per read: all ranges as one CSR matrix
            lengths = np.concatenate([np.diff(p) for p in self.pointers])
            indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=indptr[1:])
            data, indices = np.concatenate(self.data), np.concatenate(self.indices).astype(np.int32, copy=False)
            self._stacked = sp.csr_matrix((data, indices, indptr), shape=(len(lengths), self.n_genes))
        first_row = np.cumsum([0] + [len(p) - 1 for p in self.pointers])
        which = np.searchsorted(self.starts, rows, side="right") - 1
        picked = self._stacked[first_row[which] + rows - self.starts[which]]
        values = picked.data.astype(value_dtype or picked.data.dtype, copy=False)
        return picked.indptr.astype(np.int32), picked.indices.astype(np.int32, copy=False), values


METADATA = "uns/cellssl/metadata_json"
# keys every store's metadata has, and their types
REQUIRED_METADATA = {"n_cells": int, "n_genes": int, "nnz": int, "split_counts": dict}


def read_metadata(root: zarr.Group, source: str) -> dict[str, Any]:
    """The store's ``uns/cellssl`` metadata, refused when missing, unreadable, incomplete or of a format newer than
    this code reads (:data:`~cellssl.store.format.FORMAT_VERSION`)."""
    try:
        metadata = json.loads(str(root[METADATA][()]))
    except Exception as err:  # a missing key, a damaged array or JSON: all mean the same to the user
        raise InputError(source, METADATA, f"unreadable ({type(err).__name__})", "re-create the store") from err
    if not isinstance(metadata, dict):
        raise InputError(source, METADATA, "is not a JSON object", "re-create the store")
    for key, kind in {"format_version": int, **REQUIRED_METADATA}.items():
        value = metadata.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise InputError(source, f"{METADATA}.{key}", f"missing or invalid ({value!r})", "re-create the store")
    version = metadata["format_version"]
    if version > FORMAT_VERSION:
        raise InputError(
            source,
            f"{METADATA}.format_version",
            f"the store has format version {version}, this cellssl reads up to version {FORMAT_VERSION}",
            "upgrade cellssl (pip install -U cellssl), or re-create the store with this version of cellssl",
        )
    return metadata


class CellStore:
    """Read-only view of a store written by :func:`cellssl.store.write_store`.

    Rows are grouped by split, so each split is one contiguous range of rows; ``read_rows``
    reads a contiguous range with one slice per CSR array.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise InputError(str(self.path), "store", "no Zarr v3 store here", "run cellssl-prepare to write one")
        try:
            self.root = zarr.open_group(self.path, mode="r")
            is_cellssl = "cellssl" in self.root.get("uns", {})
        except (ValueError, TypeError, KeyError, OSError) as err:  # zarr's errors for bad zarr.json files
            raise InputError(str(self.path), "zarr.json", f"unreadable ({err})", "re-create the store") from err
        if not is_cellssl:
            raise InputError(str(self.path), "uns/cellssl", "not a cellssl store", "write it with cellssl-prepare")
        self.metadata = read_metadata(self.root, str(self.path))  # format version, cells, genes, splits, ...
        self._check_shape()
        self._counts: CountsReader | None = None

    def _check_shape(self) -> None:
        """X's shape and the number of genes in var must be the metadata's cells and genes, and its split counts
        must add up to the cells (else rows and genes would be read misplaced)."""
        try:
            shape = [int(n) for n in self.root["X"].attrs["shape"]]
            var = self.root["var"]
            n_var = int(var[var.attrs["_index"]].shape[0])
            n_split = sum(int(self.metadata["split_counts"].get(name, 0)) for name in SPLITS)
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(str(self.path), "X", f"shape unreadable ({err})", "re-create the store") from err
        recorded = [self.n_cells, self.n_genes]
        if shape != recorded or n_var != self.n_genes or n_split != self.n_cells:
            problem = f"X {shape}, {n_var} genes in var and {n_split} cells in the splits, not {recorded}"
            raise InputError(str(self.path), METADATA, problem, "re-create the store")

    @property
    def n_cells(self) -> int:
        return int(self.metadata["n_cells"])

    @property
    def n_genes(self) -> int:
        return int(self.metadata["n_genes"])

    @cached_property
    def _var(self) -> pd.DataFrame:
        return ad.io.read_elem(self.root["var"])

    @cached_property
    def gene_names(self) -> pd.Index:
        return self._var.index

    @cached_property
    def genes(self) -> GeneTable:
        """The store's genes: symbols, Ensembl ids when the sources had them, and how many of the merged sources
        measured each gene (``n_sources_measured``; the others were zero-filled). Stores written before that was
        recorded count every gene as measured."""
        table = GeneTable.from_var(self._var, str(self.path))
        if "n_sources_measured" not in self._var.columns:
            return table
        n_measured = self._var["n_sources_measured"].to_numpy().astype(np.int64)
        n_sources = int(self.metadata.get("n_sources", max(int(n_measured.max(initial=0)), 1)))
        return dataclasses.replace(table, n_sources_measured=n_measured, n_sources=n_sources)

    def measured_by_source(self) -> np.ndarray:
        """``(sources, genes)`` booleans: which genes each source of the store really had (all True if unrecorded)."""
        if "measured_bits" not in self.root["uns/cellssl"]:
            return np.ones((1, self.n_genes), dtype=bool)
        bits = np.asarray(self.root["uns/cellssl/measured_bits"][...])
        return np.unpackbits(bits, axis=1, count=self.n_genes).astype(bool)

    @property
    def counts(self) -> CountsReader:
        """The tensorstore reader of the counts (opened on first use, once per process)."""
        if self._counts is None:
            self._counts = CountsReader(self.path, self.n_genes, metadata=self.metadata)
        return self._counts

    def labels(self, column: str) -> tuple[np.ndarray, list[str]]:
        """Integer codes (one per row) and the category names of an obs column."""
        if column not in self.root["obs"]:
            available = ", ".join(k for k in self.root["obs"] if k != "_index")
            raise InputError(str(self.path), f"obs['{column}']", "no such column", f"choose one of: {available}")
        values = ad.io.read_elem(self.root["obs"][column])
        categorical = pd.Categorical(values)
        return np.asarray(categorical.codes, dtype=np.int64), [str(c) for c in categorical.categories]

    def split_range(self, split: str) -> tuple[int, int]:
        """The ``[start, stop)`` row range of a split (rows are grouped train, val, test)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        counts = self.metadata["split_counts"]
        start = sum(counts[name] for name in SPLITS[: SPLITS.index(split)])
        return start, start + counts[split]

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Counts of rows ``[start, stop)`` as a CSR matrix with the stored value dtype."""
        return self.counts.read([(start, stop)])

    def read_split(self, split: str, max_cells: int | None = None) -> tuple[sp.csr_matrix, np.ndarray]:
        """Counts and global row ids of a split's first ``max_cells`` rows (a random subset: rows are pre-shuffled)."""
        start, stop = self.split_range(split)
        if max_cells is not None:
            stop = min(stop, start + max_cells)
        return self.read_rows(start, stop), np.arange(start, stop)
