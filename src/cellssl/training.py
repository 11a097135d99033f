"""Trainer plumbing shared by the training apps: the cluster environment, atomic checkpoint files, and which
checkpoint a run resumes from."""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.plugins.environments import SLURMEnvironment

from cellssl.store import InputError

log = logging.getLogger(__name__)

# what a checkpoint must hold to resume training (Lightning's full checkpoint, not weights only)
RESUME_KEYS = ("state_dict", "optimizer_states", "loops", "pytorch-lightning_version")


def cluster_plugins() -> list[Any]:
    """Inside SLURM: Lightning's SLURM environment with its auto-requeue off.

    Preemption has one owner, :class:`cellssl.callbacks.RequeueOnSignal`; Lightning's handler would checkpoint
    inside the signal handler, possibly half-way through a step.
    """
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in its own directory, syncs it, then renames it over the old one.

    A process killed during a save leaves the previous checkpoint whole (and at worst a ``.<name>.tmp-<pid>``
    file, which :func:`resume_path` removes); Lightning's own save goes through a temporary file elsewhere and a
    copy, which a kill can cut short.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def checkpoint_plugins() -> list[Any]:
    """The checkpoint writer of every training app: :class:`AtomicCheckpointIO`."""
    return [AtomicCheckpointIO()]


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot resume a training run (missing, truncated, corrupt, foreign), or None when it can.

    Reads the whole file once (every member's CRC) and unpickles its index as Lightning's resume does
    (``weights_only=False``, memory-mapped: the tensors are not read again).
    """
    if not path.is_file():
        return "no such file"
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            return f"corrupt (bad CRC in {damaged})"
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except (zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        return f"unreadable, truncated or not a torch file ({type(err).__name__})"
    if not isinstance(checkpoint, dict) or not all(key in checkpoint for key in RESUME_KEYS):
        return "not a full Lightning training checkpoint (no optimiser or loop state)"
    return None


def _remove_partial_saves(checkpoint_dir: Path) -> None:
    """Remove the temporary files of saves that were killed before their rename."""
    for tmp in checkpoint_dir.glob(".*.ckpt.tmp-*"):
        log.info("removing %s, the remains of an interrupted checkpoint save", tmp)
        tmp.unlink(missing_ok=True)


def newest_readable(checkpoint_dir: Path) -> str | None:
    """The newest checkpoint in ``checkpoint_dir`` that can resume training; None when there is none at all.

    Unreadable ones are skipped with one warning naming them; when checkpoints exist but none is readable the
    run is refused (:class:`InputError`) rather than silently started afresh.
    """
    if not checkpoint_dir.is_dir():
        return None
    _remove_partial_saves(checkpoint_dir)
    candidates = sorted(checkpoint_dir.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"))
    bad: list[str] = []
    for path in reversed(candidates):
        problem = checkpoint_problem(path)
        if problem is None:
            if bad:
                log.warning("skipping %s; resuming from %s, the newest readable checkpoint", "; ".join(bad), path)
            else:
                log.info("resuming from %s", path)
            return str(path)
        bad.append(f"{path}: {problem}")
    if bad:
        fix = "move them away, or pass ckpt_path=null to start afresh (overwriting them)"
        raise InputError(str(checkpoint_dir), "ckpt_path=last", f"no readable checkpoint ({'; '.join(bad)})", fix)
    return None


def resume_path(ckpt_path: str | None, checkpoint_dir: Path) -> str | None:
    """Where ``trainer.fit`` resumes from: ``last``: :func:`newest_readable` in ``checkpoint_dir`` (None: a fresh
    run); None: a fresh run; else that file, refused with :class:`InputError` when it cannot resume training."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        return newest_readable(checkpoint_dir)
    problem = checkpoint_problem(Path(ckpt_path))
    if problem is not None:
        fix = "pass a checkpoint written by cellssl-train or cellssl-finetune, ckpt_path=last, or ckpt_path=null"
        raise InputError(str(ckpt_path), "ckpt_path", problem, fix)
    return str(ckpt_path)
