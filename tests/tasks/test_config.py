"""Every config group option composes; models and data modules instantiate; bad overrides fail with Hydra's message."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from cellssl.tasks import config_dir

CONF = Path(config_dir())
GROUPS = ["data", "model", "trainer", "logger", "callbacks", "paths", "experiment"]
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


@pytest.fixture
def hydra_conf():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def _compose(overrides: list[str]):
    cfg = compose("train", overrides=overrides)
    # ${hydra:...} resolves only inside a running app; pin the paths that use it for these checks
    with open_dict(cfg):
        cfg.paths.root_dir = "/tmp/cellssl-root"
        cfg.paths.output_dir = "/tmp/cellssl-out"
    return cfg


def test_all_groups_have_options():
    assert {group for group, _ in OPTIONS} == set(GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_resolves(hydra_conf, group, option):
    overrides = [f"{group}={option}"]
    if option in ("zarr",) or (group == "experiment" and option.startswith("paper")):
        overrides += ["data.store_path=/tmp/store.zarr", "data.label_key=cell_type"]
    cfg = _compose(overrides)
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True, structured_config_mode=None)
    assert container["trainer"]["_target_"] == "lightning.pytorch.Trainer"
    if group == "model":
        model = instantiate(cfg.model, n_genes=50)
        assert model.encoder(__import__("torch").zeros(4, 50)).shape == (4, cfg.model.encoder.embedding_dim)
    if group == "trainer" and option != "gpu":
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
