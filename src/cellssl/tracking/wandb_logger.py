"""A W&B logger that never stops a training: when W&B cannot be reached it logs offline instead."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)


class ResilientWandbLogger(WandbLogger):
    """Lightning's :class:`WandbLogger`; if starting the online run fails (no network, no API key, W&B down),
    the same run (same id) is written offline, to be uploaded later with ``wandb sync <dir>/wandb/offline-run-*``.

    ``init_timeout`` bounds how long an unreachable server can hold up the start (W&B's default is 90 s).
    """

    def __init__(self, *args: Any, init_timeout: float = 60.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self._offline:
            self._wandb_init.setdefault("settings", {})
            if isinstance(self._wandb_init["settings"], dict):
                self._wandb_init["settings"].setdefault("init_timeout", init_timeout)

    @property
    def experiment(self) -> Any:
        try:
            return super().experiment
        except Exception as err:  # CommError, UsageError (no API key), timeouts: anything that is not training
            if self._wandb_init.get("mode") == "offline":
                raise
            log.warning(
                "W&B unreachable (%s): logging this run offline under %s; upload it later with `wandb sync`",
                str(err).splitlines()[0] if str(err) else type(err).__name__,
                self.save_dir,
            )
            self._offline = True
            self._wandb_init["mode"] = "offline"
            self._experiment = None
            return super().experiment
