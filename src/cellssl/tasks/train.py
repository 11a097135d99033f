"""``cellssl-train``: pretrain a model on a cell store, then evaluate it; results go to ``metrics.json``.

Everything is built from the composed config with ``hydra.utils.instantiate``; see ``conf/train.yaml``.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from cellssl.callbacks import LossHistory
from cellssl.data import CellDataModule
from cellssl.evaluation.pretraining import evaluate_pretraining
from cellssl.evaluation.transfer import store_genes
from cellssl.methods import build_model
from cellssl.tasks import config_dir
from cellssl.tasks.common import (
    exit_on_input_error,
    quiet_library_noise,
    write_json,
)
from cellssl.tasks.outputs import finish_loggers, instantiate_callbacks, instantiate_loggers

log = logging.getLogger(__name__)


def data_context(datamodule: CellDataModule) -> dict[str, Any]:
    """What the store offers a model: its gene vocabulary and, with a label key, the training classes.

    Each model takes the keys its constructor names (:func:`cellssl.methods.build_model`).
    """
    store = datamodule.store
    context: dict[str, Any] = {"n_genes": store.n_genes, "gene_names": [str(g) for g in store.gene_names]}
    genes = store_genes(store)  # Ensembl ids too, when the store has them: transfer matches genes by either
    if genes.ensembl_ids is not None:
        context["gene_ids"] = [str(g) for g in genes.ensembl_ids]
    if datamodule.label_key is not None:
        codes, categories = store.labels(datamodule.label_key)
        start, stop = store.split_range("train")
        train_codes = codes[start:stop]
        counts = np.bincount(train_codes[train_codes >= 0], minlength=len(categories))
        context.update(n_classes=len(categories), class_counts=[int(c) for c in counts])
    return context


def cluster_plugins() -> list[Any]:
    """Inside SLURM: Lightning's SLURM environment with its auto-requeue off.

    Preemption has one owner, :class:`cellssl.callbacks.RequeueOnSignal`; Lightning's handler would checkpoint
    inside the signal handler, possibly half-way through a step.
    """
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def resume_path(ckpt_path: str | None, checkpoint_dir: Path) -> str | None:
    """``last``: the newest checkpoint in ``checkpoint_dir`` (None when there is none: a fresh run); else as given."""
    if ckpt_path != "last":
        return ckpt_path
    candidates = sorted(checkpoint_dir.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"))
    if candidates:
        log.info("resuming from %s", candidates[-1])
    return str(candidates[-1]) if candidates else None


@exit_on_input_error
def train(cfg: DictConfig) -> dict[str, Any]:
    """Pretrain and evaluate; returns the metrics written to ``metrics.json`` (empty on non-zero ranks)."""
    quiet_library_noise()
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # before DDP starts other ranks, so only this process builds a store
    datamodule.setup()
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), data_context(datamodule))
    initial_model = copy.deepcopy(model)  # the random-encoder baseline: the same weights, untrained

    loggers = instantiate_loggers(cfg)  # also writes config_resolved.yaml
    callbacks = instantiate_callbacks(cfg, loggers)
    history = next((c for c in callbacks if isinstance(c, LossHistory)), None)
    trainer: L.Trainer = instantiate(
        cfg.trainer, logger=loggers or False, callbacks=callbacks, plugins=cluster_plugins()
    )

    started = time.perf_counter()
    ckpt_path = resume_path(cfg.get("ckpt_path"), output_dir / "checkpoints")
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics: dict[str, Any] = {
        "time/train_s": time.perf_counter() - started,
        "trainer/global_step": trainer.global_step,
    }
    if not trainer.is_global_zero:
        return {}
    if history is not None and history.history:
        metrics.update(
            {
                "train/loss_first_epoch": history.history[0],
                "train/loss_last_epoch": history.history[-1],
                "train/loss_history": history.history,
            }
        )

    if cfg.evaluation.enabled:
        started = time.perf_counter()
        eval_metrics, table = evaluate_pretraining(
            model,
            initial_model,
            datamodule.store,
            label_key=cfg.evaluation.label_key,
            reference_split=cfg.evaluation.reference_split,
            query_split=cfg.evaluation.query_split,
            k=cfg.evaluation.k,
            pca_components=cfg.evaluation.pca_components,
            max_cells=cfg.evaluation.max_cells,
            batch_size=cfg.evaluation.batch_size,
            seed=cfg.seed,
        )
        metrics["time/eval_s"] = time.perf_counter() - started
        metrics.update(eval_metrics)
        text = table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.3f}")
        timing = (
            f"{trainer.current_epoch} epochs, {trainer.global_step} steps: "
            f"training {metrics['time/train_s']:.1f} s, evaluation {metrics['time/eval_s']:.1f} s"
        )
        print(f"\n{text}\n{timing}\n", flush=True)
        for logger in loggers:
            logger.log_metrics(eval_metrics, step=trainer.global_step)
            if isinstance(logger, WandbLogger):
                logger.log_table("eval/table", dataframe=table.fillna(float("nan")))
    write_json(output_dir / "metrics.json", metrics)
    log.info("metrics written to %s", output_dir / "metrics.json")
    finish_loggers(loggers)  # ends the W&B run: the next job of a multirun starts its own
    return metrics


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
