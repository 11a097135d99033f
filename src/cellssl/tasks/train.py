"""``cellssl-train``: pretrain a model on a cell store, then evaluate it; results go to ``metrics.json``.

Everything is built from the composed config with ``hydra.utils.instantiate``; see ``conf/train.yaml``.
"""

from __future__ import annotations

# isort: off
# W&B (the default logger) before torch and lightning: building wandb's pydantic models looks up their docstrings
# with inspect.getmodule, which scans every loaded module; after torch, lightning and scanpy that import takes
# ~5-10 s instead of ~1 s (cellssl-evaluate on pbmc68k: 20 s -> 11 s)
import wandb  # noqa: F401

# isort: on

import copy
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from cellssl.callbacks import LossHistory
from cellssl.data.context import data_context
from cellssl.evaluation.identity import pretraining_identity
from cellssl.evaluation.report import zero_shot_rows
from cellssl.evaluation.scvi_baseline import require_scvi
from cellssl.methods import PretrainingModule, build_model
from cellssl.model import CellSSLModel
from cellssl.store import CellStore
from cellssl.tasks import config_dir
from cellssl.tasks.common import (
    check_optimized_metric,
    defer_signals,
    environment,
    exit_on_input_error,
    optimized_value,
    quiet_library_noise,
    write_json,
)
from cellssl.tasks.outputs import (
    finish_loggers,
    instantiate_callbacks,
    instantiate_loggers,
    log_table,
    print_table,
    run_zero_shot,
)
from cellssl.training import checkpoint_plugins, cluster_plugins, resume_path

log = logging.getLogger(__name__)


def evaluate_trained(
    cfg: DictConfig,
    model: PretrainingModule,
    initial_model: PretrainingModule,
    store: CellStore,
    loggers: list[Logger],
    trainer: L.Trainer,
) -> dict[str, Any]:
    """The zero-shot evaluation of the trained model beside its own random initialisation; printed and logged."""
    started = time.perf_counter()
    result = run_zero_shot(cfg, CellSSLModel(model), store, random_model=CellSSLModel(initial_model))
    metrics = {**result.metrics, "time/eval_s": time.perf_counter() - started}
    print_table(
        result.table,
        f"{trainer.current_epoch} epochs, {trainer.global_step} steps; evaluation {metrics['time/eval_s']:.1f} s",
    )
    # the encoder's and the baselines' kNN scores as cellssl-report rows: a pretraining sweep is reported as one
    identity = pretraining_identity(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", model.model_config)
    split, dataset = cfg.evaluation.query_split, Path(store.path).stem
    metrics["report_rows"] = zero_shot_rows(result, identity, dataset, split, cfg.seed)
    numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    for logger in loggers:
        logger.log_metrics(numeric, step=trainer.global_step)
        logger.log_hyperparams({"report_rows": metrics["report_rows"]})
    log_table(loggers, "eval/table", result.table.fillna(float("nan")))
    return metrics


@exit_on_input_error
@defer_signals
def train(cfg: DictConfig) -> dict[str, Any]:
    """Pretrain and evaluate; returns the metrics written to ``metrics.json`` (empty on non-zero ranks)."""
    quiet_library_noise()
    if cfg.evaluation.enabled and "scvi" in cfg.evaluation.baselines:
        require_scvi()  # refused before training, not after it
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resume_path(cfg.get("ckpt_path"), output_dir / "checkpoints")  # first: an unreadable one is refused
    check_optimized_metric(cfg)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # before DDP starts other ranks, so only this process builds a store
    datamodule.setup()
    context = data_context(datamodule.store, datamodule.label_key)
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), context)
    initial_model = copy.deepcopy(model)  # the random-encoder baseline: the same weights, untrained

    loggers = instantiate_loggers(cfg)  # also writes config_resolved.yaml
    callbacks = instantiate_callbacks(cfg, loggers)
    history = next((c for c in callbacks if isinstance(c, LossHistory)), None)
    trainer: L.Trainer = instantiate(
        cfg.trainer, logger=loggers or False, callbacks=callbacks, plugins=[*cluster_plugins(), *checkpoint_plugins()]
    )

    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics: dict[str, Any] = {
        "time/train_s": time.perf_counter() - started,
        "trainer/global_step": trainer.global_step,
        "data/batch_size": datamodule.batch_size,  # per rank, after any adaptation to a small store
        # the last validation's scores (val/loss: the objective of a search on unlabelled data)
        **{key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")},
        **environment(),
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
        metrics.update(evaluate_trained(cfg, model, initial_model, datamodule.store, loggers, trainer))
    write_json(output_dir / "metrics.json", metrics)
    log.info("metrics written to %s", output_dir / "metrics.json")
    finish_loggers(loggers)  # ends the W&B run: the next job of a multirun starts its own
    return metrics


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra's sweepers take the task's return: the ``optimized_metric`` of a search (hparams_search=...)."""
    return optimized_value(train(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
