"""Which rows go into which batch, for one epoch, one rank and one worker: a pure function of the seed.

Rows ``[0, n)`` (one split) are cut into contiguous blocks; the blocks are permuted with ``seed + epoch``. The
resulting sequence of positions is cut into one global sequence of ``world × K`` batches, and the batches are
dealt to the ranks in rounds: in each round every rank gets ``group_batches`` consecutive batches (one shuffle
group, a contiguous run of positions; the last round is shorter). Every rank gets the same number ``K`` of batches
(DDP would hang otherwise): without ``drop_last`` ``K = ceil(ceil(n / world) / batch)`` and the global batches have
near-equal sizes (at most ``batch``), so no cell is dropped; with it, every batch is full and the remainder is
dropped. A group's rows are read together and shuffled across its batches in memory, in runs of ``mix_size``
consecutive positions (1: row by row); groups are dealt to data-loader workers round-robin.

Elastic resume: after every rank trained on its first ``k`` batches, :meth:`EpochPlan.rest` is the plan of what the
epoch has left (the unread batches of the round under way, then every later position, in the epoch's order), which
:func:`resume` re-deals to another number of ranks (or batch size), again in rounds of equal counts per rank, so an
epoch interrupted on N ranks and finished on M sees every cell once. A resume under the same dealing continues the
same plan, skipping the ``k`` batches: the order is that of an uninterrupted run.

Why runs: the store's rows are shuffled once when it is written, so any run of rows is already a random
sample; shuffling runs of 32 rather than single rows mixes the batches as well (label entropy equal to
random sampling, ``docs/benchmarks.md``) and lets the loader assemble a batch from a few hundred slice
copies instead of a gather of every row.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

# what a checkpoint records of the plan each part of an epoch was trained under (besides its batch count)
DEALING = ("world_size", "batch_size", "block_size", "group_batches", "mix_size", "drop_last")
_REDEALT = tuple(key for key in DEALING if key != "block_size")  # a re-deal keeps the epoch's order of rows


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """The batch layout of one epoch, seen from one rank.

    ``head`` and ``tail_start`` say which positions of the epoch's block-permuted order the plan deals: ``head``
    first, then ``[tail_start, n_rows)`` (a fresh epoch: all of them); ``deal`` counts the re-deals of this epoch
    (it keys the shuffles, so a re-dealt rest mixes anew).
    """

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
    group_batches: int = 4
    head: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64), repr=False)
    tail_start: int = 0
    deal: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world of size {self.world_size}")
        if min(self.batch_size, self.block_size, self.mix_size, self.group_batches) < 1:
            raise ValueError("batch_size, block_size, mix_size and group_batches must be positive")

    @property
    def n_positions(self) -> int:
        """The positions this plan deals (``n_rows`` for a fresh epoch)."""
        return len(self.head) + self.n_rows - self.tail_start

    @property
    def num_batches(self) -> int:
        """Batches per rank, equal on every rank."""
        n = self.n_positions
        if self.drop_last:
            return n // self.world_size // self.batch_size
        return math.ceil(math.ceil(n / self.world_size) / self.batch_size)

    def _edges(self) -> np.ndarray:
        """Plan positions ``edges[j], edges[j + 1]`` bounding global batch ``j``."""
        total = self.world_size * self.num_batches
        if self.drop_last:
            return np.arange(total + 1, dtype=np.int64) * self.batch_size
        return np.round(np.linspace(0, self.n_positions, total + 1)).astype(np.int64)

    def _epoch_positions(self, q: np.ndarray) -> np.ndarray:
        """Map plan positions to positions in the epoch's block-permuted order."""
        out = self.tail_start + q - len(self.head)
        in_head = q < len(self.head)
        out[in_head] = self.head[q[in_head]]
        return out

    def _row_sequence(self, positions: np.ndarray) -> np.ndarray:
        """Map positions in the epoch's block-permuted order to row indices."""
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

    def _group(self, t: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """Round ``t``'s group of ``rank``: its epoch positions (shuffled) and its batches' sizes."""
        per_rank = min(self.group_batches, self.num_batches - t * self.group_batches)
        first = t * self.world_size * self.group_batches + rank * per_rank
        edges = self._edges()[first : first + per_rank + 1]
        positions = self._epoch_positions(np.arange(edges[0], edges[-1]))
        if self.shuffle and len(positions):
            positions = self._mixed(positions, key=t * self.world_size + rank)
        return positions, np.diff(edges)

    def _mixed(self, positions: np.ndarray, key: int) -> np.ndarray:
        """``positions`` shuffled in runs: a run ends before a multiple of ``mix_size`` or a gap, so runs stay inside
        blocks when ``block_size`` is a multiple of ``mix_size``."""
        starts = np.ones(len(positions), dtype=bool)
        starts[1:] = (positions[1:] % self.mix_size == 0) | (np.diff(positions) != 1)
        run_of = np.cumsum(starts) - 1
        rng = np.random.default_rng([self.seed, self.epoch, self.deal, key])
        run_rank = np.empty(run_of[-1] + 1, dtype=np.int64)
        run_rank[rng.permutation(len(run_rank))] = np.arange(len(run_rank))
        return positions[np.argsort(run_rank[run_of], kind="stable")]

    def groups(self, worker: int = 0, num_workers: int = 1) -> Iterator[tuple[int, list[np.ndarray]]]:
        """Yield ``(group_index, row_indices_per_batch)`` for this rank's shuffle groups read by one worker.

        Group ``g`` holds this rank's batches ``g * group_batches`` onwards; its rows are read together (as
        contiguous runs) and shuffled across its batches in runs of ``mix_size`` positions.
        """
        for t in range(worker, math.ceil(self.num_batches / self.group_batches), num_workers):
            positions, sizes = self._group(t, self.rank)
            yield t, np.split(self._row_sequence(positions), np.cumsum(sizes)[:-1])

    def rest(self, batches_done: int) -> EpochPlan:
        """The plan of the positions left once every rank trained on its first ``batches_done`` batches: the unread
        batches of the round under way (each rank's, in turn), then every later position; same dealing, to be
        re-dealt with :func:`dataclasses.replace` (``world_size``, ``batch_size``, ...)."""
        if not 0 <= batches_done <= self.num_batches:
            raise ValueError(f"{batches_done} batches done of an epoch of {self.num_batches}")
        t, done_in_round = divmod(batches_done, self.group_batches)
        edges, left = self._edges(), []
        round_end = t * self.group_batches  # per rank: the batches of the rounds done, then of the one under way
        if done_in_round:  # each rank trained on the first batches of its group of round t
            round_end = min(round_end + self.group_batches, self.num_batches)
            for rank in range(self.world_size):
                positions, sizes = self._group(t, rank)
                left.append(positions[sizes[:done_in_round].sum() :])
        end = edges[round_end * self.world_size]
        head = np.concatenate([*left, self.head[end:]]).astype(np.int64)
        tail_start = self.tail_start + max(0, end - len(self.head))
        return replace(self, rank=0, head=head, tail_start=int(tail_start), deal=self.deal + 1)


def dealing(plan: EpochPlan) -> dict[str, Any]:
    """What a checkpoint records of the plan a part of an epoch is trained under (:data:`DEALING`)."""
    return {key: getattr(plan, key) for key in DEALING}


def continues(segment: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether the :func:`dealing` ``current`` deals as ``segment`` was dealt (the block size aside: only the epoch's
    first one orders its rows)."""
    return all(segment[key] == current[key] for key in _REDEALT)


def resume(plan: EpochPlan, segments: Sequence[Mapping[str, Any]]) -> tuple[EpochPlan, int]:
    """The plan that finishes an epoch trained so far in ``segments``, and how many of its batches are done.

    ``plan`` is the epoch's fresh plan under the current dealing (this rank, world size, batch size, ...);
    ``segments`` are the parts of the epoch trained so far, in order: each a :func:`dealing` with ``batches``, the
    batches every rank trained on in it. Under the last segment's dealing the epoch continues that segment's plan
    (skipping its batches); under another it re-deals the rest. The first segment's block size orders the epoch.
    """
    if not segments:
        return plan, 0
    current = replace(plan, rank=0, **{key: segments[0][key] for key in DEALING})
    for done, segment in itertools.pairwise(segments):
        current = replace(current.rest(done["batches"]), **{key: segment[key] for key in _REDEALT})
    if continues(segments[-1], dealing(plan)):
        return replace(current, rank=plan.rank), int(segments[-1]["batches"])
    ours = {key: getattr(plan, key) for key in _REDEALT}
    return replace(current.rest(segments[-1]["batches"]), rank=plan.rank, **ours), 0


@dataclass(frozen=True, eq=False)
class SubsetPlan:
    """An :class:`EpochPlan` over a subset of a split's rows: the plan's positions index ``rows``.

    ``plan.n_rows`` must be ``len(rows)``; batches, shuffling, dealing to ranks and resume work as in the full plan.
    """

    plan: EpochPlan
    rows: np.ndarray

    def __post_init__(self) -> None:
        if self.plan.n_rows != len(self.rows):
            raise ValueError(f"plan over {self.plan.n_rows} positions for {len(self.rows)} rows")

    @property
    def num_batches(self) -> int:
        return self.plan.num_batches

    @property
    def group_batches(self) -> int:
        return self.plan.group_batches

    def groups(self, worker: int = 0, num_workers: int = 1) -> Iterator[tuple[int, list[np.ndarray]]]:
        """As :meth:`EpochPlan.groups`, with positions mapped to the subset's rows."""
        for g, batches in self.plan.groups(worker, num_workers):
            yield g, [self.rows[b] for b in batches]
