"""Lightning callbacks of the training runs."""

from __future__ import annotations

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
    """Writes the cell ids each rank trained on, per epoch, to ``dirpath/rank{r}_epoch{e}.npy``.

    An audit trail: coverage checks (every cell once per epoch, disjoint ranks) read these files.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self._seen: list[torch.Tensor] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._seen.append(batch["cell_id"].detach().cpu())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        ids = torch.cat(self._seen).numpy() if self._seen else np.empty(0, dtype=np.int64)
        np.save(self.dirpath / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.npy", ids)
