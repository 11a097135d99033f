"""Epoch plans: disjoint, exactly-once coverage across ranks and workers, equal batch counts, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from cellssl.data.plan import EpochPlan


def rows_of(plan: EpochPlan, num_workers: int, group_batches: int = 3) -> list[np.ndarray]:
    batches = []
    for worker in range(num_workers):
        for _, group in plan.groups(group_batches, worker, num_workers):
            batches.extend(group)
    return batches


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [1, 2])
@pytest.mark.parametrize("n_rows", [1000, 1013])
def test_every_row_once_per_epoch_and_equal_batch_counts(world_size, num_workers, n_rows):
    seen, counts = [], []
    for rank in range(world_size):
        plan = EpochPlan(n_rows, batch_size=64, block_size=10, seed=7, epoch=2, rank=rank, world_size=world_size)
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
        plan = EpochPlan(n, 64, 10, seed=0, epoch=0, rank=rank, world_size=world, drop_last=True)
        batches = rows_of(plan, 1)
        assert all(len(b) == 64 for b in batches) and len(batches) == n // world // 64
        seen.append(np.concatenate(batches))
    everything = np.concatenate(seen)
    assert len(np.unique(everything)) == len(everything) == world * (n // world // 64) * 64


def test_same_seed_same_batches_new_epoch_new_order():
    def batches(epoch, seed=5):
        return rows_of(EpochPlan(500, 32, 8, seed=seed, epoch=epoch), 1)

    assert all(np.array_equal(a, b) for a, b in zip(batches(0), batches(0), strict=True))
    assert not np.array_equal(np.concatenate(batches(0)), np.concatenate(batches(1)))
    assert not np.array_equal(np.concatenate(batches(0)), np.concatenate(batches(0, seed=6)))


def test_batches_mix_blocks():
    """A batch draws rows from several blocks, not one contiguous run."""
    plan = EpochPlan(10_000, 256, 32, seed=0, epoch=0)
    first = rows_of(plan, 1, group_batches=8)[0]
    assert len(np.unique(first // 32)) >= 6


def test_unshuffled_plan_is_in_order():
    plan = EpochPlan(100, 30, 7, seed=0, epoch=3, shuffle=False)
    assert np.array_equal(np.concatenate(rows_of(plan, 1)), np.arange(100))


@pytest.mark.parametrize("mix_size", [1, 8, 32])
def test_groups_shuffle_runs_of_mix_size_rows(mix_size):
    """Rows move between a group's batches in aligned runs of ``mix_size``; coverage stays exactly once."""
    plan = EpochPlan(10_000, 256, 64, seed=3, epoch=1, mix_size=mix_size)
    batches = rows_of(plan, 1, group_batches=4)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(10_000))
    rows = np.concatenate(batches)
    runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)
    mean_run = np.mean([len(run) for run in runs])
    assert 0.6 * mix_size <= mean_run <= 1.5 * mix_size  # runs of about mix_size rows (batch edges cut some)
    assert len(np.unique(batches[0] // 64)) >= 3  # still several blocks per batch
