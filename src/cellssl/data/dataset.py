"""An iterable dataset of sparse minibatches, read through tensorstore in contiguous runs, with prefetch.

Which rows form which batch is decided by :class:`EpochPlan` (a pure function of seed, epoch, rank and
world size). Each data-loader worker reads whole shuffle groups (disjoint across workers and ranks) on
background threads, ``prefetch_groups`` ahead and as many reads in flight, so reading and decompression
overlap training. Every batch carries its index in the plan; :class:`~cellssl.data.datamodule.CellDataLoader`
puts batches back in plan order, so the same seed gives the same batches in the same order on any number of
workers. A resumed epoch (``segments``: the parts of it trained so far) skips the batches trained under the
same dealing, or re-deals what is left to this run's ranks (:func:`~cellssl.data.plan.resume`).
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from cellssl.data.plan import EpochPlan, SubsetPlan, resume
from cellssl.store import CellStore
from cellssl.store.reader import RowRuns

# stored value dtypes torch takes as they are; others are converted to float32
_TORCH_SAFE = {np.dtype(t): np.dtype(t) for t in (np.uint8, np.int16, np.int32, np.float32)}
_TORCH_SAFE[np.dtype(np.uint16)] = np.dtype(np.int32) if not hasattr(torch, "uint16") else np.dtype(np.uint16)


def torch_value_dtype(stored: np.dtype) -> np.dtype:
    """The numpy dtype batch values are handed to torch in: the stored one where torch takes it."""
    return _TORCH_SAFE.get(np.dtype(stored), np.dtype(np.float32))


def batch_from_csr(
    counts: sp.csr_matrix, cell_ids: np.ndarray, labels: np.ndarray | None = None, dense: bool = False
) -> dict[str, torch.Tensor]:
    """The batch every model step takes: ``counts`` (a sparse CSR tensor, or dense on request), ids, labels."""
    return batch_from_arrays(counts.indptr, counts.indices, counts.data, counts.shape, cell_ids, labels, dense)


def batch_from_arrays(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    shape: tuple[int, int],
    cell_ids: np.ndarray,
    labels: np.ndarray | None = None,
    dense: bool = False,
) -> dict[str, torch.Tensor]:
    """:func:`batch_from_csr` from the three CSR arrays (no copy when they already have torch's dtypes)."""
    # values keep their stored integer type (a quarter to a half of float32's bytes to copy and move);
    # the model step converts them to float on its device
    tensor = torch.sparse_csr_tensor(
        torch.from_numpy(indptr.astype(np.int32, copy=False)),
        torch.from_numpy(indices.astype(np.int32, copy=False)),
        torch.from_numpy(data.astype(torch_value_dtype(data.dtype), copy=False)),
        size=shape,
        check_invariants=False,
    )
    batch = {
        "counts": tensor.to(torch.float32).to_dense() if dense else tensor,
        "cell_id": torch.from_numpy(np.asarray(cell_ids, dtype=np.int64)),
    }
    if labels is not None:
        batch["label"] = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return batch


def _limit_heap_arenas() -> None:
    """Cap glibc's malloc arenas at 2, so batch-sized buffers freed by one thread are reused by the other.

    The reader thread allocates group buffers and the consumer frees batches; with a heap arena per thread
    glibc fragments these and a long epoch's peak memory crept from 1.2 to 2.7 GB in the loader benchmark.
    Two arenas keep it near 1.3 GB at the same speed (serving large buffers from mmap instead halved it).
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
            ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX


def _distributed_context() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class CellBatchDataset(IterableDataset):
    """Yields ready-made batches ``{counts, cell_id, batch_index[, label]}`` of one split of a store.

    ``epoch``, ``rank``, ``world_size`` and ``segments`` (the parts of this epoch already trained, from the
    checkpointed :class:`~cellssl.data.datamodule.CellDataModule` state) are set by the loader before each pass.
    ``rows`` (split-relative, :class:`~cellssl.data.subset.SubsetCellBatchDataset`) restricts it to a subset.
    """

    rows: np.ndarray | None = None

    def __init__(
        self,
        store_path: str | Path,
        split: str,
        batch_size: int,
        block_size: int = 1024,
        shuffle_batches: int = 4,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        label_key: str | None = None,
        prefetch_groups: int = 2,
        dense: bool = False,
        mix_size: int = 32,
    ) -> None:
        super().__init__()
        self.store_path, self.split = Path(store_path), split
        self.batch_size, self.block_size, self.shuffle_batches = batch_size, block_size, shuffle_batches
        self.seed, self.shuffle, self.drop_last, self.label_key = seed, shuffle, drop_last, label_key
        self.prefetch_groups, self.dense, self.mix_size = prefetch_groups, dense, mix_size
        self.epoch, self.segments = 0, []
        self.rank, self.world_size = _distributed_context()
        store = CellStore(store_path)
        self.row_start, row_stop = store.split_range(split)
        self.n_rows = row_stop - self.row_start
        self._store: CellStore | None = None
        self._labels: np.ndarray | None = None

    def _fresh_plan(self) -> EpochPlan:
        return EpochPlan(
            n_rows=self.n_rows if self.rows is None else len(self.rows),
            batch_size=self.batch_size,
            block_size=self.block_size,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
            drop_last=self.drop_last,
            shuffle=self.shuffle,
            mix_size=self.mix_size,
            group_batches=self.shuffle_batches,
        )

    def plan(self) -> tuple[EpochPlan | SubsetPlan, int]:
        """This rank's plan of the epoch (of what it has left, when resumed) and the batches of it already done."""
        plan, done = resume(self._fresh_plan(), self.segments)
        return (plan if self.rows is None else SubsetPlan(plan, self.rows)), done

    def __len__(self) -> int:
        """The epoch's batches as Lightning counts them: those trained before a resume included. A resumed epoch
        with nothing left (an end-of-epoch checkpoint) is followed by a fresh one: its length."""
        fresh = self._fresh_plan()
        plan, done = resume(fresh, self.segments)
        if plan.num_batches == done:
            return fresh.num_batches
        return sum(int(segment["batches"]) for segment in self.segments) - done + plan.num_batches

    # -- reading -------------------------------------------------------------------------------------------------
    def _open(self) -> CellStore:
        # Opened lazily, once per process: tensorstore handles are not shared across processes.
        if self._store is None:
            self._store = CellStore(self.store_path)
            if self.label_key is not None:  # held in the narrowest integer type (1 B/cell below 128 types)
                codes, names = self._store.labels(self.label_key)
                self._labels = codes.astype(np.min_scalar_type(-max(len(names), 1)))
        return self._store

    def _read_group(self, store: CellStore, batches: list[np.ndarray]) -> RowRuns:
        """Read a group's rows (split-relative) as the contiguous runs they form."""
        rows = np.sort(np.concatenate(batches)) + self.row_start
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        runs = [(int(run[0]), int(run[-1]) + 1) for run in np.split(rows, breaks)]
        return store.counts.read_runs(runs)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        _limit_heap_arenas()
        store = self._open()
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        plan, done = self.plan()
        groups = (
            (g, batches)
            for g, batches in plan.groups(worker, num_workers)
            if (g + 1) * plan.group_batches > done  # groups already trained on are not read
        )
        pending: deque[tuple[int, list[np.ndarray], Future]] = deque()
        # as many reads in flight as groups read ahead: from a cold disk one group's read leaves it idle while
        # that group decompresses (docs/benchmarks.md, cold reads)
        readers = max(1, self.prefetch_groups)
        with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="cellssl-read") as reader:
            for g, batches in groups:
                pending.append((g, batches, reader.submit(self._read_group, store, batches)))
                if len(pending) <= self.prefetch_groups:
                    continue
                yield from self._emit(*pending.popleft(), done)
            while pending:
                yield from self._emit(*pending.popleft(), done)

    def _emit(
        self, group: int, batches: list[np.ndarray], future: Future, done: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        part: RowRuns = future.result()
        value_dtype = torch_value_dtype(part.data[0].dtype)
        for i, rows in enumerate(batches):
            index = group * self.shuffle_batches + i
            if index < done:
                continue
            cell_ids = rows + self.row_start
            labels = None if self._labels is None else self._labels[cell_ids]
            indptr, indices, data = part.gather(cell_ids, value_dtype)
            shape = (len(cell_ids), part.n_genes)
            batch = batch_from_arrays(indptr, indices, data, shape, cell_ids, labels, self.dense)
            batch["batch_index"] = torch.tensor(index)
            yield batch
