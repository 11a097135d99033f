"""The steps every converter shares: plan each cell's final row, size the buckets, write the buckets in order.

A converter (``.h5ad`` files in convert.py, the census in census.py) runs them in this order:

1. :func:`final_order`: the cells in final order, grouped by split (train, val, test) and shuffled within
   each split with a seeded permutation; :func:`positions_of` gives every input cell its final row;
2. :func:`buckets_by_entries` (row lengths known: one array filled in place when the data fits ``memory_mb``
   as stored, else buckets of about ``memory_mb`` on disk) or :func:`buckets_by_cells` (lengths unknown until
   read: buckets sized from the non-zeros per cell seen in the first chunk);
3. the converter reads its input in storage order and files every row under its final position
   (:meth:`~cellssl.store.buckets.RowBuckets.put`);
4. :func:`write_buckets`: bucket by bucket, in final order, into the :class:`~cellssl.store.writer.StoreWriter`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cellssl.store.buckets import RowBuckets
from cellssl.store.format import index_dtype_for
from cellssl.store.splits import SPLITS
from cellssl.store.writer import StoreWriter


def final_order(split: np.ndarray, seed: int) -> np.ndarray:
    """Indices of the cells in final order: grouped by split (train, val, test), each split permuted with a
    generator seeded ``seed + 1``. Cells whose split is none of these (``""``: dropped) are left out."""
    rng = np.random.default_rng(seed + 1)
    return np.concatenate([rng.permutation(np.flatnonzero(split == name)) for name in SPLITS])


def positions_of(order: np.ndarray, n_cells: int) -> np.ndarray:
    """The final row of each of ``n_cells`` input cells (``-1``: not written), from :func:`final_order`."""
    position = np.full(n_cells, -1, dtype=np.int64)
    position[order] = np.arange(len(order))
    return position


def buckets_by_entries(
    lengths: np.ndarray, data_dtype: Any, n_genes: int, memory_mb: float, spill_next_to: Path
) -> RowBuckets:
    """Buckets of consecutive final rows holding about ``memory_mb`` each as stored (values + int16/32 indices).

    ``lengths``: the stored entries of every final row. One bucket is filled in place (rows go straight to their
    final slots); more are spilled to disk next to ``spill_next_to``.
    """
    indices = index_dtype_for(n_genes)
    total_bytes = int(lengths.sum()) * (np.dtype(data_dtype).itemsize + indices.itemsize)
    n_buckets = max(1, math.ceil(total_bytes / (memory_mb * 2**20)))
    cumulative = np.cumsum(lengths)
    cuts = np.searchsorted(cumulative, np.linspace(0, cumulative[-1], n_buckets + 1)[1:-1])
    edges = np.concatenate([[0], cuts, [len(lengths)]])
    return RowBuckets(edges, data_dtype, indices, spill_next_to=spill_next_to, row_lengths=lengths)


def buckets_by_cells(
    n_cells: int, entries_per_cell: float, data_dtype: Any, n_genes: int, memory_mb: float, spill_next_to: Path
) -> RowBuckets:
    """Buckets of equally many consecutive final rows, about ``memory_mb`` each at ``entries_per_cell``."""
    index_dtype = index_dtype_for(n_genes)
    bytes_per_cell = entries_per_cell * (np.dtype(data_dtype).itemsize + index_dtype.itemsize)
    n_buckets = max(1, math.ceil(bytes_per_cell * n_cells / (memory_mb * 2**20)))
    edges = np.linspace(0, n_cells, n_buckets + 1).astype(np.int64)
    return RowBuckets(edges, data_dtype, index_dtype, spill_next_to=spill_next_to)


def write_buckets(
    buckets: RowBuckets, writer: StoreWriter, obs_of: Callable[[np.ndarray], pd.DataFrame], show: bool | None
) -> None:
    """Append every bucket's rows, in final order, with their obs rows ``obs_of(final rows)``.

    ``show``: tqdm's ``disable`` (``None``: a bar on a terminal only; no bar for a single bucket).
    """
    for b in tqdm(range(buckets.n_buckets), desc="write", unit="bucket", disable=show or buckets.n_buckets == 1):
        taken = buckets.take(b)
        if taken is None:  # every row of this bucket was dropped as empty
            continue
        data, indices, indptr, rows = taken
        writer.append_arrays(data, indices, indptr, obs_of(rows), copy=buckets.reuses_arrays)
