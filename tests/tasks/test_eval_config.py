"""The evaluation apps' configs compose with every option of their groups, and the fine-tune model builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose
from omegaconf import OmegaConf, open_dict

from cellssl.data import CellDataModule
from cellssl.data.context import data_context
from cellssl.methods import FineTuneClassifier, build_model
from cellssl.tasks import config_dir

CONF = Path(config_dir())
REQUIRED = {"embed": ["pretrained=/x.ckpt", "input=/x.h5ad"], "report": []}


def _resolved(name: str, overrides: list[str]) -> dict:
    cfg = compose(name, overrides=[*REQUIRED.get(name, []), *overrides])
    with open_dict(cfg):  # ${hydra:...} resolves only inside a running app
        cfg.paths.root_dir, cfg.paths.output_dir = "/tmp/cellssl-root", "/tmp/cellssl-out"
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


@pytest.mark.parametrize("name", ["finetune", "evaluate", "embed", "report"])
def test_primary_config_composes(hydra_conf, name):
    config = _resolved(name, [])
    assert config["task_name"] == name


@pytest.mark.parametrize("name", ["train", "finetune", "evaluate", "embed"])
def test_every_app_that_runs_a_model_takes_the_trainer_logger_and_data_groups(hydra_conf, name):
    overrides = ["trainer.enable_progress_bar=false", "trainer=gpu", "logger=csv", "data=zarr", "data.store_path=/s"]
    config = _resolved(name, [*overrides, "data.label_key=cell_type"])
    assert config["trainer"]["accelerator"] == "gpu" and config["trainer"]["enable_progress_bar"] is False
    assert "csv" in config["logger"] and config["data"]["store_path"] == "/s"


@pytest.mark.parametrize("ontology", sorted(p.stem for p in (CONF / "ontology").glob("*.yaml")))
def test_ontology_options(hydra_conf, ontology):
    config = _resolved("evaluate", [f"ontology={ontology}"])
    assert config["ontology"]["enabled"] == (ontology != "none")
    if ontology == "pbmc68k":
        assert config["ontology"]["label_map"]["CD19+ B"] == "CL:0000236"


@pytest.mark.parametrize("mode", sorted(p.stem for p in (CONF / "mode").glob("*.yaml")))
def test_every_mode_builds_a_classifier(hydra_conf, pbmc_store, mode):
    config = _resolved("finetune", [f"mode={mode}", "debug=laptop"])
    assert config["trainer"]["limit_train_batches"] == 4 and config["optimizer"]["lr"] == 9.0e-4
    datamodule = CellDataModule(str(pbmc_store), label_key="bulk_labels")
    datamodule.setup()
    model = build_model(
        {**config["model"], "encoder": config["encoder"]}, data_context(datamodule.store, datamodule.label_key)
    )
    assert isinstance(model, FineTuneClassifier) and model.finetune_mode.name == mode
    assert model.logits(torch.zeros(3, 765)).shape == (3, 10)
