"""Which rows go into which batch, for one epoch, one rank and one worker: a pure function of the seed.

Rows ``[0, n)`` (one split) are cut into contiguous blocks; the blocks are permuted with
``seed + epoch``; the resulting row sequence is cut into one contiguous share per rank. Every rank
gets the same number of batches (DDP would hang otherwise): without ``drop_last`` each share is
split into ``ceil(ceil(n / world) / batch)`` near-equal batches, so no cell is dropped; with it,
every batch is full and the remainder is dropped. Batches are grouped into shuffle groups whose
rows are read together and shuffled in memory, in runs of ``mix_size`` consecutive rows (1: row by row);
groups are dealt to data-loader workers round-robin.

Why runs: the store's rows are shuffled once when it is written, so any run of rows is already a random
sample; shuffling runs of 32 rather than single rows mixes the batches as well (label entropy equal to
random sampling, ``docs/benchmarks.md``) and lets the loader assemble a batch from a few hundred slice
copies instead of a gather of every row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EpochPlan:
    """The batch layout of one epoch on one rank."""

    n_rows: int
    batch_size: int
    block_size: int
    seed: int
    epoch: int
    rank: int = 0
    world_size: int = 1
    drop_last: bool = False
    shuffle: bool = True
    mix_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world of size {self.world_size}")
        if self.batch_size < 1 or self.block_size < 1 or self.mix_size < 1:
            raise ValueError("batch_size, block_size and mix_size must be positive")

    @property
    def num_batches(self) -> int:
        """Batches per rank, equal on every rank."""
        if self.drop_last:
            return self.n_rows // self.world_size // self.batch_size
        return math.ceil(math.ceil(self.n_rows / self.world_size) / self.batch_size)

    def _row_sequence(self, positions: np.ndarray) -> np.ndarray:
        """Map positions in the epoch's block-permuted sequence to row indices."""
        n_blocks = math.ceil(self.n_rows / self.block_size)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n_blocks)
        else:
            order = np.arange(n_blocks)
        block_starts = order * self.block_size
        block_lengths = np.minimum(block_starts + self.block_size, self.n_rows) - block_starts
        ends = np.cumsum(block_lengths)
        k = np.searchsorted(ends, positions, side="right")
        return block_starts[k] + positions - (ends[k] - block_lengths[k])

    def batch_bounds(self) -> np.ndarray:
        """Positions ``[start, stop)`` in the permuted sequence of each of this rank's batches."""
        if self.drop_last:
            share = self.num_batches * self.batch_size
            start = self.rank * share
            edges = start + np.arange(self.num_batches + 1) * self.batch_size
        else:
            start = self.n_rows * self.rank // self.world_size
            stop = self.n_rows * (self.rank + 1) // self.world_size
            edges = start + np.round(np.linspace(0, stop - start, self.num_batches + 1)).astype(np.int64)
        return np.stack([edges[:-1], edges[1:]], axis=1)

    def groups(self, group_batches: int, worker: int = 0, num_workers: int = 1):
        """Yield ``(group_index, row_indices_per_batch)`` for the shuffle groups of one worker.

        A group's rows are read together (as contiguous runs) and shuffled across its batches in runs of
        ``mix_size`` positions, cut on multiples of ``mix_size`` so that runs stay inside blocks when
        ``block_size`` is a multiple of it.
        """
        bounds = self.batch_bounds()
        for g, first in enumerate(range(0, len(bounds), group_batches)):
            if g % num_workers != worker:
                continue
            group = bounds[first : first + group_batches]
            positions = np.arange(group[0, 0], group[-1, 1])
            rows = self._row_sequence(positions)
            if self.shuffle:
                rng = np.random.default_rng([self.seed, self.epoch, self.rank, g])
                run_of = np.cumsum(positions % self.mix_size == 0) - (positions[0] % self.mix_size == 0)
                run_rank = np.empty(run_of[-1] + 1, dtype=np.int64)
                run_rank[rng.permutation(len(run_rank))] = np.arange(len(run_rank))
                rows = rows[np.argsort(run_rank[run_of], kind="stable")]
            sizes = group[:, 1] - group[:, 0]
            yield g, np.split(rows, np.cumsum(sizes)[:-1])


@dataclass(frozen=True, eq=False)
class SubsetPlan:
    """An :class:`EpochPlan` over a subset of a split's rows: the plan's positions index ``rows``.

    ``plan.n_rows`` must be ``len(rows)``; batches, shuffling, rank shares and resume work as in the full plan.
    """

    plan: EpochPlan
    rows: np.ndarray

    def __post_init__(self) -> None:
        if self.plan.n_rows != len(self.rows):
            raise ValueError(f"plan over {self.plan.n_rows} positions for {len(self.rows)} rows")

    @property
    def num_batches(self) -> int:
        return self.plan.num_batches

    def groups(self, group_batches: int, worker: int = 0, num_workers: int = 1):
        """As :meth:`EpochPlan.groups`, with positions mapped to the subset's rows."""
        for g, batches in self.plan.groups(group_batches, worker, num_workers):
            yield g, [self.rows[b] for b in batches]
