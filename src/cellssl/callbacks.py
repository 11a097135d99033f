"""Lightning callbacks of the training runs."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

log = logging.getLogger(__name__)


def cells_in_batch(batch: dict[str, torch.Tensor]) -> int:
    """The number of cells in a loader batch (for Lightning's ThroughputMonitor: cells/s)."""
    return int(batch["cell_id"].shape[0])


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


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` in a job array, else ``SLURM_JOB_ID``."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class RequeueOnSignal(Checkpoint):
    """The one preemption mechanism: on SLURM's warning signal, checkpoint, requeue the job, and exit.

    Jobs ask for the signal ahead of their time limit or preemption (``#SBATCH --signal=USR1@120``; the
    ``slurm`` launcher sets it). The handler only notes the signal; the checkpoint is written at the end of
    the batch in progress, where the weights, the optimiser and the loader's position (the data module's
    state) agree, and every DDP rank agrees to stop there (checked every ``ddp_check_every`` batches under DDP):
    no trained batch is lost, and the time until exit is at most one batch (``ddp_check_every`` under DDP) plus the
    checkpoint write (a :class:`Checkpoint` subclass, so Lightning runs it after the other
    callbacks' batch-end hooks).
    Then rank 0 runs ``scontrol requeue`` and the process exits; the requeued job lands in the same
    run directory and resumes from the newest checkpoint (``ckpt_path: last``).

    Lightning's own SLURM auto-requeue is switched off (``SLURMEnvironment(auto_requeue=False)`` in
    ``cellssl-train``): it checkpoints inside the signal handler, possibly half-way through a step or a DDP
    collective. submitit's USR2 handler is never triggered: the ``slurm`` launcher replaces its ``--signal``.
    Outside SLURM nothing is requeued; the checkpoint is still written and the process exits (status 0).
    """

    def __init__(
        self, dirpath: str, filename: str = "last.ckpt", signal_name: str = "SIGUSR1", ddp_check_every: int = 10
    ) -> None:
        self.path = Path(dirpath) / filename
        self.ddp_check_every = ddp_check_every
        self.signum = signal.Signals[signal_name]
        self._received = False
        self._previous = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._note)

    def _note(self, signum: int, frame: object) -> None:
        self._received = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # under DDP the ranks agree by a collective (a device sync): every ddp_check_every batches, not every one
        if trainer.world_size > 1 and batch_idx % self.ddp_check_every:
            return
        if trainer.strategy.reduce_boolean_decision(self._received, all=False):
            self.checkpoint_and_requeue(trainer)

    def checkpoint_and_requeue(self, trainer: L.Trainer) -> None:
        log.warning("%s received: checkpointing to %s", self.signum.name, self.path)
        trainer.save_checkpoint(self.path)
        trainer.strategy.barrier("requeue")
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.save()
            _finish_wandb()
            job = slurm_job_id()
            if job is not None:
                result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
                if result.returncode != 0:
                    log.error("scontrol requeue %s failed: %s", job, result.stderr.strip())
                else:
                    log.warning("requeued SLURM job %s", job)
        # leave at once: SLURM is about to stop the job, and nothing after this point may look like a result
        # (submitit would report an exception or a return value as the job's outcome)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self._previous)
            self._previous = None


def _finish_wandb() -> None:
    """Flush and close the W&B run (if any), so its offline file is complete before the process exits."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=0, quiet=True)
