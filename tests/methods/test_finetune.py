"""Fine-tuning modes in a real Lightning run on the pbmc68k store: what trains and what stays fixed."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cellssl.data import CellDataModule
from cellssl.data.context import data_context
from cellssl.methods import FineTuneClassifier, build_model
from cellssl.tasks import config_dir


def classifier(mode: str, datamodule: CellDataModule) -> FineTuneClassifier:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("finetune", overrides=[f"mode={mode}"])
    config = OmegaConf.to_container(cfg.model, resolve=True)
    config["encoder"] = OmegaConf.to_container(cfg.encoder, resolve=True)
    return build_model(config, data_context(datamodule.store, datamodule.label_key))


@pytest.mark.parametrize(("mode", "frozen", "linear_head"), [("full", False, True), ("frozen", True, False),
                                                             ("linear_probe", True, True)])  # fmt: skip
def test_frozen_modes_keep_every_encoder_tensor_and_full_trains_it(pbmc_store, mode, frozen, linear_head):
    torch.manual_seed(0)
    datamodule = CellDataModule(str(pbmc_store), label_key="bulk_labels", batch_size=64, block_size=16)
    datamodule.setup()
    model = classifier(mode, datamodule)
    encoder, head = copy.deepcopy(model.encoder.state_dict()), copy.deepcopy(model.head.state_dict())
    assert isinstance(model.head, torch.nn.Linear) == linear_head
    trainer = L.Trainer(
        max_steps=6, val_check_interval=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    after = model.encoder.state_dict()
    unchanged = [torch.equal(encoder[k], after[k]) for k in encoder]  # weights and batch-norm statistics
    assert all(unchanged) if frozen else not any(unchanged[:2])
    assert not torch.equal(head["weight" if linear_head else "0.weight"], model.head.state_dict()[
        "weight" if linear_head else "0.weight"])  # fmt: skip
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == ({"head"} if frozen else {"encoder", "head"})
