"""An iterable dataset of sparse minibatches read as contiguous row runs from a cell store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from cellssl.data.plan import EpochPlan
from cellssl.store import CellStore


def batch_from_csr(
    counts: sp.csr_matrix, cell_ids: np.ndarray, labels: np.ndarray | None = None
) -> dict[str, torch.Tensor]:
    """The batch format every model step takes: CSR arrays of the counts, cell ids, optional labels."""
    batch = {
        "indptr": torch.from_numpy(counts.indptr.astype(np.int64)),
        "indices": torch.from_numpy(counts.indices.astype(np.int64)),
        "values": torch.from_numpy(counts.data.astype(np.float32)),
        "cell_id": torch.from_numpy(np.asarray(cell_ids, dtype=np.int64)),
    }
    if labels is not None:
        batch["label"] = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return batch


def _distributed_context() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class CellBatchDataset(IterableDataset):
    """Yields ready-made batches ``{indptr, indices, values, cell_id[, label]}`` of one split.

    Rows are read in shuffle groups of ``shuffle_batches`` batches (contiguous runs of
    ``block_size`` rows, then an in-memory shuffle). Which rows a (rank, worker) reads is decided
    by :class:`EpochPlan`, so shares are disjoint and every rank yields the same number of batches.
    ``epoch``, ``rank`` and ``world_size`` are set by :class:`CellDataLoader` before each epoch.
    """

    def __init__(
        self,
        store_path: str | Path,
        split: str,
        batch_size: int,
        block_size: int = 256,
        shuffle_batches: int = 8,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        label_key: str | None = None,
    ) -> None:
        super().__init__()
        self.store_path, self.split = Path(store_path), split
        self.batch_size, self.block_size, self.shuffle_batches = batch_size, block_size, shuffle_batches
        self.seed, self.shuffle, self.drop_last, self.label_key = seed, shuffle, drop_last, label_key
        self.epoch = 0
        self.rank, self.world_size = _distributed_context()
        store = CellStore(store_path)
        self.row_start, row_stop = store.split_range(split)
        self.n_rows = row_stop - self.row_start
        self._store: CellStore | None = None
        self._labels: np.ndarray | None = None

    def plan(self) -> EpochPlan:
        return EpochPlan(
            n_rows=self.n_rows,
            batch_size=self.batch_size,
            block_size=self.block_size,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
            drop_last=self.drop_last,
            shuffle=self.shuffle,
        )

    def __len__(self) -> int:
        return self.plan().num_batches

    def _open(self) -> CellStore:
        # Opened lazily, once per worker process: zarr handles are not shared across processes.
        if self._store is None:
            self._store = CellStore(self.store_path)
            if self.label_key is not None:
                self._labels = self._store.labels(self.label_key)[0]
        return self._store

    def _read(self, store: CellStore, rows: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
        """Read the sorted ``rows`` (split-relative) as contiguous runs; return them stacked."""
        rows = np.sort(rows) + self.row_start
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        runs = [(int(run[0]), int(run[-1]) + 1) for run in np.split(rows, breaks)]
        return sp.vstack([store.read_rows(a, b) for a, b in runs], format="csr"), rows

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        store = self._open()
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        for _, batches in self.plan().groups(self.shuffle_batches, worker, num_workers):
            matrix, sorted_rows = self._read(store, np.concatenate(batches))
            for rows in batches:
                cell_ids = rows + self.row_start
                labels = None if self._labels is None else self._labels[cell_ids]
                yield batch_from_csr(matrix[np.searchsorted(sorted_rows, cell_ids)], cell_ids, labels)
