"""Hydra entry points: the only code that reads a Hydra config.

Registers the resolvers the configs use:

- ``${resource:NAME}``: the path of a gene-set file bundled with the package (``hallmark``,
  ``reactome_wikipathways``, ``collectri``; see :mod:`cellssl.resources`);
- ``${run_tag:}``: this run's directory name: ``slurm-<job id>`` inside a SLURM job (so a requeued job finds its
  directory again), else the time and a random tag (so two runs started at once never share one);
- ``${unique_tag:}``: a random tag, cached in the config (a sweep's jobs, and its requeued jobs, see the same);
- ``${short_hash:TEXT}``: 12 hex digits of SHA-1 (stable W&B run ids from run directories);
- ``${sweep_group:}``: ``<experiment>/<sweep directory name>`` in a multirun (the W&B group), else null;
- ``${or_default:VALUE,DEFAULT}``: VALUE unless it is null (``default`` for runs without ``experiment=``);
- ``${if_null:VALUE,WHEN_NULL,OTHERWISE}``: WHEN_NULL if VALUE is null, else OTHERWISE (a search's objective by
  whether the data has labels);
- ``${sqlite_url:PATH}``: ``sqlite:///PATH`` with ``..`` resolved and PATH's folder created (an Optuna study
  beside the sweep directories, which do not exist yet when the study is opened);
- ``${gpus_per_node:ACCELERATOR,DEVICES}``: DEVICES on a GPU accelerator, else null (SLURM's ``--gpus-per-node``);
- ``${slurm_tasks:DEVICES}``: DEVICES as a task count, refused when it is not a positive number (``-1``, ``auto``).
"""

import hashlib
import os
import secrets
import time
from pathlib import Path

from omegaconf import OmegaConf

from cellssl.resources import bundled_path


def slurm_job_tag() -> str | None:
    """``slurm-<job id>`` (``slurm-<array job>_<task>`` in an array), or None outside SLURM.

    Stable across requeues: SLURM keeps the job id. In an interactive allocation (job name ``bash`` or
    ``interactive``, never requeued) the step id is added, so each ``srun`` there gets its own directory.
    """
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        job = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    step = os.environ.get("SLURM_STEP_ID", "")
    interactive = os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive")
    return f"slurm-{job}" + (f".{step}" if interactive and step.isdigit() else "")


def _run_tag() -> str:
    return slurm_job_tag() or f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{secrets.token_hex(3)}"


def _sweep_group() -> str | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    config = HydraConfig.get()
    if config.mode != RunMode.MULTIRUN:
        return None
    return f"{config.runtime.choices.get('experiment') or 'default'}/{Path(config.sweep.dir).name}"


def _sqlite_url(path: str) -> str:
    database = Path(os.path.normpath(path))
    database.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{database}"


def _gpus_per_node(accelerator: str, devices: int | str) -> int | None:
    return _slurm_tasks(devices) if str(accelerator) in ("gpu", "cuda") else None


def _slurm_tasks(devices: int | str) -> int:
    count = int(devices) if str(devices).lstrip("-").isdigit() else -1
    if count < 1:
        raise ValueError(
            f"trainer.devices={devices} cannot size a SLURM job (one task per device): "
            "set the devices per node, e.g. trainer.devices=4"
        )
    return count


OmegaConf.register_new_resolver("resource", lambda name: str(bundled_path(name)), replace=True)
OmegaConf.register_new_resolver("run_tag", _run_tag, use_cache=True, replace=True)
OmegaConf.register_new_resolver("unique_tag", lambda: secrets.token_hex(3), use_cache=True, replace=True)
OmegaConf.register_new_resolver(
    "short_hash", lambda text: hashlib.sha1(str(text).encode()).hexdigest()[:12], replace=True
)
OmegaConf.register_new_resolver("sweep_group", _sweep_group, replace=True)
OmegaConf.register_new_resolver("or_default", lambda value, default: default if value is None else value, replace=True)
OmegaConf.register_new_resolver(
    "if_null", lambda value, when_null, otherwise: when_null if value is None else otherwise, replace=True
)
OmegaConf.register_new_resolver("sqlite_url", _sqlite_url, replace=True)
OmegaConf.register_new_resolver("gpus_per_node", _gpus_per_node, replace=True)
OmegaConf.register_new_resolver("slurm_tasks", _slurm_tasks, replace=True)


def config_dir() -> str:
    """The repository's ``conf/`` in a source checkout, else the copy installed inside the package."""
    here = Path(__file__).resolve()
    repo_conf = here.parents[3] / "conf"
    if (repo_conf / "train.yaml").is_file():
        return str(repo_conf)
    return str(here.parents[1] / "conf")
