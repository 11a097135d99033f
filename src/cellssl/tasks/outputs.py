"""What the apps share: loggers and callbacks from the config, a checkpoint loaded with the app's settings, the
zero-shot evaluation with the ``evaluation`` group's settings, and result files (metrics.json, per-class CSV,
figures) written atomically and logged."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.utils import instantiate
from lightning.pytorch.callbacks import DeviceStatsMonitor, LearningRateMonitor, ThroughputMonitor
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from cellssl.evaluation.classification import ClassificationScores, plot_confusion
from cellssl.evaluation.ontology import Ontology, match_cell_types, ontology_corrected
from cellssl.evaluation.zero_shot import ZeroShotResult, zero_shot_evaluation
from cellssl.model import CellSSLModel, load
from cellssl.store import CellStore
from cellssl.tasks.common import atomic_output, resolved_config, write_atomic
from cellssl.tracking import log_image

log = logging.getLogger(__name__)


def instantiate_loggers(cfg: DictConfig) -> list[Logger]:
    """The configured loggers, with the resolved config logged as hyperparameters."""
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None and "_target_" in c]
    config = resolved_config(cfg)
    for logger in loggers:
        logger.log_hyperparams(config)
    text = OmegaConf.to_yaml(OmegaConf.create(config))
    rank_zero_only(write_atomic)(Path(cfg.paths.output_dir) / "config_resolved.yaml", text)
    return loggers


# callbacks that only feed loggers: Lightning refuses them in a run without a logger (``~logger``)
LOGGER_ONLY_CALLBACKS = (LearningRateMonitor, DeviceStatsMonitor, ThroughputMonitor)


def instantiate_callbacks(cfg: DictConfig, loggers: list[Logger]) -> list[Any]:
    """The configured callbacks; without loggers, those that only feed loggers are left out."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c]
    if loggers:
        return callbacks
    return [c for c in callbacks if not isinstance(c, LOGGER_ONLY_CALLBACKS)]


def load_model(path: str, transfer: DictConfig, accelerator: str = "cpu") -> CellSSLModel:
    """``cellssl.load`` with the app's ``transfer`` settings, on the ``trainer.accelerator``'s device."""
    device = {"gpu": "cuda", "cuda": "cuda", "auto": "auto"}.get(str(accelerator), "cpu")
    return load(path, device=device, **OmegaConf.to_container(transfer, resolve=True))


def run_zero_shot(
    cfg: DictConfig, model: CellSSLModel | None, store: CellStore, random_model: CellSSLModel | None = None, **extra
) -> ZeroShotResult:
    """:func:`zero_shot_evaluation` with the settings of the ``evaluation`` group (``cfg.evaluation``), and
    ontology-corrected scores whenever an ontology is configured (``cfg.ontology``) and there are labels."""
    settings = OmegaConf.to_container(cfg.evaluation, resolve=True)
    settings.pop("enabled", None)
    label_key = settings["label_key"]
    if cfg.get("ontology") is not None and label_key is not None:
        extra.setdefault("ontology", ontology_predictions(cfg.ontology, store.labels(label_key)[1]))
    return zero_shot_evaluation(model, store, random_model=random_model, seed=cfg.seed, **settings, **extra)


def print_table(table: pd.DataFrame, footer: str = "") -> None:
    text = table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.3f}")
    print(f"\n{text}\n{footer}\n", flush=True)


def finish_loggers(loggers: list[Logger]) -> None:
    """Finalise every logger and end W&B runs, so the next job of a multirun starts its own run."""
    for logger in loggers:
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_output(path, overwrite=True) as tmp:  # a figure of this run, drawn again
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip("."), bbox_inches="tight")
    plt.close(fig)


def log_table(loggers: list[Logger], key: str, table: pd.DataFrame) -> None:
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table(key=key, dataframe=table)


def write_classification(
    scores: ClassificationScores, output_dir: Path, name: str, loggers: list[Logger], title: str = ""
) -> None:
    """``<name>_per_class.csv`` and ``<name>_confusion.png`` in ``output_dir``, also logged to W&B."""
    table_path, figure_path = output_dir / f"{name}_per_class.csv", output_dir / f"{name}_confusion.png"
    write_atomic(table_path, scores.per_class.to_csv(index=False))
    save_figure(plot_confusion(scores, title=title), figure_path)
    log_table(loggers, f"{name}/per_class", scores.per_class)
    log_image(loggers, f"{name}/confusion", figure_path)


def ontology_predictions(cfg: DictConfig, class_names: list[str]):
    """A function correcting predictions by the ontology (``None`` when ontology scoring is off)."""
    if not cfg.enabled:
        return None
    ontology = Ontology.load(cfg.source, cfg.get("name", "CL"))
    label_map = OmegaConf.to_container(cfg.label_map, resolve=True) if cfg.get("label_map") else {}
    term_ids = match_cell_types(class_names, ontology, label_map)
    log.info("ontology scoring with %s: %s", ontology.source, dict(zip(class_names, term_ids, strict=True)))
    return lambda true, predicted: ontology_corrected(true, predicted, term_ids, ontology)
