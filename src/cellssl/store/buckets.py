"""The external shuffle behind the converters: rows read in storage order, written in a shuffled final order.

Rows move as whole slices (one copy per row and array, cast to the stored types on the way): a row holds
hundreds to thousands of values, so a Python loop of slice copies runs at memory speed, and numpy has no
vectorised copy of ragged runs. Rows go straight to their final slots rather than through stacked or sorted
intermediates, because fresh memory is what costs most here: touching a new page costs about ten times
copying it, so every full-size intermediate array is a second of conversion per gigabyte.
"""

from __future__ import annotations

import mmap
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

COMPONENTS = ("data", "indices", "lengths", "positions")


def unadvised_empty(n: int, dtype: Any) -> np.ndarray:
    """An uninitialised array in a plain anonymous mapping of its own, without numpy's huge-page advice.

    numpy asks the kernel to back arrays of 4 MB or more with huge pages; where none can be had (fragmented
    memory with THP ``defrag=madvise``, as on the VMs here) each first touch stalls on compaction: filling a
    fresh 1 GB array took 2.05 s with the advice and 0.38 s without (docs/benchmarks.md). The placement arrays
    are the largest fresh memory a conversion touches. Elsewhere than Linux: a plain ``np.empty``.
    """
    dtype = np.dtype(dtype)
    if n == 0 or not hasattr(mmap, "MAP_PRIVATE"):
        return np.empty(n, dtype)
    return np.frombuffer(mmap.mmap(-1, n * dtype.itemsize, flags=mmap.MAP_PRIVATE), dtype=dtype)


