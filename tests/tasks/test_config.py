"""Every config group option composes; models and data modules instantiate; bad overrides fail with Hydra's message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from cellssl.data import CellDataModule
from cellssl.data.context import data_context
from cellssl.data.dataset import batch_from_csr
from cellssl.methods import build_model
from cellssl.store import CellStore
from cellssl.tasks import config_dir
from helpers import recipe_app

CONF = Path(config_dir())


def default_groups(config: Path) -> list[str]:
    """The config groups a defaults list names (``_self_``, optional entries and Hydra's own group left out)."""
    entries = [entry for entry in OmegaConf.load(config).defaults if isinstance(entry, DictConfig)]
    names = [str(key).removeprefix("override ") for entry in entries for key in entry]
    return [name.split("@")[0] for name in names if not name.startswith(("optional ", "hydra"))]


# the groups of conf/train.yaml, and the groups of the default model (model/masking, ...)
GROUPS = default_groups(CONF / "train.yaml")
MODEL_GROUPS = [f"model/{group}" for group in default_groups(CONF / "model" / "mae.yaml")]
OPTIONS = [(group, path.stem) for group in GROUPS + MODEL_GROUPS for path in sorted((CONF / group).glob("*.yaml"))]
STORE = ["data.store_path=/tmp/store.zarr", "data.label_key=cell_type"]  # for options that need a store


@pytest.fixture(scope="module")
def pbmc_context(pbmc_store) -> dict:
    """The data context the train task gives models, from the real pbmc68k store."""
    datamodule = CellDataModule(str(pbmc_store), label_key="bulk_labels")
    datamodule.setup()
    return data_context(datamodule.store, datamodule.label_key)


def _compose(overrides: list[str]):
    recipe = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), None)
    cfg = compose(recipe_app(recipe) if recipe else "train", overrides=overrides)
    # ${hydra:...} resolves only inside a running app; pin the paths that use it for these checks
    with open_dict(cfg):
        cfg.paths.root_dir = "/tmp/cellssl-root"
        cfg.paths.output_dir = "/tmp/cellssl-out"
    return cfg


def test_all_groups_have_options():
    assert {"data", "model", "trainer", "experiment", "model/masking"} <= set(GROUPS + MODEL_GROUPS)
    assert {group for group, _ in OPTIONS} == set(GROUPS + MODEL_GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_resolves(hydra_conf, pbmc_context, group, option):
    overrides = [f"{group}={option}"]
    if OmegaConf.is_missing(_compose(overrides).data, "store_path"):  # a store of one's own (data=zarr, paper_*)
        overrides += STORE
    cfg = _compose(overrides)
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True, structured_config_mode=None)
    assert container["trainer"]["_target_"] == "lightning.pytorch.Trainer"
    if group.startswith("model"):
        model = build_model(OmegaConf.to_container(cfg.model, resolve=True), pbmc_context)
        assert model.encoder(torch.zeros(4, 765)).shape == (4, cfg.model.encoder.embedding_dim)
    if group == "trainer" and cfg.trainer.accelerator != "gpu":  # GPU configs are instantiated on GPUs only
        trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
        assert trainer.max_epochs == cfg.trainer.max_epochs


def test_any_key_overrides(hydra_conf):
    cfg = _compose(["model.masking.rate=0.25", "model.encoder.hidden_dims=[64,32]", "trainer.max_epochs=3"])
    assert cfg.model.masking.rate == 0.25 and list(cfg.model.encoder.hidden_dims) == [64, 32]
    assert cfg.trainer.max_epochs == 3


def test_default_runs_on_cpu(hydra_conf):
    cfg = _compose([])
    assert cfg.trainer.accelerator == "cpu" and cfg.logger.wandb.offline is True


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=nonexistent", "Could not find 'model/nonexistent'"),
        ("trainer.no_such_key=1", "Could not override"),
    ],
)
def test_bad_override_fails_with_hydras_message(hydra_conf, override, message):
    with pytest.raises(ConfigCompositionException, match=message):
        compose("train", overrides=[override])


def test_bad_override_on_the_command_line(run_app):
    result = run_app("cellssl-train", "model=nonexistent", check=False)
    assert result.returncode != 0
    assert "Could not find 'model/nonexistent'" in result.stderr


RECIPES = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if p.stem.startswith(("paper", "ssl")))


@pytest.mark.parametrize("recipe", RECIPES)
def test_paper_recipe_with_debug_override_runs_on_a_laptop(hydra_conf, pbmc_store, pbmc_context, recipe):
    """Each recipe keeps its model under debug=laptop, which swaps in pbmc68k, a CPU and two short epochs."""
    recipe_cfg = _compose([f"experiment={recipe}", "data.store_path=/x.zarr", "data.label_key=cell_type"])
    cfg = _compose([f"experiment={recipe}", "debug=laptop"])
    assert cfg.model == recipe_cfg.model  # the recipe's model, unchanged
    assert recipe_cfg.trainer.accelerator == "gpu" and recipe_cfg.data.batch_size >= 8192
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.precision == "32-true" and cfg.data.batch_size == 64
    assert cfg.data.store_path.endswith("pbmc68k.zarr") and cfg.data.label_key == "bulk_labels"
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), pbmc_context)
    counts, ids = CellStore(pbmc_store).read_split("train", 64)
    loss = model.loss(batch_from_csr(counts, ids, CellStore(pbmc_store).labels("bulk_labels")[0][ids]), "train")
    assert torch.isfinite(loss)


MAE_VARIANTS = sorted(p.stem for p in (CONF / "model").glob("mae_*.yaml"))


@pytest.mark.parametrize("variant", MAE_VARIANTS)
def test_mae_variants_are_mae_yaml_with_another_masking(hydra_conf, variant):
    """``model=mae_<x>`` composes from mae.yaml through its defaults list (no copy to drift): the same model as
    ``model=mae`` with the variant's masking option."""
    spec = OmegaConf.load(CONF / "model" / f"{variant}.yaml")
    assert set(spec) == {"defaults"} and spec.defaults[0] == "mae"
    (masking,) = [entry["override masking"] for entry in spec.defaults[1:] if "override masking" in entry]
    assert _compose([f"model={variant}"]).model == _compose(["model=mae", f"model/masking={masking}"]).model
