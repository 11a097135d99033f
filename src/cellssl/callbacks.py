"""Lightning callbacks of the training runs."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment

from cellssl.store import InputError

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


class OnlineEvaluation(L.Callback):
    """Representation quality while pretraining: every ``every_n_steps`` optimiser steps, at each epoch end and
    at the start of training (the untrained encoder, the baseline of the curve), the model embeds a fixed
    labelled subset of cells and ``online/knn_macro_f1`` (and the other kNN scores), ``online/reconstruction_ev``
    and ``online/reconstruction_mse`` (models that reconstruct), ``online/eval_s`` (the evaluation's time) and
    ``online/skipped`` (evaluations skipped so far, below) go to every logger at that step; once more at the end
    of training if its last step was not evaluated. Every ``umap_every`` evaluations (the first included;
    0/None: never) a UMAP of the embedding coloured by label is saved as ``dirpath/umap_step<step>.png`` and logged
    as ``online/umap`` to the loggers that take images (W&B, TensorBoard; CSV: the file is the record).

    ``max_overhead`` bounds the evaluations' share of the run: an evaluation is skipped (one log line the first
    time) while the time spent evaluating exceeds that fraction of the time spent training since the start of
    training (the final evaluation excepted), so short epochs (each ending in an evaluation) or a first UMAP
    (~25 s on a CPU: scanpy's import, numba's compilation) cannot slow a small run down. It binds only where
    evaluations are dense for the run's size; None evaluates at exactly the configured steps.

    The cells: the first ``n_cells`` labelled cells of ``split`` of the training store, or of ``reference_store``
    (a labelled cell store; its genes are aligned to the model's vocabulary as any evaluation's are), halved into
    a kNN reference and query (:mod:`cellssl.evaluation.online`). Without ``label_key`` it is off (one log line):
    unlabelled training data needs a labelled ``reference_store``. Under DDP every rank prepares the cells (so a bad
    setting stops all of them alike) and rank 0 alone evaluates, without a collective: the other ranks wait for it
    at the next gradient all-reduce. The model is evaluated in eval mode without gradients, and its mode restored.
    """

    def __init__(
        self,
        label_key: str | None,
        every_n_steps: int = 1000,
        n_cells: int = 2000,
        split: str = "val",
        k: int = 5,
        umap_every: int | None = None,
        dirpath: str = "online_eval",
        reference_store: str | None = None,
        seed: int = 0,
        max_overhead: float | None = 0.05,
    ) -> None:
        self.label_key, self.reference_store, self.split, self.n_cells = label_key, reference_store, split, n_cells
        self.every_n_steps, self.k, self.umap_every, self.seed = every_n_steps, k, umap_every, seed
        self.dirpath, self.max_overhead = Path(dirpath), max_overhead
        self.cells = None
        self.evaluations, self.last_step = 0, -1
        self.started, self.spent = 0.0, 0.0  # this process's training start and time spent evaluating
        self.skipped, self.skipped_step = 0, -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.cells is not None:
            return
        from cellssl.evaluation.online import evaluation_cells

        if self.label_key is None:
            if self.reference_store is not None:
                raise InputError(
                    str(self.reference_store),
                    "callbacks.online_evaluation.label_key",
                    "a reference store is given but no label column",
                    "set callbacks.online_evaluation.label_key=<obs column of the reference store>",
                )
            log.info("online evaluation off: no labels (set data.label_key, or give a labelled reference_store)")
            return
        store, alignment = self._store(trainer, pl_module)
        if store is None:
            log.info("online evaluation off: no cell store (a CellDataModule, or a reference_store)")
            return
        self.cells = evaluation_cells(store, self.split, self.label_key, self.n_cells, alignment)
        log.info(
            "online evaluation: %d cells of %s (%s split, kNN %d -> %d) every %d steps and at each epoch end",
            len(self.cells.labels),
            store.path,
            self.split,
            self.cells.n_reference,
            len(self.cells.labels) - self.cells.n_reference,
            self.every_n_steps,
        )

    def _store(self, trainer: L.Trainer, pl_module: L.LightningModule):
        """The store to evaluate on and the alignment of its genes to the model's (None: the training store)."""
        if self.reference_store is None:
            return getattr(trainer.datamodule, "store", None), None
        from cellssl.evaluation.transfer import align_genes, checkpoint_vocabulary, translation_table
        from cellssl.store import CellStore

        store = CellStore(self.reference_store)
        vocabulary = checkpoint_vocabulary(pl_module.data_context)
        alignment = align_genes(
            store.genes, vocabulary, translation=translation_table("bundled"), source=str(store.path)
        )
        return store, alignment

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started, self.spent, self.skipped, self.skipped_step = time.perf_counter(), 0.0, 0, -1
        self._evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._evaluate(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluate(trainer, pl_module, budget=False)  # the trained model, whatever the budget skipped

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, budget: bool = True) -> None:
        """Score the cells now (rank 0, once per step), unless the evaluations are over their time budget."""
        if self.cells is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        if trainer.global_step == self.last_step or (budget and self._over_budget(trainer.global_step)):
            return
        from cellssl.evaluation.online import online_scores

        started = time.perf_counter()
        index, self.evaluations, self.last_step = self.evaluations, self.evaluations + 1, trainer.global_step
        scores = online_scores(pl_module, self.cells, self.k, self.seed)
        if self.umap_every and index % self.umap_every == 0:
            self._umap(trainer, scores.embedding)
        metrics = {**scores.metrics, "online/eval_s": time.perf_counter() - started, "online/skipped": self.skipped}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self.spent += time.perf_counter() - started

    def _over_budget(self, step: int) -> bool:
        """Whether the time spent evaluating exceeds ``max_overhead`` of the time spent training (a skipped step is
        counted once, though a step's batch end and epoch end may both ask)."""
        if self.max_overhead is None:
            return False
        training = time.perf_counter() - self.started - self.spent
        if self.spent <= self.max_overhead * training:
            return False
        if step == self.skipped_step:
            return True
        if not self.skipped:
            log.info(
                "online evaluation: skipping evaluations while they take more than %.0f%% of the training time "
                "(callbacks.online_evaluation.max_overhead; null: every configured step)",
                100 * self.max_overhead,
            )
        self.skipped, self.skipped_step = self.skipped + 1, step
        return True

    def _umap(self, trainer: L.Trainer, embedding: np.ndarray) -> None:
        """``dirpath/umap_step<step>.png`` (written to a temporary name, then renamed), logged as ``online/umap``."""
        import matplotlib.pyplot as plt

        from cellssl.evaluation.plots import umap_figure
        from cellssl.tracking import log_image

        _, fig = umap_figure(embedding, self.cells.obs, "label", 15, self.seed)
        fig.axes[0].set_title(f"{self.label_key}, step {trainer.global_step}", fontsize=9)
        path = self.dirpath / f"umap_step{trainer.global_step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, path)
        log_image(trainer.loggers, "online/umap", path, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"evaluations": self.evaluations, "last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.evaluations, self.last_step = int(state_dict["evaluations"]), int(state_dict["last_step"])


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` in a job array, else ``SLURM_JOB_ID``."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class LastCheckpoint(Checkpoint):
    """The newest training state, always ``dirpath/last.ckpt``: at every training epoch end (after its validation)
    and, with ``every_n_train_steps > 0``, every that many optimiser steps (the loader's position included, so a
    run resumed mid-epoch repeats and skips no cell).

    The one owner of ``last.ckpt`` besides :class:`RequeueOnSignal`, which writes the same file: a run directory
    holds exactly one ``last*.ckpt``, and it is the newest state. Best-validation checkpoints are
    ``ModelCheckpoint``'s, under their own names (``best-epoch<n>.ckpt``).
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 0, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename
        self.every_n_train_steps = every_n_train_steps
        self._saved_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = self.every_n_train_steps
        if n > 0 and trainer.global_step % n == 0 and trainer.global_step != self._saved_step:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        trainer.save_checkpoint(self.path)
        self._saved_step = trainer.global_step


def outside_slurm() -> bool:
    """Not a SLURM batch job (an ``salloc`` shell counts as outside: its user presses Ctrl-C)."""
    return not SLURMEnvironment.detect()


class SignalLatch:
    """Notes signals instead of letting them act, so training stops where its state is consistent.

    Held from the start of a task (:func:`noting_signals`) to the end of its training
    (:meth:`RequeueOnSignal.teardown`): a signal that arrives while the job is still starting is remembered,
    not fatal. A second SIGTERM or SIGINT (Ctrl-C) acts at once, as it would without the latch.
    """

    def __init__(self) -> None:
        self.received: list[signal.Signals] = []
        self._previous: dict[signal.Signals, Any] = {}

    def install(self, signums: list[signal.Signals]) -> None:
        """Note ``signums`` from now on (the main thread only: Python handles signals there)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in signums:
            if signum not in self._previous:
                self._previous[signum] = signal.signal(signum, self._note)

    def reclaim(self) -> None:
        """Point the held signals back at the latch: Lightning's fit replaces the SIGTERM handler with its own,
        which stops even in the middle of a validation, with no checkpoint."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self._previous:
            if signum not in self.received:
                signal.signal(signum, self._note)

    def _note(self, signum: int, frame: object) -> None:
        sig = signal.Signals(signum)
        self.received.append(sig)
        if sig in STOP_SIGNALS:
            signal.signal(sig, self._default(sig))
            log.warning("%s received: stopping at the end of this batch, with a checkpoint (again: at once)", sig.name)

    def _default(self, sig: signal.Signals) -> Any:
        previous = self._previous.get(sig)
        return signal.SIG_DFL if previous is None else previous

    def pending(self) -> signal.Signals | None:
        """The first signal noted and not yet acted on."""
        return self.received[0] if self.received else None

    def release(self) -> None:
        """Restore the handlers there were before :meth:`install` and forget what was noted."""
        if threading.current_thread() is threading.main_thread():
            for sig in list(self._previous):
                signal.signal(sig, self._default(sig))
        self._previous.clear()
        self.received.clear()


# SIGTERM (kill, systemd, docker stop) and SIGINT (Ctrl-C) outside SLURM: checkpoint at the batch end and exit
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SIGNALS = SignalLatch()


def latched_signals(preemption: signal.Signals = signal.SIGUSR1) -> list[signal.Signals]:
    """The signals training defers: the preemption signal, and outside SLURM SIGTERM and SIGINT."""
    return [preemption, *(STOP_SIGNALS if outside_slurm() else ())]


@contextmanager
def noting_signals() -> Iterator[None]:
    """Hold :data:`SIGNALS` for the block (a task): signals before training starts are acted on at its start."""
    SIGNALS.install(latched_signals())
    try:
        yield
    finally:
        SIGNALS.release()


class RequeueOnSignal(Checkpoint):
    """The one preemption mechanism: on SLURM's warning signal, checkpoint, requeue the job, and exit.

    Jobs ask for the signal ahead of their time limit or preemption (``#SBATCH --signal=USR1@120``; the
    ``slurm`` launcher sets it). The handler (:data:`SIGNALS`, installed when the task starts) only notes the
    signal; the checkpoint is written at the end of the batch in progress, where the weights, the optimiser and
    the loader's position (the data module's state) agree, and every DDP rank agrees to stop there (checked every
    ``ddp_check_every`` batches under DDP): no trained batch is lost, and the time until exit is at most one batch
    (``ddp_check_every`` under DDP) plus the checkpoint write (a :class:`Checkpoint` subclass, so Lightning runs
    it after the other callbacks' batch-end hooks).
    Then rank 0 logs where it stopped (``preemption/step``, ``preemption/signal``) to every logger, runs
    ``scontrol requeue`` and the process exits (status 0); the requeued job lands in the same run directory and
    resumes from the newest checkpoint (``ckpt_path: last``), its W&B history continuing the same run. A signal
    noted before training started (the job was still loading) leaves at the start of training without a
    checkpoint (nothing was trained); one noted after the last batch end leaves when training ends (its last
    checkpoint is complete).

    Outside SLURM SIGTERM and SIGINT (Ctrl-C) are deferred the same way: checkpoint at the batch end, one line
    on stderr naming the checkpoint, exit status 128 + the signal's number (143, 130); the same command resumes.
    Outside SLURM the preemption signal checkpoints and exits with status 0, requeueing nothing.

    Lightning's own SLURM auto-requeue is switched off (``SLURMEnvironment(auto_requeue=False)`` in
    ``cellssl-train``): it checkpoints inside the signal handler, possibly half-way through a step or a DDP
    collective. submitit's USR2 handler is never triggered: the ``slurm`` launcher replaces its ``--signal``.
    """

    def __init__(
        self, dirpath: str, filename: str = "last.ckpt", signal_name: str = "SIGUSR1", ddp_check_every: int = 10
    ) -> None:
        self.path = Path(dirpath) / filename
        self.ddp_check_every = ddp_check_every
        self.signum = signal.Signals[signal_name]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            SIGNALS.install(latched_signals(self.signum))  # already held when run by a task

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        SIGNALS.reclaim()
        if trainer.strategy.reduce_boolean_decision(SIGNALS.pending() is not None, all=False):
            self.leave(trainer, checkpoint=False)  # noted while the job was starting: nothing trained yet

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # under DDP the ranks agree by a collective (a device sync): every ddp_check_every batches, not every one
        if trainer.world_size > 1 and batch_idx % self.ddp_check_every:
            return
        if trainer.strategy.reduce_boolean_decision(SIGNALS.pending() is not None, all=False):
            self.leave(trainer, checkpoint=True)

    def leave(self, trainer: L.Trainer, checkpoint: bool, sync: bool = True) -> None:
        """Checkpoint (when asked), requeue on the preemption signal (rank 0), say where to resume, and exit.

        ``sync``: all ranks leave together (they agreed by a collective); else only this rank leaves.
        """
        sig = SIGNALS.pending() or self.signum  # a rank that got nothing follows the ranks that did
        if checkpoint:
            log.warning("%s received: checkpointing to %s", sig.name, self.path)
            trainer.save_checkpoint(self.path)
        if sync:
            trainer.strategy.barrier("leave")
        if trainer.is_global_zero:
            for logger in trainer.loggers:  # where the history was cut: the resumed run continues after it
                logger.log_metrics(
                    {"preemption/step": trainer.global_step, "preemption/signal": int(sig)}, step=trainer.global_step
                )
                logger.save()
            _finish_wandb()
            if sig == self.signum:
                _requeue()
            else:
                print(_stop_line(sig, trainer, self.path if checkpoint else None), file=sys.stderr)
        # leave at once: SLURM is about to stop the job, and nothing after this point may look like a result
        # (submitit would report an exception or a return value as the job's outcome)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0 if sig == self.signum else 128 + sig)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if SIGNALS.pending() is not None:
            # arrived after the last batch end: training's final state is saved (LastCheckpoint, at the epoch end)
            self.leave(trainer, checkpoint=False, sync=False)
        SIGNALS.release()  # after training (evaluation) signals act as they would without cellssl


def _requeue() -> None:
    """``scontrol requeue`` this SLURM job (nothing outside SLURM)."""
    job = slurm_job_id()
    if job is None:
        return
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode != 0:
        log.error("scontrol requeue %s failed: %s", job, result.stderr.strip())
    else:
        log.warning("requeued SLURM job %s", job)


def _stop_line(sig: signal.Signals, trainer: L.Trainer, checkpoint: Path | None) -> str:
    """The one line a stopped run leaves: where its checkpoint is and how to resume."""
    where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
    if checkpoint is None:
        return f"{sig.name}: stopped at {where} with no new checkpoint; run the same command again to resume"
    return f"{sig.name}: stopped at {where}; checkpoint {checkpoint}; run the same command again to resume from it"


def _finish_wandb() -> None:
    """Flush and close the W&B run (if any), so its offline file is complete before the process exits."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=0)  # no quiet=: wandb 0.31 removed it
