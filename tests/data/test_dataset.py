"""The dataset and loader on real stores: stored counts, exactly-once epochs, order, resume, damaged chunks."""

from __future__ import annotations

import shutil

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
import zarr

from cellssl.data import CellDataModule, densify, log_normalize
from cellssl.data.datamodule import CellDataLoader
from cellssl.data.dataset import CellBatchDataset
from cellssl.data.plan import dealing
from cellssl.store import CellStore, InputError
from cellssl.store.synthetic import synthetic_to_store


def loader(store, num_workers=0, epoch=0, rank=0, world_size=1, skip=0, **options):
    """A train loader; ``skip``: resumed after that many batches under the same dealing."""
    options = {"batch_size": 64, "block_size": 16, "shuffle_batches": 3, "label_key": "bulk_labels", **options}
    dataset = CellBatchDataset(store, "train", **options)
    dataset.world_size = world_size
    segments = [{**dealing(dataset.plan()[0]), "batches": skip}] if skip else []
    return CellDataLoader(dataset, lambda peek=False: (epoch, rank, world_size, segments), num_workers=num_workers)


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("syn") / "syn.zarr"
    return synthetic_to_store(path, 3000, n_genes=500, n_donors=12, progress=False, chunk_size=4096, shard_size=16384)


@pytest.mark.parametrize(("num_workers", "mix_size"), [(0, 1), (0, 32), (2, 4)])
def test_each_train_cell_once_with_its_stored_counts(pbmc_store, num_workers, mix_size):
    """Row-wise gathers (mix 1) and run-wise slice copies (mix 4, 32) both give the stored counts."""
    stored = ad.io.read_zarr(pbmc_store)
    batches = list(loader(pbmc_store, num_workers, mix_size=mix_size))
    assert len(batches) == 8
    ids = torch.cat([b["cell_id"] for b in batches]).numpy()
    assert np.array_equal(np.sort(ids), np.arange(490))
    codes = stored.obs["bulk_labels"].cat.codes.to_numpy()
    for batch in batches:
        assert batch["counts"].layout == torch.sparse_csr
        assert batch["counts"].col_indices().dtype == torch.int32
        expected = sp.csr_matrix(stored.X, dtype=np.float32)[batch["cell_id"].numpy()].toarray()
        assert np.array_equal(densify(batch).numpy(), expected)
        assert np.array_equal(batch["label"].numpy(), codes[batch["cell_id"].numpy()])
        assert batch["label"].dtype == torch.int64  # as cross-entropy takes them, held narrower


def test_same_batches_in_same_order_on_any_number_of_workers(pbmc_store):
    runs = [[b["cell_id"].tolist() for b in loader(pbmc_store, w, epoch=3)] for w in (0, 2)]
    assert runs[0] == runs[1]
    other_epoch = [b["cell_id"].tolist() for b in loader(pbmc_store, 0, epoch=4)]
    assert other_epoch != runs[0]


def test_groups_read_ahead_concurrently_keep_the_batches_and_their_order(pbmc_store):
    """prefetch_groups readers run at once (for cold disks); batches still come in plan order, with their counts."""
    one, three = (list(loader(pbmc_store, 0, epoch=2, prefetch_groups=n)) for n in (1, 3))
    assert [b["cell_id"].tolist() for b in three] == [b["cell_id"].tolist() for b in one]
    dense = [[b["counts"].to(torch.float32).to_dense() for b in run] for run in (one, three)]
    assert all(torch.equal(a, b) for a, b in zip(*dense, strict=True))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_sees_exactly_the_remaining_cells(pbmc_store, num_workers):
    # the full epoch read in process: the order is the same for any number of workers (tested above), and each
    # pass with workers spawns them anew (seconds each)
    full = [b["cell_id"].tolist() for b in loader(pbmc_store, 0, epoch=1)]
    resumed = [b["cell_id"].tolist() for b in loader(pbmc_store, num_workers, epoch=1, skip=5)]
    assert resumed == full[5:]
    seen = np.concatenate([np.concatenate(full[:5]), np.concatenate(resumed)])
    assert np.array_equal(np.sort(seen), np.arange(490))


def test_datamodule_state_resumes_the_exact_remaining_order(pbmc_store):
    """The state Lightning checkpoints (DataModule.state_dict) makes the next pass skip exactly what was trained."""
    options = {"label_key": "bulk_labels", "batch_size": 64, "block_size": 16, "shuffle_batches": 3, "seed": 4}
    full = [b["cell_id"].tolist() for b in CellDataModule(str(pbmc_store), **options).train_dataloader()]
    resumed_dm = CellDataModule(str(pbmc_store), **options)
    resumed_dm.load_state_dict({"train": {"epoch": 0, "batches_done": 3, "seed": 4, "world_size": 1}})
    assert resumed_dm.state_dict()["train"]["batches_done"] == 3
    assert [b["cell_id"].tolist() for b in resumed_dm.train_dataloader()] == full[3:]
    assert [b["cell_id"].tolist() for b in resumed_dm.train_dataloader()] == full  # only the first pass resumes
    other_seed = CellDataModule(str(pbmc_store), **{**options, "seed": 5})
    other_seed.load_state_dict({"train": {"epoch": 0, "batches_done": 3, "seed": 4, "world_size": 1}})
    with pytest.raises(ValueError, match="cannot resume mid-epoch"):
        list(other_seed.train_dataloader())
    # a checkpoint of an earlier cellssl (no segments) on 2 ranks: their shares were cut otherwise
    earlier = CellDataModule(str(pbmc_store), **options)
    earlier.load_state_dict({"train": {"epoch": 0, "batches_done": 3, "seed": 4, "world_size": 2}})
    with pytest.raises(ValueError, match="earlier cellssl"):
        list(earlier.train_dataloader())


def test_dense_on_request(pbmc_store):
    batch = next(iter(loader(pbmc_store, dense=True)))
    assert batch["counts"].layout == torch.strided and batch["counts"].shape == (len(batch["cell_id"]), 765)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_damaged_chunk_names_the_array_and_chunk(synthetic_store, tmp_path, damage):
    store = tmp_path / "damaged.zarr"
    shutil.copytree(synthetic_store, store)
    shard = sorted((store / "X" / "data" / "c").iterdir())[1]
    if damage == "missing":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(InputError, match=r"X/data: missing or truncated chunk: .*c/1"):
        CellStore(store).read_rows(0, 3000)


@pytest.mark.parametrize("bad_index", [-1, 500])
def test_column_index_outside_the_genes_names_the_array(synthetic_store, tmp_path, bad_index):
    """A negative index and one past the last gene are both refused (scipy would write out of bounds)."""
    store = tmp_path / "damaged.zarr"
    shutil.copytree(synthetic_store, store)
    indices = zarr.open_array(store / "X" / "indices", mode="r+")
    indices[7] = bad_index
    with pytest.raises(InputError, match=r"X/indices: chunk 0: column indices outside 0\.\.499"):
        CellStore(store).read_rows(0, 3000)


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
