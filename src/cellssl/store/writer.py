"""Stream cells into a new cell store: CSR row chunks in, sharded Zarr v3 arrays out, atomically.

:class:`StoreWriter` is the one place that writes stores. Every source (in-memory or backed AnnData,
several `.h5ad` files, the census, the synthetic generator) feeds it chunks of rows already in their final
order: grouped by split (train, val, test) and shuffled within each split. It buffers whole shards so
each shard is written once, keeps only obs codes in memory, writes obs/var/metadata at the end, and
renames a temporary directory into place: a failure leaves nothing at the target path.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import tensorstore as ts
import zarr

from cellssl.store.format import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_SHARD_SIZE,
    FORMAT_VERSION,
    checked_compressors,
    default_compressor,
    index_dtype_for,
    vocabulary_hash,
)
from cellssl.store.output import check_output, output_error, replace_path
from cellssl.store.splits import SPLITS
from cellssl.store.validation import InputError

log = logging.getLogger(__name__)


class _AppendArray:
    """A 1-D sharded Zarr array grown by appending; whole shards are written once (no read-modify-write).

    zarr-python creates the array (its metadata is what anndata reads); the shards are then written through
    tensorstore, which compresses a shard's chunks on all cores and writes while the caller prepares the
    next rows: at most ``in_flight`` writes are pending, so memory stays bounded.
    """

    SHARDS_PER_WRITE = 8  # shards handed to tensorstore per write: fewer resizes, compression spread over cores

    def __init__(
        self, group: zarr.Group, name: str, dtype: Any, chunk_size: int, shard_size: int, in_flight: int = 2
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.shard_size, self.in_flight = shard_size, in_flight
        self.array = group.create_array(
            name,
            shape=(0,),
            chunks=(chunk_size,),
            shards=(shard_size,),
            dtype=self.dtype,
            compressors=checked_compressors(),
            fill_value=0,
        )
        spec = {
            "driver": "zarr3",
            "kvstore": {"driver": "file", "path": str(Path(group.store.root) / group.path / name)},
        }
        context = ts.Context({"data_copy_concurrency": {"limit": os.cpu_count() or 1}})
        self._store = ts.open(spec, open=True, write=True, context=context).result()
        self._writes: deque[ts.WriteFutures] = deque()
        self._pending: list[np.ndarray] = []
        self._pending_size = 0
        self.length = 0

    def append(self, values: np.ndarray, copy: bool = True) -> None:
        """Append ``values`` (cast to the array's dtype); whole shards are written from views of them.

        ``copy=False``: tensorstore may keep the views until the write completes instead of copying them, so
        the caller must not change ``values`` before :meth:`close`.
        """
        values = np.asarray(values)
        if self._pending_size:  # first complete the shard begun by earlier appends
            missing = self.shard_size - self._pending_size
            head, values = values[:missing], values[missing:]
            self._pending.append(head.astype(self.dtype))
            self._pending_size += len(head)
            if self._pending_size < self.shard_size:
                return
            self._write(np.concatenate(self._pending), owned=True)
            self._pending, self._pending_size = [], 0
        whole = len(values) - len(values) % self.shard_size
        for start in range(0, whole, self.shard_size * self.SHARDS_PER_WRITE):
            self._write(values[start : min(start + self.shard_size * self.SHARDS_PER_WRITE, whole)], owned=not copy)
        if whole < len(values):  # a copy: the caller may reuse its array
            self._pending, self._pending_size = [values[whole:].astype(self.dtype)], len(values) - whole

    def _write(self, values: np.ndarray, owned: bool = False) -> None:
        end = self.length + len(values)
        self._store = self._store.resize(exclusive_max=[end], expand_only=True).result()
        # arrays made here (casts, the pending shard) or handed over (copy=False) are left to tensorstore to keep;
        # other views of the caller's arrays are copied before append returns, as the caller may change them
        owned = owned or values.dtype != self.dtype
        values = values.astype(self.dtype, copy=False)
        write = self._store[self.length : end].write(values, can_reference_source_data_indefinitely=owned)
        if not owned:
            write.copy.result()
        self._writes.append(write)
        self.length = end
        while len(self._writes) > self.in_flight:
            self._writes.popleft().result()

    def close(self) -> None:
        if self._pending:
            self._write(np.concatenate(self._pending), owned=True)
            self._pending, self._pending_size = [], 0
        while self._writes:
            self._writes.popleft().result()


class StoreWriter:
    """Write a cell store chunk by chunk; use as a context manager.

    ``append(counts, obs)`` takes a CSR chunk (rows × genes) and its obs rows (indexed by cell id) with the
    ``label_columns``, the ``donor_column`` and a ``split`` column; rows must arrive grouped by split in the
    order train, val, test. ``count_dtype`` is the stored value type (checked for overflow per chunk).
    ``measured``: ``(sources, genes)`` booleans, which genes each merged source really had (the others were
    zero-filled); written as var columns ``n_sources_measured``/``measured_in_all`` and packed bits in
    ``uns/cellssl/measured_bits``. ``None``: one source that measured every gene.
    """

    def __init__(
        self,
        path: str | Path,
        gene_names: Sequence[str],
        *,
        count_dtype: Any = np.uint32,
        ensembl_ids: Sequence[str] | None = None,
        label_columns: Sequence[str] = (),
        donor_column: str | None = None,
        source: str = "unknown",
        normalised: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        shard_size: int = DEFAULT_SHARD_SIZE,
        overwrite: bool = False,
        extra_metadata: dict[str, Any] | None = None,
        measured: np.ndarray | None = None,
    ) -> None:
        self.path = check_output(path, overwrite)
        self.overwrite = overwrite
        if shard_size % chunk_size:
            raise ValueError(f"shard_size {shard_size} must be a multiple of chunk_size {chunk_size}")
        self.gene_names = pd.Index([str(g) for g in gene_names])
        self.ensembl_ids = None if ensembl_ids is None else [str(e) for e in ensembl_ids]
        self.count_dtype = np.dtype(count_dtype)
        self.measured = np.ones((1, len(self.gene_names)), dtype=bool) if measured is None else np.asarray(measured)
        if self.measured.ndim != 2 or self.measured.shape[1] != len(self.gene_names):
            raise ValueError(f"measured has shape {self.measured.shape}, not (sources, {len(self.gene_names)})")
        self.columns = [*label_columns, *([donor_column] if donor_column else []), "split"]
        self.label_columns, self.donor_column = list(label_columns), donor_column
        self.metadata = {
            "format_version": FORMAT_VERSION,
            "source": str(source),
            "normalised": bool(normalised),
            "label_columns": list(label_columns),
            "donor_column": donor_column,
            **(extra_metadata or {}),
        }
        self.chunk_size, self.shard_size = chunk_size, shard_size
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._open = False

    # -- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> StoreWriter:
        shutil.rmtree(self.tmp, ignore_errors=True)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.root = zarr.open_group(self.tmp, mode="w", zarr_format=3)
        except OSError as err:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise output_error(self.path, err) from err
        self.root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        x = self.root.create_group("X")
        self._data = _AppendArray(x, "data", self.count_dtype, self.chunk_size, self.shard_size)
        self._indices = _AppendArray(
            x, "indices", index_dtype_for(len(self.gene_names)), self.chunk_size, self.shard_size
        )
        self._indptr = _AppendArray(x, "indptr", np.int64, self.chunk_size, self.shard_size)
        self._indptr.append(np.zeros(1, dtype=np.int64))
        obs = self.root.create_group("obs")
        self._cell_ids = obs.create_array(
            "_index", shape=(0,), chunks=(self.chunk_size,), dtype=str, compressors=default_compressor()
        )
        self._cell_ids.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
        self._codes: dict[str, list[np.ndarray]] = {c: [] for c in self.columns}
        self._categories: dict[str, list[str]] = {c: [] for c in self.columns}
        self._split_counts = dict.fromkeys(SPLITS, 0)
        self._last_split = 0
        self.n_cells = self.nnz = 0
        self._open = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Remove the temporary store; nothing is left at the target path."""
        self._open = False
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- appending ---------------------------------------------------------------------------------------------
    def _encode(self, column: str, values: pd.Series) -> np.ndarray:
        """Codes of ``values`` in the column's growing category list (categories in order of appearance)."""
        categories = self._categories[column]
        known = {c: i for i, c in enumerate(categories)}
        strings = values.astype(str).to_numpy()
        uniques = pd.unique(strings)
        for value in uniques:
            if value not in known:
                known[value] = len(categories)
                categories.append(value)
        lookup = np.array([known[v] for v in uniques], dtype=np.int32)
        return lookup[pd.Index(uniques).get_indexer(strings)]

    def append(self, counts: sp.spmatrix, obs: pd.DataFrame) -> None:
        """Append rows (already in final order) and their obs."""
        counts = sp.csr_matrix(counts)
        if counts.shape[1] != len(self.gene_names):
            raise ValueError(f"chunk shape {counts.shape} does not match {len(self.gene_names)} genes")
        counts.sort_indices()
        self.append_arrays(counts.data, counts.indices, counts.indptr, obs)

    def append_arrays(
        self, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, obs: pd.DataFrame, copy: bool = True
    ) -> None:
        """Append CSR rows given as arrays (each row's column indices sorted) and their obs.

        The converters' path: indices may already be int16 (scipy would widen them), and whole shards are
        written from views of ``data`` and ``indices``. ``copy=False`` hands the arrays over uncopied (the
        caller must not change them afterwards).
        """
        if not self._open:
            raise RuntimeError("StoreWriter.append outside its with-block")
        n_rows = len(indptr) - 1
        if n_rows != len(obs) or len(data) != len(indices) or int(indptr[-1]) - int(indptr[0]) != len(data):
            raise ValueError(f"CSR arrays of {n_rows} rows and {len(data)} entries do not match {len(obs)} obs rows")
        if n_rows == 0:
            return
        missing = [c for c in self.columns if c not in obs.columns]
        if missing:
            raise ValueError(f"obs chunk lacks columns {missing}")
        split_codes = pd.Categorical(obs["split"], categories=list(SPLITS)).codes
        if (split_codes < 0).any() or split_codes.min() < self._last_split or (np.diff(split_codes) < 0).any():
            raise ValueError("rows must arrive grouped by split in the order train, val, test")
        self._last_split = int(split_codes[-1])
        if len(data) and np.issubdtype(self.count_dtype, np.integer) and not np.can_cast(data.dtype, self.count_dtype):
            top = data.max()
            if top > np.iinfo(self.count_dtype).max:
                raise ValueError(f"count {top} does not fit the store's {self.count_dtype}; choose a wider count_dtype")
        self._data.append(data, copy=copy)
        self._indices.append(indices, copy=copy)
        self._indptr.append(np.asarray(indptr[1:], dtype=np.int64) - int(indptr[0]) + self.nnz)
        end = self.n_cells + n_rows
        self._cell_ids.resize((end,))
        self._cell_ids[self.n_cells : end] = obs.index.astype(str).to_numpy()
        self._codes["split"].append(split_codes.astype(np.int32))
        for column in self.columns[:-1]:
            self._codes[column].append(self._encode(column, obs[column]))
        for name, n in zip(SPLITS, np.bincount(split_codes, minlength=3), strict=True):
            self._split_counts[name] += int(n)
        self.n_cells, self.nnz = end, self.nnz + len(data)

    # -- finishing ---------------------------------------------------------------------------------------------
    def _write_obs(self) -> None:
        """The obs columns (labels, donor, ``split``) as categoricals from their codes; the cell ids are written."""
        obs = self.root["obs"]
        for column in self.columns:
            codes = np.concatenate(self._codes[column])
            categories = list(SPLITS) if column == "split" else self._categories[column]
            values = pd.Categorical.from_codes(codes, categories=categories)
            with ad.settings.override(auto_shard_zarr_v3=False):
                ad.io.write_elem(obs, column, values)
        obs.attrs.update(
            {
                "_index": "_index",
                "column-order": self.columns,
                "encoding-type": "dataframe",
                "encoding-version": "0.2.0",
            }
        )

    def _write_var(self) -> None:
        """var: gene symbols (index), Ensembl ids when known, and how many sources measured each gene."""
        var = pd.DataFrame(index=pd.Index(self.gene_names, name="gene"))
        if self.ensembl_ids is not None:
            var["ensembl_id"] = self.ensembl_ids
        n_measured = self.measured.sum(axis=0)
        var["n_sources_measured"] = n_measured.astype(np.int32)
        var["measured_in_all"] = n_measured == len(self.measured)
        with ad.settings.override(auto_shard_zarr_v3=False):
            ad.io.write_elem(self.root, "var", var)

    @property
    def split_counts(self) -> dict[str, int]:
        """Cells appended so far, per split."""
        return dict(self._split_counts)

    def close(self) -> Path:
        """Write obs, var and metadata, then move the store into place."""
        if not self._open:
            raise RuntimeError("StoreWriter is not open")
        try:
            if self.n_cells == 0:
                raise InputError(self.metadata["source"], "cells", "no cells to write", "check the input and filters")
            for array in (self._data, self._indices, self._indptr):
                array.close()
            x = self.root["X"]
            x.attrs.update(
                {
                    "encoding-type": "csr_matrix",
                    "encoding-version": "0.1.0",
                    "shape": [self.n_cells, len(self.gene_names)],
                }
            )
            self._write_obs()
            self._write_var()
            n_measured = self.measured.sum(axis=0)
            self.metadata.update(
                n_cells=self.n_cells,
                n_genes=len(self.gene_names),
                nnz=self.nnz,
                vocabulary_hash=vocabulary_hash(self.gene_names),
                split_counts=self._split_counts,
                count_dtype=str(self.count_dtype),
                chunk_size=self.chunk_size,
                shard_size=self.shard_size,
                n_sources=len(self.measured),
                genes_measured_in_all=int((n_measured == len(self.measured)).sum()),
                genes_unmeasured=int((n_measured == 0).sum()),
            )
            uns = {"metadata_json": json.dumps(self.metadata), "measured_bits": np.packbits(self.measured, axis=1)}
            with ad.settings.override(auto_shard_zarr_v3=False):
                ad.io.write_elem(self.root, "uns", {"cellssl": uns})
            self._open = False
            check_output(self.path, self.overwrite)  # again: the target may have changed while writing
            replace_path(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        log.info(
            "wrote %s: %d cells x %d genes, %d non-zeros, splits %s",
            self.path,
            self.n_cells,
            len(self.gene_names),
            self.nnz,
            self._split_counts,
        )
        return self.path
