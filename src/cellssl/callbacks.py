"""Lightning callbacks of the training runs."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import torch


class LossHistory(L.Callback):
    """Keeps the epoch-mean training loss of every epoch, so a run can report that its loss fell."""

    def __init__(self, key: str = "train/loss_epoch") -> None:
        self.key = key
        self.history: list[float] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.key)
        if value is not None:
            self.history.append(float(value))


class RecordCellIds(L.Callback):
    """Writes the cell ids each rank trained on to ``dirpath/rank{r}_epoch{e}_from{step}.npy``.

    An audit trail for coverage checks (every cell once per epoch, disjoint ranks). The record is written
    at the end of each epoch and whenever a checkpoint is saved, so after a crash it matches the newest
    checkpoint; ``from{step}`` (the global step the record starts at) keeps a resumed run's record apart.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self._seen: list[torch.Tensor] = []
        self._start_step = self._epoch = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a run resumed mid-epoch gets no on_train_epoch_start for the epoch it resumes
        self._seen, self._start_step, self._epoch = [], trainer.global_step, trainer.current_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen, self._start_step, self._epoch = [], trainer.global_step, trainer.current_epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._seen.append(batch["cell_id"].detach().cpu())

    def _write(self, trainer: L.Trainer) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        ids = torch.cat(self._seen).numpy() if self._seen else np.empty(0, dtype=np.int64)
        name = f"rank{trainer.global_rank}_epoch{self._epoch}_from{self._start_step}.npy"
        np.save(self.dirpath / name, ids)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._write(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)


class CrashAfterSteps(L.Callback):
    """Fault injection: kill the process (no clean-up, like a node failure) after ``steps`` optimiser steps.

    For testing that a run resumed from its newest checkpoint loses and repeats nothing.
    """

    def __init__(self, steps: int, exit_code: int = 3) -> None:
        self.steps, self.exit_code = steps, exit_code

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.steps:
            os._exit(self.exit_code)
