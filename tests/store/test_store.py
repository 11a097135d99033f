"""The cell store: round trip through anndata, split layout, metadata, dtypes, the pbmc68k counts."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellssl.store import CellStore, InputError, write_store
from cellssl.store.sources import load_pbmc68k
from cellssl.store.splits import assign_splits


def test_pbmc68k_counts_are_recovered_as_integers():
    adata = load_pbmc68k()
    assert adata.shape == (700, 765)
    assert adata.uns["count_recovery_max_error"] < 0.25  # float32 rounding only
    assert np.array_equal(adata.X.data, np.round(adata.X.data))
    assert adata.X.data.min() >= 1
    assert adata.obs["bulk_labels"].nunique() == 10


def test_store_reads_back_with_anndata_equal_to_source(pbmc_store):
    stored = ad.io.read_zarr(pbmc_store)
    source = load_pbmc68k()
    assert sorted(stored.obs_names) == sorted(source.obs_names)
    source = source[stored.obs_names]  # rows are regrouped by split and shuffled
    assert stored.X.dtype == np.uint16  # narrowest dtype holding the counts
    assert list(stored.var_names) == list(source.var_names)
    assert (sp.csr_matrix(stored.X, dtype=np.float64) != source.X).nnz == 0
    assert list(stored.obs["bulk_labels"].astype(str)) == list(source.obs["bulk_labels"].astype(str))


def test_splits_are_contiguous_and_rows_read_match_anndata(pbmc_store):
    store = CellStore(pbmc_store)
    stored = ad.io.read_zarr(pbmc_store)
    assert store.metadata["split_counts"] == {"train": 490, "val": 105, "test": 105}
    for split in ("train", "val", "test"):
        start, stop = store.split_range(split)
        assert (stored.obs["split"].iloc[start:stop] == split).all()
    block = store.read_rows(123, 321)
    assert (block != stored.X[123:321]).nnz == 0
    codes, names = store.labels("bulk_labels")
    assert [names[c] for c in codes[:20]] == list(stored.obs["bulk_labels"].astype(str)[:20])
    assert len(store.metadata["vocabulary_hash"]) == 16


def test_rows_are_shuffled_within_splits(pbmc_store):
    """Pre-shuffled rows: the labels of the first train rows are not sorted or grouped."""
    store = CellStore(pbmc_store)
    codes, _ = store.labels("bulk_labels")
    start, _ = store.split_range("train")
    first = codes[start : start + 100]
    assert len(np.unique(first)) >= 6


def test_donor_wise_split_keeps_each_donor_in_one_split():
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"donor": rng.choice([f"d{i}" for i in range(40)], size=5000)})
    split = assign_splits(obs, (0.7, 0.15, 0.15), seed=3, donor_column="donor")
    per_donor = pd.Series(split).groupby(obs["donor"].to_numpy()).nunique()
    assert (per_donor == 1).all()
    fractions = pd.Series(split).value_counts(normalize=True)
    assert abs(fractions["train"] - 0.7) < 0.1 and set(fractions.index) == {"train", "val", "test"}


def test_random_split_is_seeded():
    obs = pd.DataFrame(index=range(1000))
    a, b = assign_splits(obs, (0.7, 0.15, 0.15), 1), assign_splits(obs, (0.7, 0.15, 0.15), 1)
    assert (a == b).all() and (a != assign_splits(obs, (0.7, 0.15, 0.15), 2)).any()


def test_empty_cells_are_dropped_and_counted(tmp_path):
    x = sp.csr_matrix(np.array([[1, 0, 2], [0, 0, 0], [3, 1, 0], [0, 4, 0]], dtype=np.float32))
    adata = ad.AnnData(x, obs=pd.DataFrame({"t": list("abab")}, index=[f"c{i}" for i in range(4)]))
    adata.var_names = ["g1", "g2", "g3"]
    store = CellStore(write_store(adata, tmp_path / "s.zarr", label_columns=["t"], split_fractions=(1, 0, 0)))
    assert store.n_cells == 3 and store.metadata["dropped_empty_cells"] == 1
    assert store.read_rows(0, 3).sum() == x.sum()


def test_existing_store_is_not_overwritten_by_default(pbmc_store):
    with pytest.raises(InputError, match="already exists"):
        write_store(load_pbmc68k(), pbmc_store)
