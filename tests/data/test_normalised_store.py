"""A store of normalised values (``cellssl-prepare normalised=true``) is trained on as it is: the model step does not
log-normalise it again (the store's ``normalised`` flag reaches the model through ``data_context``)."""

from __future__ import annotations

import anndata as ad
import lightning as L
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hydra import compose
from omegaconf import OmegaConf

from cellssl.data import CellDataModule
from cellssl.data.context import data_context
from cellssl.methods import build_model
from cellssl.store import CellStore, write_store


@pytest.fixture(scope="module")
def normalised_store(tmp_path_factory):
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.0, (256, 30)).astype(np.float32)
    counts[:, 0] += 1
    values = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(values))
    adata.var_names = [f"G{i}" for i in range(30)]
    return write_store(adata, tmp_path_factory.mktemp("norm") / "norm.zarr", normalised=True)


def test_the_flag_reaches_the_data_context(normalised_store, pbmc_store):
    assert data_context(CellStore(normalised_store), None)["normalised"] is True
    assert data_context(CellStore(pbmc_store), None)["normalised"] is False


@pytest.mark.parametrize("model_name", ["mae", "simclr"])
def test_training_on_a_normalised_store_uses_the_stored_values(hydra_conf, normalised_store, model_name):
    """A few training steps: what ``normalized`` hands the encoder (before masking or augmenting) is exactly the
    stored rows of the batch, not ``log1p`` of them again."""
    cfg = compose("train", overrides=[f"model={model_name}"])
    datamodule = CellDataModule(str(normalised_store), batch_size=32, adapt_batch_size=False, block_size=32)
    datamodule.setup()
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), data_context(datamodule.store, None))
    seen: list[tuple[np.ndarray, torch.Tensor]] = []
    normalized = model.normalized

    def recording(batch):
        x = normalized(batch)
        seen.append((batch["cell_id"].numpy().copy(), x.detach().clone()))
        return x

    model.normalized = recording
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=datamodule)
    stored = CellStore(normalised_store).read_rows(0, 256).toarray()
    assert len(seen) >= 3
    for ids, x in seen:
        np.testing.assert_array_equal(x.numpy(), stored[ids])
