"""The data module on a small unlabelled store with the `data=zarr` defaults: the batch size adapts to the split
(with a warning that says how to keep it), steps per epoch are logged, and an epoch still sees every cell once."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hydra import compose
from hydra.utils import instantiate

from cellssl.data import CellDataModule
from cellssl.data.datamodule import MIN_BATCH, adapted_batch_size
from cellssl.store import write_store

N_CELLS, N_TRAIN, N_VAL = 2000, 1400, 300  # the default 70/15/15 split
LOGGER = "cellssl.data.datamodule"


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """2,000 unlabelled cells: one step per epoch at the zarr defaults (batch 8,192)."""
    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(0.5, (N_CELLS, 40)).astype(np.float32))
    adata = ad.AnnData(counts, var={"gene": [f"G{i}" for i in range(40)]})
    adata.var_names = adata.var["gene"].to_numpy()
    return write_store(adata, tmp_path_factory.mktemp("small") / "small.zarr")


def zarr_datamodule(store, *overrides: str) -> CellDataModule:
    """The data module of ``data=zarr`` (its shipped defaults) on ``store``."""
    cfg = compose("train", overrides=["data=zarr", f"data.store_path={store}", *overrides])
    return instantiate(cfg.data)


def train_ids(datamodule: CellDataModule) -> list[np.ndarray]:
    return [batch["cell_id"].numpy() for batch in datamodule.train_dataloader()]


def test_zarr_defaults_to_an_unlabelled_store(hydra_conf):
    cfg = compose("train", overrides=["data=zarr", "data.store_path=/x.zarr"])
    assert cfg.data.label_key is None and cfg.data.adapt_batch_size is True


def test_small_store_trains_with_a_smaller_batch_and_says_so(hydra_conf, small_store, caplog):
    datamodule = zarr_datamodule(small_store)
    assert datamodule.label_key is None and datamodule.batch_size == 8192
    with caplog.at_level(logging.INFO, logger=LOGGER):
        datamodule.setup()
    assert (datamodule.batch_size, datamodule.block_size) == (128, 128)  # 1,400 cells: 11 steps
    assert (datamodule.configured_batch_size, datamodule.configured_block_size) == (8192, 1024)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "data.batch_size=8192" in warning and "batch size 128" in warning and "(data.block_size=1024)" in warning
    assert "data.adapt_batch_size=false" in warning
    (info,) = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "steps per epoch" in r.message]
    assert f"train {N_TRAIN} cells, val {N_VAL} cells, batch size 128: 11 train and 3 val steps" in info
    batches = train_ids(datamodule)
    assert len(batches) == 11 and all(len(b) <= 128 for b in batches)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(N_TRAIN))  # each train cell once
    batch = next(iter(datamodule.train_dataloader()))
    assert "label" not in batch and batch["counts"].layout == torch.sparse_csr
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        datamodule.setup("fit")  # again (Lightning's call): nothing new to say
    assert not caplog.records


def test_adapt_batch_size_false_keeps_the_configured_sizes(hydra_conf, small_store, caplog):
    datamodule = zarr_datamodule(small_store, "data.adapt_batch_size=false")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        datamodule.setup()
    assert (datamodule.batch_size, datamodule.block_size) == (8192, 1024)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("batch size 8192: 1 train and 1 val steps" in r.getMessage() for r in caplog.records)
    (batch,) = train_ids(datamodule)
    assert np.array_equal(np.sort(batch), np.arange(N_TRAIN))


def test_every_ddp_rank_adapts_alike_and_the_ranks_share_the_epoch(hydra_conf, small_store):
    """Two ranks: each computes the same batch size (from the split size and the world size) and the same number
    of batches; together they see each train cell once."""
    ids, sizes = [], set()
    for rank in range(2):
        datamodule = zarr_datamodule(small_store)
        datamodule.trainer = SimpleNamespace(
            current_epoch=0,
            global_rank=rank,
            world_size=2,
            training=False,
            strategy=SimpleNamespace(root_device=torch.device("cpu")),
        )
        datamodule.setup("fit")
        sizes.add((datamodule.batch_size, datamodule.block_size))
        ids.append(train_ids(datamodule))
    assert sizes == {(64, 64)}  # 700 cells per rank: 11 steps
    assert len(ids[0]) == len(ids[1]) == 11
    assert np.array_equal(np.sort(np.concatenate(ids[0] + ids[1])), np.arange(N_TRAIN))


@pytest.mark.parametrize(
    ("n_cells", "configured", "world_size", "expected"),
    [
        (1400, 8192, 1, 128),  # a power of two, >= 8 steps
        (1400, 8192, 2, 64),  # per rank
        (490, 32, 1, 32),  # pbmc68k: 15 full batches, kept
        (4 * 8192, 8192, 1, 8192),  # 4 full batches: kept
        (4 * 8192 - 1, 8192, 1, 2048),
        (10, 8192, 1, MIN_BATCH),  # never below MIN_BATCH ...
        (10, 2, 1, 2),  # ... and never above the configured size
    ],
)
def test_adapted_batch_size(n_cells, configured, world_size, expected):
    assert adapted_batch_size(n_cells, configured, world_size) == expected
