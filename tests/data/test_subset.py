"""Donor subsets for data scaling: the right donors, nested fractions, and a loader epoch over exactly them."""

from __future__ import annotations

import numpy as np
import pytest

from cellssl.data import CellDataModule
from cellssl.data.subset import donor_subset_rows
from cellssl.store import CellStore, InputError
from cellssl.store.synthetic import synthetic_to_store


@pytest.fixture(scope="module")
def donor_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("stores") / "synthetic.zarr"
    return synthetic_to_store(path, 3000, n_genes=50, n_cell_types=4, n_donors=40, progress=False)


def _train_donors(store: CellStore, rows: np.ndarray) -> set[int]:
    start, _ = store.split_range("train")
    return set(store.labels("donor_id")[0][start + rows].tolist())


def test_fractions_of_donors_are_seeded_and_nested(donor_store):
    store = CellStore(donor_store)
    start, stop = store.split_range("train")
    n_donors = len(np.unique(store.labels("donor_id")[0][start:stop]))
    subsets = {f: donor_subset_rows(store, "train", "donor_id", f, seed=0) for f in (0.01, 0.1, 0.316, 1.0)}
    assert len(_train_donors(store, subsets[0.01])) == 1  # at least one donor
    assert len(_train_donors(store, subsets[0.1])) == round(0.1 * n_donors)
    assert len(_train_donors(store, subsets[0.316])) == round(0.316 * n_donors)
    assert np.array_equal(subsets[1.0], np.arange(stop - start))
    assert set(subsets[0.1]) <= set(subsets[0.316])  # nested for one seed
    codes = store.labels("donor_id")[0][start:stop]
    kept = _train_donors(store, subsets[0.316])
    assert np.array_equal(subsets[0.316], np.flatnonzero(np.isin(codes, list(kept))))  # every cell of those donors
    other = donor_subset_rows(store, "train", "donor_id", 0.316, seed=1)
    assert _train_donors(store, other) != kept
    with pytest.raises(InputError, match="donor_fraction"):
        donor_subset_rows(store, "train", "donor_id", 0.0, seed=0)


def test_a_subset_epoch_yields_each_subset_cell_once(donor_store):
    datamodule = CellDataModule(
        str(donor_store), batch_size=64, block_size=32, donor_key="donor_id", donor_fraction=0.25, seed=3
    )
    datamodule.setup()
    store = datamodule.store
    start, _ = store.split_range("train")
    expected = start + donor_subset_rows(store, "train", "donor_id", 0.25, seed=3)
    loader = datamodule.train_dataloader()
    ids = np.concatenate([batch["cell_id"].numpy() for batch in loader])
    assert len(loader.dataset) == -(-len(expected) // 64)
    assert np.array_equal(np.sort(ids), expected)
    assert not np.array_equal(ids, expected)  # shuffled


def test_donor_fraction_without_donor_key_is_an_input_error(donor_store):
    with pytest.raises(InputError, match="donor_key"):
        CellDataModule(str(donor_store), donor_fraction=0.5).setup()
