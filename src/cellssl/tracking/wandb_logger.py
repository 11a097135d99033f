"""A W&B logger that never stops a training: when W&B cannot be reached it logs offline instead."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger

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
    """

    def __init__(self, *args: Any, probe_timeout: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.probe_timeout = probe_timeout

    def _go_offline(self, reason: str) -> None:
        log.warning(
            "W&B unreachable (%s): logging offline under %s; upload later with `wandb sync`", reason, self.save_dir
        )
        self._offline = True
        self._wandb_init["mode"] = "offline"
        self._experiment = None

    @property
    def experiment(self) -> Any:
        if self._experiment is None and not self._offline and not wandb_reachable(self.probe_timeout):
            self._go_offline(f"no connection to {os.environ.get('WANDB_BASE_URL', 'https://api.wandb.ai')}")
        try:
            return super().experiment
        except Exception as err:  # UsageError (no API key), CommError: anything that is not the training's fault
            if self._offline:
                raise
            self._go_offline(str(err).splitlines()[0] if str(err) else type(err).__name__)
            return super().experiment
