"""``cellssl-finetune``: train a classifier head on a pretrained (or randomly initialised) encoder, then score it.

Writes ``metrics.json`` (macro/micro F1, accuracy, ...), ``test_per_class.csv`` and ``test_confusion.png`` to
the run directory and logs them; see ``conf/finetune.yaml``.
"""

from __future__ import annotations

# isort: off
# W&B (the default logger) before torch and lightning: building wandb's pydantic models looks up their docstrings
# with inspect.getmodule, which scans every loaded module; after torch, lightning and scanpy that import takes
# ~5-10 s instead of ~1 s (cellssl-evaluate on pbmc68k: 20 s -> 11 s)
import wandb  # noqa: F401

# isort: on

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cellssl.callbacks import LossHistory
from cellssl.data import CellDataModule
from cellssl.data.cells import store_cells
from cellssl.data.context import data_context
from cellssl.evaluation.classification import score_classification
from cellssl.evaluation.identity import model_identity, pretraining_identity, run_label
from cellssl.evaluation.transfer import GeneAlignment
from cellssl.methods import build_model
from cellssl.methods.finetune import FineTuneClassifier, load_encoder_weights
from cellssl.model import CellSSLModel
from cellssl.store import CellStore, InputError
from cellssl.tasks import config_dir
from cellssl.tasks.common import (
    defer_signals,
    exit_on_input_error,
    labelled_datamodule,
    quiet_library_noise,
    write_json,
)
from cellssl.tasks.outputs import (
    finish_loggers,
    instantiate_callbacks,
    instantiate_loggers,
    load_model,
    ontology_predictions,
    write_classification,
)
from cellssl.training import checkpoint_plugins, cluster_plugins, resume_path

log = logging.getLogger(__name__)


def build_classifier(cfg: DictConfig, datamodule: CellDataModule) -> tuple[FineTuneClassifier, GeneAlignment, dict]:
    """The classifier in the encoder's gene space, its alignment from the data's genes, and the identity of the
    pretraining it starts from (:func:`cellssl.evaluation.identity.pretraining_identity`)."""
    store = datamodule.store
    context = data_context(store, datamodule.label_key)
    model_config: dict[str, Any] = OmegaConf.to_container(cfg.model, resolve=True)
    if cfg.pretrained is None:
        model_config["encoder"] = OmegaConf.to_container(cfg.encoder, resolve=True)
        model = build_model(model_config, context)
        return model, GeneAlignment.identity(store.n_genes), pretraining_identity(None, None)
    loaded = load_model(str(cfg.pretrained), cfg.transfer)
    pretrained = loaded.module
    encoder_config = (pretrained.model_config or {}).get("encoder")
    if encoder_config is None:
        raise InputError(str(cfg.pretrained), "model_config.encoder", "no encoder config", "use a cellssl checkpoint")
    alignment = loaded.align(store_cells(store))
    # the classifier lives in the checkpoint's gene space: its vocabulary replaces the data's
    vocabulary_keys = ("n_genes", "gene_names", "gene_ids")
    context = {k: v for k, v in context.items() if k not in vocabulary_keys}
    context.update({k: v for k, v in pretrained.data_context.items() if k in vocabulary_keys})
    model = build_model({**model_config, "encoder": encoder_config}, context)
    load_encoder_weights(model, pretrained.encoder)
    model.gene_alignment = None if alignment.is_identity else alignment
    return model, alignment, model_identity(loaded)