class PlacedRows:
    """CSR rows copied straight into their final slots, in arrays allocated once.

    ``row_lengths`` holds the stored entries of every final row, so each row's slot is known before any row
    arrives; ``put`` copies rows, in any order, to their final positions. Nothing is stacked or sorted.
    ``out``: arrays to place into (at least as long as the rows need), instead of new ones.
    """

    def __init__(
        self,
        row_lengths: np.ndarray,
        data_dtype: Any,
        index_dtype: Any,
        out: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.row_lengths = np.asarray(row_lengths, dtype=np.int64)
        self.indptr = np.zeros(len(self.row_lengths) + 1, dtype=np.int64)
        np.cumsum(self.row_lengths, out=self.indptr[1:])
        n_entries = int(self.indptr[-1])
        if out is None:
            out = unadvised_empty(n_entries, data_dtype), unadvised_empty(n_entries, index_dtype)
        self.data, self.indices = out[0][:n_entries], out[1][:n_entries]
        self.n_placed = 0

    def put(
        self, data: np.ndarray, indices: np.ndarray, starts: np.ndarray, ends: np.ndarray, positions: np.ndarray
    ) -> None:
        """Copy row ``data[starts[i]:ends[i]]`` (and its ``indices``) to final row ``positions[i]``."""
        if not np.array_equal(np.asarray(ends) - starts, self.row_lengths[positions]):
            raise ValueError("row lengths differ from the planned ones: the input changed between passes")
        out_data, out_indices = self.data, self.indices
        targets = self.indptr[positions].tolist()
        for start, end, target in zip(np.asarray(starts).tolist(), np.asarray(ends).tolist(), targets, strict=True):
            out_data[target : target + end - start] = data[start:end]  # casts to the stored dtype
            out_indices[target : target + end - start] = indices[start:end]
        self.n_placed += len(targets)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(data, indices, indptr)`` once every row has been placed."""
        if self.n_placed != len(self.row_lengths):
            raise RuntimeError(f"{self.n_placed} rows placed of {len(self.row_lengths)} planned")
        return self.data, self.indices, self.indptr


def gather_rows(
    data: np.ndarray, indices: np.ndarray, starts: np.ndarray, ends: np.ndarray, data_dtype: Any, index_dtype: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The rows ``data[starts[i]:ends[i]]`` and their ``indices``, concatenated and cast to the stored dtypes."""
    bounds = list(zip(np.asarray(starts).tolist(), np.asarray(ends).tolist(), strict=True))
    gathered_data = np.concatenate([data[s:e] for s, e in bounds], dtype=data_dtype, casting="unsafe")
    gathered_indices = np.concatenate([indices[s:e] for s, e in bounds], dtype=index_dtype, casting="unsafe")
    return gathered_data, gathered_indices


class RowBuckets:
    """Rows scattered into buckets of consecutive final positions, in memory or as files on disk.

    ``edges`` splits the final positions into buckets (bucket ``b`` holds ``edges[b]:edges[b + 1]``);
    ``put`` files rows, in any order, under their final positions; ``take(b)`` returns bucket ``b``'s rows in
    final order. Readers that must read in storage order (an ``.h5ad``, the census) scatter into buckets of
    about ``memory_mb`` each and write bucket by bucket: an external shuffle whose memory does not grow with
    the data. Beyond one bucket, each is four append-only files (values, indices, row lengths, positions) in a
    temporary folder next to ``spill_next_to``, removed on ``close``. With ``row_lengths`` (of every final row)
    a single bucket is filled in place: rows go straight to their final slots. Otherwise ``take`` places each
    bucket into the same arrays (fresh memory is the dear part), so what it returns is valid until the next
    ``take`` (``reuses_arrays``).
    """

    def __init__(
        self,
        edges: np.ndarray,
        data_dtype: Any,
        index_dtype: Any,
        spill_next_to: Path,
        row_lengths: np.ndarray | None = None,
    ) -> None:
        self.edges = np.asarray(edges, dtype=np.int64)
        self.dtypes = {
            "data": np.dtype(data_dtype),
            "indices": np.dtype(index_dtype),
            "lengths": np.dtype(np.int64),
            "positions": np.dtype(np.int64),
        }
        self.pieces: list[list[dict[str, np.ndarray]]] = [[] for _ in range(self.n_buckets)]  # in memory only
        self.workdir: Path | None = None
        if self.n_buckets > 1:
            spill_next_to.parent.mkdir(parents=True, exist_ok=True)
            self.workdir = Path(tempfile.mkdtemp(prefix=f".{spill_next_to.name}.buckets-", dir=spill_next_to.parent))
        self.placed = None
        if row_lengths is not None and self.n_buckets == 1:
            self.placed = PlacedRows(row_lengths, data_dtype, index_dtype)
        self.rows = np.zeros(self.n_buckets, dtype=np.int64)  # rows filed per bucket
        self.entries = np.zeros(self.n_buckets, dtype=np.int64)  # stored entries filed per bucket
        self._scratch: tuple[np.ndarray, np.ndarray] | None = None  # the arrays every take places into

    @property
    def reuses_arrays(self) -> bool:
        """Whether ``take`` returns arrays that the next ``take`` overwrites."""
        return self.placed is None

    @property
    def n_buckets(self) -> int:
        return len(self.edges) - 1

    def __enter__(self) -> RowBuckets:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop every bucket and remove the spill folder."""
        self.pieces = [[] for _ in range(self.n_buckets)]
        self.rows[:] = 0
        self.placed, self._scratch = None, None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def put(
        self, data: np.ndarray, indices: np.ndarray, starts: np.ndarray, ends: np.ndarray, positions: np.ndarray
    ) -> None:
        """File the rows ``data[starts[i]:ends[i]]`` (and their ``indices``) under final ``positions[i]``."""
        if len(positions) == 0:
            return
        if self.placed is not None:
            self.placed.put(data, indices, starts, ends, np.asarray(positions) - self.edges[0])
            return
        bucket_of = np.searchsorted(self.edges, positions, side="right") - 1
        by_bucket = np.argsort(bucket_of, kind="stable")
        starts, ends = np.asarray(starts)[by_bucket], np.asarray(ends)[by_bucket]
        values, columns = gather_rows(data, indices, starts, ends, self.dtypes["data"], self.dtypes["indices"])
        lengths, positions = ends - starts, np.asarray(positions)[by_bucket]
        row_bounds = np.searchsorted(bucket_of[by_bucket], np.arange(self.n_buckets + 1))
        entry_bounds = np.concatenate([[0], np.cumsum(lengths)])[row_bounds]
        for bucket in np.flatnonzero(np.diff(row_bounds)).tolist():
            rows = slice(row_bounds[bucket], row_bounds[bucket + 1])
            entries = slice(entry_bounds[bucket], entry_bounds[bucket + 1])
            piece = {"data": values[entries], "indices": columns[entries], "lengths": lengths[rows]}
            piece["positions"] = positions[rows]
            self.rows[bucket] += rows.stop - rows.start
            self.entries[bucket] += entries.stop - entries.start
            if self.workdir is None:
                self.pieces[bucket].append({name: np.array(part, self.dtypes[name]) for name, part in piece.items()})
                continue
            for name, part in piece.items():  # raw appends: a bucket's pieces end up as one array per file
                with open(self._path(bucket, name), "ab") as file:
                    file.write(np.ascontiguousarray(part, dtype=self.dtypes[name]).data)

    def _path(self, bucket: int, name: str) -> Path:
        assert self.workdir is not None
        return self.workdir / f"bucket{bucket}.{name}"

    def _arrays(self, bucket: int) -> dict[str, np.ndarray]:
        """The bucket's pieces as one array per component: mapped from its files, or stacked in memory."""
        if self.workdir is None:
            pieces = self.pieces[bucket]
            return {name: np.concatenate([p[name] for p in pieces]) for name in COMPONENTS}
        arrays = {}
        for name in COMPONENTS:
            path = self._path(bucket, name)
            if path.exists() and path.stat().st_size:  # mmap refuses empty files
                # a plain ndarray view: slicing an np.memmap costs ~2 µs per slice in its Python subclass hooks
                arrays[name] = np.memmap(path, self.dtypes[name], mode="r").view(np.ndarray)
            else:
                arrays[name] = np.empty(0, self.dtypes[name])
        return arrays

    def take(self, bucket: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """Bucket ``bucket``'s rows in final order as ``(data, indices, indptr, positions)``; None if it got none.

        Unless the single bucket was placed in place, ``data`` and ``indices`` are overwritten by the next take.
        """
        if self.placed is not None:
            placed, self.placed = self.placed, None
            return (*placed.arrays(), np.arange(self.edges[0], self.edges[1]))
        if not self.rows[bucket]:
            return None
        arrays = self._arrays(bucket)
        positions, lengths = np.asarray(arrays["positions"]), np.asarray(arrays["lengths"])
        order = np.argsort(positions)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        if self._scratch is None:  # sized for the largest bucket, allocated once
            largest = int(self.entries.max())
            self._scratch = tuple(unadvised_empty(largest, self.dtypes[name]) for name in ("data", "indices"))
        placed = PlacedRows(lengths[order], self.dtypes["data"], self.dtypes["indices"], out=self._scratch)
        ends = np.cumsum(lengths)
        placed.put(arrays["data"], arrays["indices"], ends - lengths, ends, rank)
        self.pieces[bucket], self.rows[bucket] = [], 0
        del arrays
        if self.workdir is not None:
            for name in COMPONENTS:
                self._path(bucket, name).unlink(missing_ok=True)
        return (*placed.arrays(), positions[order])
