"""Fixtures of the method tests: the real pbmc68k store and an in-process run of the train task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from cellssl.tasks import config_dir
from cellssl.tasks.train import train


@pytest.fixture
def train_in_process(pbmc_store: Path, tmp_path: Path):
    """Compose ``conf/train.yaml`` with overrides and run the train task in this process, on the pbmc68k store.

    In-process runs skip the interpreter start-up of the console script; the end-to-end app is tested in
    tests/tasks.
    """

    def run(*overrides: str) -> dict[str, Any]:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=["logger=csv", "trainer.enable_progress_bar=false", *overrides])
        GlobalHydra.instance().clear()
        with open_dict(cfg):
            cfg.paths.root_dir = str(tmp_path)
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.data.store_path = str(pbmc_store)
            cfg.data.prepare = None
        return train(cfg)

    return run
