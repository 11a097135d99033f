"""Epoch plans: disjoint, exactly-once coverage across ranks and workers, equal batch counts, determinism, and
epochs resumed on another number of ranks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cellssl.data.plan import EpochPlan, dealing, resume


def rows_of(plan: EpochPlan, num_workers: int = 1) -> list[np.ndarray]:
    """The plan's batches on this rank, in plan order (groups are dealt to workers round-robin)."""
    groups = sorted(g for worker in range(num_workers) for g in plan.groups(worker, num_workers))
    return [batch for _, group in groups for batch in group]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [1, 2])
@pytest.mark.parametrize("n_rows", [1000, 1013])
def test_every_row_once_per_epoch_and_equal_batch_counts(world_size, num_workers, n_rows):
    seen, counts = [], []
    for rank in range(world_size):
        plan = EpochPlan(n_rows, 64, 10, seed=7, epoch=2, rank=rank, world_size=world_size, group_batches=3)
        batches = rows_of(plan, num_workers)
        counts.append(len(batches))
        assert len(batches) == plan.num_batches
        assert max(len(b) for b in batches) <= 64
        seen.append(np.concatenate(batches))
    assert len(set(counts)) == 1
    everything = np.concatenate(seen)
    assert np.array_equal(np.sort(everything), np.arange(n_rows))


def test_drop_last_gives_full_batches_and_drops_only_the_remainder():
    n, world = 1013, 2
    seen = []
    for rank in range(world):
        plan = EpochPlan(n, 64, 10, seed=0, epoch=0, rank=rank, world_size=world, drop_last=True, group_batches=3)
        batches = rows_of(plan, 1)
        assert all(len(b) == 64 for b in batches) and len(batches) == n // world // 64
        seen.append(np.concatenate(batches))
    everything = np.concatenate(seen)
    assert len(np.unique(everything)) == len(everything) == world * (n // world // 64) * 64


def test_same_seed_same_batches_new_epoch_new_order():
    def batches(epoch, seed=5):
        return rows_of(EpochPlan(500, 32, 8, seed=seed, epoch=epoch, group_batches=3))

    assert all(np.array_equal(a, b) for a, b in zip(batches(0), batches(0), strict=True))
    assert not np.array_equal(np.concatenate(batches(0)), np.concatenate(batches(1)))
    assert not np.array_equal(np.concatenate(batches(0)), np.concatenate(batches(0, seed=6)))


def test_batches_mix_blocks():
    """A batch draws rows from several blocks, not one contiguous run."""
    plan = EpochPlan(10_000, 256, 32, seed=0, epoch=0, group_batches=8)
    first = rows_of(plan)[0]
    assert len(np.unique(first // 32)) >= 6


def test_unshuffled_plan_is_in_order():
    plan = EpochPlan(100, 30, 7, seed=0, epoch=3, shuffle=False, group_batches=3)
    assert np.array_equal(np.concatenate(rows_of(plan)), np.arange(100))


@pytest.mark.parametrize("mix_size", [1, 8, 32])
def test_groups_shuffle_runs_of_mix_size_rows(mix_size):
    """Rows move between a group's batches in aligned runs of ``mix_size``; coverage stays exactly once."""
    plan = EpochPlan(10_000, 256, 64, seed=3, epoch=1, mix_size=mix_size, group_batches=4)
    batches = rows_of(plan)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(10_000))
    rows = np.concatenate(batches)
    runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)
    mean_run = np.mean([len(run) for run in runs])
    assert 0.6 * mix_size <= mean_run <= 1.5 * mix_size  # runs of about mix_size rows (batch edges cut some)
    assert len(np.unique(batches[0] // 64)) >= 3  # still several blocks per batch


def epoch_rows(plan: EpochPlan) -> list[list[np.ndarray]]:
    """Every rank's batches of the plan, in plan order."""
    return [rows_of(replace(plan, rank=rank)) for rank in range(plan.world_size)]


def row_runs(rows: np.ndarray) -> int:
    """The contiguous runs a group's rows are read as."""
    return int(np.sum(np.diff(np.sort(rows)) != 1)) + 1


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2), (2, 3)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_an_epoch_resumed_on_another_number_of_ranks_sees_each_row_once(before, after, drop_last):
    """Every rank trained ``done`` batches on ``before`` ranks; the rest is re-dealt to ``after`` ranks: equal
    counts per rank, no row twice, none left out (``drop_last``: full batches, fewer than ``after`` batches'
    worth of rows dropped); a group holding none of the interrupted round's unread rows reads a contiguous range
    of positions, as a fresh plan's does: at most one run of rows per block it touches."""
    n, batch, block = 1013, 64, 16
    fresh = EpochPlan(n, batch, block, 7, 2, world_size=before, drop_last=drop_last, mix_size=8, group_batches=3)
    for done in (1, 3, fresh.num_batches - 1):  # inside a round, at a round's end, in the last round
        trained = [b for rank in epoch_rows(fresh) for b in rank[:done]]
        plan, skip = resume(replace(fresh, world_size=after), [{**dealing(fresh), "batches": done}])
        assert skip == 0 and plan.world_size == after
        rest = epoch_rows(plan)
        assert {len(r) for r in rest} == {plan.num_batches}
        rows = np.concatenate(trained + [b for r in rest for b in r])
        assert len(np.unique(rows)) == len(rows)
        if drop_last:
            assert all(len(b) == batch for r in rest for b in r) and n - len(rows) < after * batch
        else:
            assert np.array_equal(np.sort(rows), np.arange(n)) and all(len(b) <= batch for r in rest for b in r)
        cut = [np.concatenate(dict(replace(fresh, rank=r).groups()).get(done // 3, [[]])) for r in range(before)]
        unread = np.setdiff1d(np.concatenate(cut), np.concatenate(trained))  # of the round under way
        groups = [np.concatenate(g) for r in range(after) for _, g in replace(plan, rank=r).groups()]
        later = [g for g in groups if not np.isin(g, unread).any()]
        assert len(later) >= len(groups) - after - 1 and all(row_runs(g) <= len(g) // block + 2 for g in later)
        same = zip(rows_of(plan, num_workers=2), rows_of(plan), strict=True)
        assert all(np.array_equal(a, b) for a, b in same)  # the same batches on any number of workers


def test_an_epoch_resumed_twice_and_under_the_same_dealing():
    """2 ranks, then 1 (batch 48), then 3: each row once. A resume under the last dealing continues its plan: the
    batches an uninterrupted run would have trained, in its order."""
    fresh = EpochPlan(1013, 64, 16, 3, 0, world_size=2, mix_size=8, group_batches=3)
    one, three = replace(fresh, world_size=1, batch_size=48), replace(fresh, world_size=3)
    segments = [{**dealing(fresh), "batches": 2}, {**dealing(one), "batches": 5}]
    trained = [b for rank in epoch_rows(fresh) for b in rank[:2]]
    plan, skip = resume(one, segments[:1])
    trained += epoch_rows(plan)[0][:5]
    plan, skip = resume(three, segments)
    assert skip == 0 and plan.deal == 2
    rows = np.concatenate(trained + [b for rank in epoch_rows(plan) for b in rank])
    assert np.array_equal(np.sort(rows), np.arange(1013))
    continued, skip = resume(replace(fresh, rank=1), [{**dealing(fresh), "batches": 4}])
    assert skip == 4 and continued.deal == 0
    assert all(np.array_equal(a, b) for a, b in zip(rows_of(continued), epoch_rows(fresh)[1], strict=True))
