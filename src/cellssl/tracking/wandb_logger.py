"""A W&B logger that never stops a training (when W&B cannot be reached it logs offline instead), whose offline
runs carry their config from their first record and continue their history across a requeue."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.fabric.utilities.logger import _add_prefix
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from cellssl.store.validation import InputError
from cellssl.tracking.wandb_offline import offline_runs, read_offline_run

log = logging.getLogger(__name__)


def wandb_reachable(timeout: float = 5.0) -> bool:
    """Whether a TCP connection to the W&B server (``WANDB_BASE_URL``, default api.wandb.ai) opens in time."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


class ResilientWandbLogger(WandbLogger):
    """Lightning's :class:`WandbLogger` that goes offline, with the same run id, when W&B cannot be reached.

    Before the online run starts (rank 0, first use) the server is probed with a TCP connection
    (``probe_timeout`` seconds); unreachable -> offline run, to upload later with
    ``wandb sync <run dir>/wandb/offline-run-*``. Probing first matters: W&B 0.22 hangs when a run is started
    offline in a process whose online start failed. A start that fails otherwise (e.g. no API key) is retried
    offline too.

    Hyperparameters logged before the run starts go into ``wandb.init(config=...)``: the run's first record
    holds them, so any part of an offline run on disk (one still running, or killed before ``finish()``) carries
    its config. An offline run resumed in the same ``wandb/`` directory (a requeued job: same run id, a new
    ``offline-run-*`` folder per segment) continues the history after its earlier segments' last row (``_step``),
    as W&B itself does when an online run resumes, instead of restarting at 0.
    """

    def __init__(self, *args: Any, probe_timeout: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.probe_timeout = probe_timeout
        self._first_row: int | None = None  # the _step this segment's first row takes, when it resumes a run

    def _go_offline(self, reason: str) -> None:
        log.warning(
            "W&B unreachable (%s): logging offline under %s; upload later with `wandb sync`", reason, self.save_dir
        )
        self._offline = True
        self._wandb_init["mode"] = "offline"
        self._experiment = None

    @property
    def experiment(self) -> Any:
        starting = self._experiment is None
        run = self._start()
        if starting and self._experiment is not None and run.offline:
            self._first_row = next_offline_row(run)
        return run

    def _start(self) -> Any:
        if self._experiment is None and not self._offline and not wandb_reachable(self.probe_timeout):
            self._go_offline(f"no connection to {os.environ.get('WANDB_BASE_URL', 'https://api.wandb.ai')}")
        try:
            return super().experiment
        except Exception as err:  # UsageError (no API key), CommError: anything that is not the training's fault
            if self._offline:
                raise
            self._go_offline(str(err).splitlines()[0] if str(err) else type(err).__name__)
            return super().experiment

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        if self._experiment is None and isinstance(params, Mapping):
            self._wandb_init["config"] = {**(self._wandb_init.get("config") or {}), **params}
        else:
            super().log_hyperparams(params)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        run = self.experiment
        if self._first_row is None:
            super().log_metrics(metrics, step)
            return
        row, self._first_row = self._first_row, None  # later rows follow it (W&B counts on from an explicit step)
        values = dict(_add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR))
        run.log(values if step is None else {**values, "trainer/global_step": step}, step=row, commit=True)


def next_offline_row(run: Any) -> int | None:
    """The ``_step`` after the last history row of the earlier segments of offline ``run`` (``offline-run-*-<id>``
    folders beside its own), or None when there are none: then W&B counts from 0 as usual."""
    this = Path(run.dir).parent  # run.dir: <wandb dir>/offline-run-<time>-<id>/files
    steps = []
    for segment in offline_runs(this.parent):
        if segment == this or not segment.name.endswith(f"-{run.id}"):
            continue
        try:
            steps += [row["_step"] for row in read_offline_run(segment).history if "_step" in row]
        except (OSError, InputError) as err:  # an unreadable earlier segment must not stop this training
            log.warning("W&B: %s not read (%s); the history may overlap it", segment, err)
    return max(steps) + 1 if steps else None
