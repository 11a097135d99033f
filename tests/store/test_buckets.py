"""The external shuffle (rows in storage order → final order) and the writer's shard-aligned appends."""

from __future__ import annotations

import itertools

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellssl.store.buckets import RowBuckets
from cellssl.store.writer import StoreWriter


def random_rows(n_rows: int, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    matrix = sp.random(n_rows, 50, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    matrix.data = np.ceil(matrix.data * 300)  # counts up to 300: they need uint16
    keep = np.ones(n_rows)
    keep[rng.choice(n_rows, 5, replace=False)] = 0  # some rows without entries
    matrix = sp.csr_matrix(sp.diags(keep) @ matrix)
    matrix.eliminate_zeros()
    return matrix


@pytest.mark.parametrize(
    ("n_buckets", "lengths_known"),
    [(1, True), (1, False), (4, False)],
    ids=["placed-in-memory", "pieces-in-memory", "disk"],
)
def test_rows_come_back_in_final_order_whatever_the_order_they_were_put(tmp_path, n_buckets, lengths_known):
    final = random_rows(300, seed=0)  # the rows as they must come out
    rng = np.random.default_rng(1)
    storage_order = rng.permutation(300)  # the order in which a reader meets them
    stored = final[storage_order]
    edges = np.linspace(0, 300, n_buckets + 1).astype(np.int64)
    lengths = np.diff(final.indptr) if lengths_known else None
    buckets = RowBuckets(edges, np.uint16, np.int16, spill_next_to=tmp_path / "out.zarr", row_lengths=lengths)
    with buckets:
        for chunk in np.array_split(np.arange(300), 7):  # chunks of storage rows, rows in any bucket
            part = stored[chunk]
            buckets.put(part.data, part.indices, part.indptr[:-1], part.indptr[1:], storage_order[chunk])
        assert (buckets.workdir is not None) == (n_buckets > 1)
        assert buckets.reuses_arrays == (not lengths_known)
        # each take is consumed before the next: spilled buckets are placed into the same arrays
        taken = [tuple(np.array(a) for a in buckets.take(b)) for b in range(n_buckets)]
        assert list(tmp_path.iterdir()) == ([buckets.workdir] if n_buckets > 1 else [])
    assert list(tmp_path.iterdir()) == []  # the spill folder is gone
    data, indices = np.concatenate([t[0] for t in taken]), np.concatenate([t[1] for t in taken])
    assert data.dtype == np.uint16 and indices.dtype == np.int16
    assert np.array_equal(np.concatenate([t[3] for t in taken]), np.arange(300))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate([np.diff(t[2]) for t in taken]))])
    assert np.array_equal(sp.csr_matrix((data, indices, indptr), shape=final.shape).toarray(), final.toarray())


def test_placed_rows_refuse_lengths_that_differ_from_the_plan(tmp_path):
    final = random_rows(20, seed=2)
    buckets = RowBuckets([0, 20], np.uint16, np.int16, tmp_path / "x", row_lengths=np.diff(final.indptr) + 1)
    with pytest.raises(ValueError, match="row lengths differ"):
        buckets.put(final.data, final.indices, final.indptr[:-1], final.indptr[1:], np.arange(20))


def test_a_bucket_with_rows_missing_is_refused(tmp_path):
    final = random_rows(20, seed=3)
    buckets = RowBuckets([0, 20], np.uint16, np.int16, tmp_path / "x", row_lengths=np.diff(final.indptr))
    buckets.put(final.data, final.indices, final.indptr[:10], final.indptr[1:11], np.arange(10))
    with pytest.raises(RuntimeError, match="10 rows placed of 20"):
        buckets.take(0)


@pytest.mark.parametrize("copy", [True, False])
def test_appends_of_any_size_across_shard_boundaries_read_back_exactly(tmp_path, copy):
    """Shards hold 8 entries: appends smaller than a shard, ending mid-shard and spanning many shards."""
    matrix = random_rows(120, seed=4)
    obs = pd.DataFrame({"split": "train"}, index=[f"c{i}" for i in range(120)])
    bounds = [0, 1, 2, 7, 30, 31, 90, 120]
    with StoreWriter(
        tmp_path / "s.zarr", [f"G{i}" for i in range(50)], count_dtype=np.uint16, chunk_size=4, shard_size=8
    ) as w:
        for lo, hi in itertools.pairwise(bounds):
            part = matrix[lo:hi]
            data, indices = part.data.copy(), part.indices.astype(np.int16)
            w.append_arrays(data, indices, part.indptr, obs.iloc[lo:hi], copy=copy)
            if copy:  # the writer copied what it needs: the caller may reuse its arrays at once
                data[:] = 0
    stored = ad.io.read_zarr(tmp_path / "s.zarr")
    assert stored.X.dtype == np.uint16
    assert np.array_equal(stored.X.toarray(), matrix.toarray())
    assert list(stored.obs_names) == list(obs.index)
