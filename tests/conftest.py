"""Shared fixtures: a real pbmc68k store on disk, a runner for the command-line apps, and Hydra's compose API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from cellssl.store import prepare_store
from cellssl.tasks import config_dir
from helpers import with_tests_on_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pbmc_store(tmp_path_factory) -> Path:
    """scanpy's pbmc68k_reduced written as a cell store (700 cells, random 70/15/15 split)."""
    path = tmp_path_factory.mktemp("stores") / "pbmc68k.zarr"
    return prepare_store("pbmc68k", path, label_columns=["bulk_labels"], seed=0)


@pytest.fixture
def run_app(tmp_path):
    """Run a console entry point (``cellssl-train``, ``cellssl-prepare``) in a subprocess, offline, with ``tests/`` on
    its ``PYTHONPATH`` (configs may name test helpers: ``helpers.callbacks.CrashAfterSteps``)."""

    def run(app: str, *overrides: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
        env = with_tests_on_path(
            {
                **os.environ,
                "CELLSSL_DATA_DIR": str(tmp_path / "data"),
                "CELLSSL_LOG_DIR": str(tmp_path / "logs"),
                "WANDB_MODE": "offline",
                "WANDB_SILENT": "true",
            }
        )
        script = Path(sys.executable).parent / app
        result = subprocess.run(
            [str(script), *overrides], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{app} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
            )
        return result

    return run


@pytest.fixture
def hydra_conf():
    """Hydra's compose API on the project's configs (``compose("train", overrides=[...])``)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def _run_task(task, name: str, tmp: Path, store: Path, *overrides: str) -> Path:
    """Run a task in process with the debug trainer and no logger; its run directory's ``last.ckpt``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(name, overrides=["~logger", "trainer=debug", "trainer.enable_progress_bar=false", *overrides])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.root_dir, cfg.paths.output_dir = str(tmp), str(tmp / name)
        cfg.data.store_path, cfg.data.prepare = str(store), None
    task(cfg)
    return tmp / name / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def checkpoints(pbmc_store, tmp_path_factory) -> dict[str, Path]:
    """A masked-autoencoder checkpoint and a classifier fine-tuned from it (a few steps each, in process)."""
    from cellssl.tasks.finetune import finetune
    from cellssl.tasks.train import train

    tmp = tmp_path_factory.mktemp("checkpoints")
    mae = _run_task(train, "train", tmp, pbmc_store, "evaluation.enabled=false")
    classifier = _run_task(finetune, "finetune", tmp, pbmc_store, f"pretrained={mae}", "data.label_key=bulk_labels")
    return {"mae": mae, "classifier": classifier}
