"""Callbacks only tests use: fault injection and a slowed-down epoch, named by the subprocess configs of
tests/tasks/test_train.py and tests/slurm/test_slurm.py (``helpers.callbacks.<name>``)."""

from __future__ import annotations

import os
import signal
import time

import lightning as L


class CrashAfterSteps(L.Callback):
    """Fault injection: kill the process (no clean-up, like a node failure) after ``steps`` optimiser steps.

    For testing that a run resumed from its newest checkpoint loses and repeats nothing.
    """

    def __init__(self, steps: int, exit_code: int = 3) -> None:
        self.steps, self.exit_code = steps, exit_code

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.steps:
            os._exit(self.exit_code)


class Throttle(L.Callback):
    """Sleeps ``seconds`` after every training step: for tests that must act while an epoch is under way.

    ``first_run_only``: only in a SLURM job's first run, not once it was requeued (``SLURM_RESTART_COUNT``), so a
    resumed run finishes at full speed once the test has acted.
    """

    def __init__(self, seconds: float, first_run_only: bool = False) -> None:
        restarted = int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
        self.seconds = 0.0 if first_run_only and restarted else seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.seconds:
            time.sleep(self.seconds)


class SignalAfterSteps(L.Callback):
    """Fault injection: send this process ``signal_name`` once, at the end of optimiser step ``steps`` (as
    ``kill <pid>`` or Ctrl-C would, mid-epoch)."""

    def __init__(self, steps: int, signal_name: str = "SIGTERM") -> None:
        self.steps, self.signum, self.sent = steps, signal.Signals[signal_name], False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.steps and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class SignalOnInit(L.Callback):
    """Fault injection: send this process ``signal_name`` when the task builds its callbacks, i.e. while the job
    is still starting, before ``trainer.fit``."""

    def __init__(self, signal_name: str = "SIGUSR1") -> None:
        os.kill(os.getpid(), signal.Signals[signal_name])
