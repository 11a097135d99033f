"""Helpers shared by the Hydra tasks: clean exits on bad input, atomic files, resolved configs."""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cellssl.store import InputError
from cellssl.store.output import check_output, output_error, replace_path, write_atomic

# Library messages that tell a user of these apps nothing they can act on.
_IGNORED_WARNINGS = (
    r"Your `IterableDataset` has `__len__` defined",  # ours is exact: EpochPlan gives each rank's count
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"The number of training batches .* is smaller than the logging interval",
    r"Checkpoint directory .* exists and is not empty",
    r"When using the `ThroughputMonitor`, you need to define a `flops_per_batch`",  # we report cells/s, not FLOPs
    r".* genes are missing from the data",  # CellSSLModel's notebook warning: the apps log the gene overlap instead
)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_library_noise() -> None:
    """Silence known, irrelevant library warnings and Lightning's product tips in the apps' output."""
    for pattern in _IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())


def exit_on_input_error(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Turn :class:`InputError` into one line on stderr and exit status 2, instead of a traceback."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper


def defer_signals(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Note the preemption signal (and outside SLURM SIGTERM and SIGINT) from the task's start instead of dying
    of it: training acts on it at its start or at a batch end (:class:`cellssl.callbacks.RequeueOnSignal`)."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        from cellssl.callbacks import noting_signals  # imports lightning: not at start-up of the apps that need none

        with noting_signals():
            return task(cfg)

    return wrapper


@contextmanager
def atomic_output(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write a file or folder to; rename it to ``path`` on success,
    remove it on failure. For writers that take a path (``AnnData.write_h5ad``, ``Figure.savefig``).

    What is already at ``path`` is replaced only with ``overwrite`` (the caller's decision) and only when it is
    what cellssl writes: a file, or for a folder a cellssl store; anything else (a folder of other files, ...) is
    an :class:`InputError`, before anything is written and again just before the rename.
    """
    path = Path(path)
    replaceable = "store" if path.is_dir() else "file"
    check_output(path, overwrite, replaceable=replaceable)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(path, err) from err
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")  # keep the suffix: writers read it
    try:
        yield tmp
        check_output(path, overwrite, replaceable=replaceable)
        replace_path(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def environment() -> dict[str, Any]:
    """What a result depends on besides the config: the CPU threads torch uses (results are deterministic for a
    fixed seed and thread count, not across thread counts), torch's version and the machine's CPU count."""
    import torch

    return {"env/torch_threads": torch.get_num_threads(), "env/cpus": os.cpu_count(), "env/torch": torch.__version__}


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The config with every interpolation resolved, as plain containers (for files and loggers)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def labelled_datamodule(data_cfg: DictConfig) -> Any:
    """The configured :class:`~cellssl.data.CellDataModule`, set up; refused when it has no label column."""
    from hydra.utils import instantiate

    datamodule = instantiate(data_cfg)
    if datamodule.label_key is None:
        raise InputError(str(datamodule.store_path), "data.label_key", "no label column", "set data.label_key")
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def check_optimized_metric(cfg: DictConfig) -> None:
    """A search's objective (``optimized_metric``) on the validation kNN needs that score: refused before training
    when the evaluation is off, has no labels or scores another split."""
    name = cfg.get("optimized_metric")
    if name is None or "/knn/" not in name:
        return
    evaluation = cfg.evaluation
    split = evaluation.get("validation_split")
    if not evaluation.enabled or evaluation.label_key is None or not name.startswith(f"{split}/"):
        raise InputError(
            "config",
            "optimized_metric",
            f"{name} needs evaluation.enabled=true, labels (data.label_key) and evaluation.validation_split="
            f"{name.split('/')[0]} (now {evaluation.enabled}, {evaluation.label_key}, {split})",
            "set them, or optimize val/loss (hydra.sweeper.direction=minimize)",
        )


def optimized_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The value a Hydra sweeper optimizes (``optimized_metric``; None when unset or on ranks other than 0)."""
    if name is None or not metrics:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric {name} is not among this run's metrics: {sorted(metrics)}")
    return float(metrics[name])
