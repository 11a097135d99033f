"""The dataset and DataModule on a real store: batches hold the stored counts, every cell once per epoch."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader

from cellssl.data import CellDataModule, densify, log_normalize
from cellssl.data.dataset import CellBatchDataset


@pytest.mark.parametrize("num_workers", [0, 2])
def test_each_train_cell_once_with_its_stored_counts(pbmc_store, num_workers):
    stored = ad.io.read_zarr(pbmc_store)
    dataset = CellBatchDataset(
        pbmc_store, "train", batch_size=64, block_size=16, shuffle_batches=3, label_key="bulk_labels"
    )
    batches = list(DataLoader(dataset, batch_size=None, num_workers=num_workers))
    assert len(batches) == len(dataset) == 8
    ids = torch.cat([b["cell_id"] for b in batches]).numpy()
    assert np.array_equal(np.sort(ids), np.arange(490))
    codes = stored.obs["bulk_labels"].cat.codes.to_numpy()
    for batch in batches[:3]:
        dense = densify(batch, stored.n_vars).numpy()
        expected = stored.X[batch["cell_id"].numpy()].toarray()
        assert np.array_equal(dense, expected)
        assert np.array_equal(batch["label"].numpy(), codes[batch["cell_id"].numpy()])


def test_datamodule_builds_missing_store_and_serves_splits(tmp_path):
    store_path = tmp_path / "built.zarr"
    dm = CellDataModule(
        str(store_path),
        label_key="bulk_labels",
        batch_size=50,
        prepare={"source": "pbmc68k", "label_columns": ["bulk_labels"]},
    )
    dm.prepare_data()
    assert store_path.is_dir() and dm.n_genes == 765
    val_ids = torch.cat([b["cell_id"] for b in dm.val_dataloader()]).numpy()
    assert np.array_equal(val_ids, np.arange(490, 595))  # unshuffled, in store order


def test_log_normalize_matches_scanpy():
    import scanpy as sc

    rng = np.random.default_rng(0)
    counts = rng.poisson(0.5, size=(20, 30)).astype(np.float32)
    counts[3] = 0  # an empty cell stays zero
    adata = ad.AnnData(sp.csr_matrix(counts))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    ours = log_normalize(torch.from_numpy(counts)).numpy()
    np.testing.assert_allclose(ours, adata.X.toarray(), rtol=1e-5, atol=1e-5)