def score_on_split(
    cfg: DictConfig, model: FineTuneClassifier, store: CellStore, label_key: str, method: str, loggers: list
) -> dict[str, Any]:
    """Scores of the classifier's predictions (``CellSSLModel.predict``) on ``evaluation.split``, with ontology-aware
    scores when an ontology is configured; per-class CSV and confusion matrix written and logged."""
    split = cfg.evaluation.split
    cells = store_cells(store, split, cfg.evaluation.max_cells)
    classifier = CellSSLModel(model, **OmegaConf.to_container(cfg.transfer, resolve=True))
    predicted = classifier.predict(cells, batch_size=cfg.evaluation.batch_size).codes
    codes, class_names = store.labels(label_key)
    start = store.split_range(split)[0]
    true = codes[start : start + cells.n_cells]
    scores = score_classification(true, predicted, class_names, prefix=f"{split}/")
    write_classification(scores, Path(cfg.paths.output_dir), split, loggers, title=f"{method}: {split} split")
    metrics = {**scores.metrics, f"{split}/n_cells": cells.n_cells}
    correct = ontology_predictions(cfg.ontology, class_names)
    if correct is not None:
        prefix = f"{split}/ontology_"
        ontology_scores = score_classification(true, correct(true, predicted), class_names, prefix=prefix)
        metrics.update(ontology_scores.metrics)
        title = f"{method} (ontology)"
        write_classification(ontology_scores, Path(cfg.paths.output_dir), f"{split}_ontology", loggers, title=title)
    return metrics


@exit_on_input_error
@defer_signals
def finetune(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune and score; returns what is written to ``metrics.json``."""
    quiet_library_noise()
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resume_path(cfg.get("ckpt_path"), output_dir / "checkpoints")  # first: an unreadable one is refused
    L.seed_everything(cfg.seed, workers=True)
    datamodule: CellDataModule = labelled_datamodule(cfg.data)
    store = datamodule.store
    model, alignment, identity = build_classifier(cfg, datamodule)
    label = cfg.method_name or run_label(identity, cfg.mode.name)

    loggers = instantiate_loggers(cfg)
    callbacks = instantiate_callbacks(cfg, loggers)
    trainer: L.Trainer = instantiate(
        cfg.trainer, logger=loggers or False, callbacks=callbacks, plugins=[*cluster_plugins(), *checkpoint_plugins()]
    )
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    train_s = time.perf_counter() - started
    if not trainer.is_global_zero:
        return {}

    split = cfg.evaluation.split
    metrics: dict[str, Any] = score_on_split(cfg, model, store, datamodule.label_key, label, loggers)
    metrics.update({**alignment.report(), "time/train_s": train_s})
    history = next((c.history for c in callbacks if isinstance(c, LossHistory)), [])
    if history:
        metrics.update({"train/loss_first_epoch": history[0], "train/loss_last_epoch": history[-1]})
        metrics["train/loss_history"] = history

    numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float)}  # not the history list
    for logger in loggers:
        logger.log_metrics(numeric, step=trainer.global_step)
    run = {
        "task": "finetune",
        "method": identity["method"],
        "label": label,
        "mode": cfg.mode.name,
        "pretrained": None if cfg.pretrained is None else str(cfg.pretrained),
        "dataset": cfg.dataset_name or Path(store.path).stem,
        "seed": int(cfg.seed),
    }
    prefix = f"{split}/"
    report_rows = [
        {
            **identity,
            **({"name": cfg.method_name} if cfg.method_name else {}),
            "mode": run["mode"],
            "dataset": run["dataset"],
            "split": split,
            "seed": run["seed"],
            **{k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)},
        }
    ]
    for logger in loggers:
        logger.log_hyperparams({"report_rows": report_rows})
    write_json(output_dir / "metrics.json", {**metrics, "run": run, "report_rows": report_rows})
    print(
        f"\n{label} on {run['dataset']} ({split}, {metrics[f'{split}/n_cells']} cells): "
        f"macro F1 {metrics[f'{split}/macro_f1']:.3f}, accuracy {metrics[f'{split}/accuracy']:.3f}; "
        f"training {train_s:.1f} s\n",
        flush=True,
    )
    finish_loggers(loggers)
    return {**metrics, "run": run}


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="finetune")
def main(cfg: DictConfig) -> None:
    finetune(cfg)


if __name__ == "__main__":
    main()
