"""Shared fixtures: a real pbmc68k store on disk, a runner for the command-line apps, and Hydra's compose API."""

from __future__ import annotations

import os

# One compute thread per process, before numpy or torch start their pools; inherited by the apps the tests start.
# The suite's data are tiny (700 cells, batches of 32): a second thread gains nothing on an idle machine, while
# two threads per process oversubscribe the cores as soon as two run at once (pytest -n <cores>, an app's
# subprocess, DDP ranks), and then OpenMP's spinning threads make each step up to ~10x slower (BYOL's learning
# test: 17 s with one thread, 93-122 s with two beside one other busy process). A value already set is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# isort: off
# before torch, lightning and scanpy, as the apps do (src/cellssl/tasks/train.py): ~1 s instead of ~5-10 s
import wandb  # noqa: F401

# isort: on
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict
from threadpoolctl import threadpool_limits

from cellssl.store import prepare_store
from cellssl.tasks import config_dir
from helpers import with_tests_on_path

ROOT = Path(__file__).resolve().parents[1]
# numpy's BLAS may have started its threads before this file was read (a pytest plugin imports numpy)
threadpool_limits(int(os.environ["OMP_NUM_THREADS"]))


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
