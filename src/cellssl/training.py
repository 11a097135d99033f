"""Trainer plumbing shared by the training apps: the cluster environment and where a run resumes from."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.environments import SLURMEnvironment

log = logging.getLogger(__name__)


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
