"""Which checkpoint a run resumes from, what counts as readable, and atomic checkpoint writes (a kill mid-save)."""

from __future__ import annotations

import io
import logging
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from cellssl.store import InputError
from cellssl.training import AtomicCheckpointIO, checkpoint_problem, resume_path


def _checkpoint(step: int) -> dict:
    """The keys a resumable Lightning checkpoint has, with a tensor big enough to cut in half."""
    weights = {"encoder.weight": torch.full((256, 256), float(step))}
    return {"state_dict": weights, "optimizer_states": [], "loops": {}, "pytorch-lightning_version": "2", "step": step}


def _write(path: Path, step: int, mtime_offset: float = 0.0) -> Path:
    AtomicCheckpointIO().save_checkpoint(_checkpoint(step), path)
    os.utime(path, (time.time() + mtime_offset, time.time() + mtime_offset))
    return path


def test_resume_path_takes_the_newest_readable_checkpoint(tmp_path, caplog):
    checkpoints = tmp_path / "checkpoints"
    assert resume_path("last", checkpoints) is None  # nothing yet: a fresh run
    for i, name in enumerate(["best-epoch000.ckpt", "step00000009.ckpt", "last.ckpt"]):
        _write(checkpoints / name, step=i, mtime_offset=i)
    assert resume_path("last", checkpoints) == str(checkpoints / "last.ckpt")
    assert resume_path(None, checkpoints) is None
    assert resume_path(str(checkpoints / "best-epoch000.ckpt"), checkpoints) == str(checkpoints / "best-epoch000.ckpt")
    # the newest is cut short (a disk filled up, a copy interrupted): the next one, with one warning naming it
    data = (checkpoints / "last.ckpt").read_bytes()
    (checkpoints / "last.ckpt").write_bytes(data[: len(data) // 2])
    os.utime(checkpoints / "last.ckpt", (time.time() + 10, time.time() + 10))
    with caplog.at_level(logging.WARNING, logger="cellssl.training"):
        assert resume_path("last", checkpoints) == str(checkpoints / "step00000009.ckpt")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(checkpoints / "last.ckpt") in warning and "step00000009.ckpt" in warning


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "unreadable"),
        (b"PK\x03\x04 truncated zip", "unreadable"),
        ("weights only", "not a full Lightning training checkpoint"),
        ("flipped byte", "corrupt"),
    ],
)
def test_unreadable_checkpoints_are_refused_in_one_line(tmp_path, content, problem):
    path = tmp_path / "checkpoints" / "last.ckpt"
    _write(path, step=1)
    if content == "weights only":
        torch.save({"state_dict": _checkpoint(1)["state_dict"]}, path)  # a foreign file: no optimiser, no loops
    elif content == "flipped byte":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # inside the tensor's bytes: only the CRC tells
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(content)
    assert problem in checkpoint_problem(path)
    with pytest.raises(InputError, match=problem) as explicit:
        resume_path(str(path), tmp_path / "checkpoints")  # ckpt_path=<file>: that file or nothing
    assert str(path) in str(explicit.value) and "\n" not in str(explicit.value)
    with pytest.raises(InputError, match="no readable checkpoint") as last:
        resume_path("last", tmp_path / "checkpoints")  # never a silent fresh start over a run's checkpoints
    assert str(path) in str(last.value) and "ckpt_path=null" in str(last.value) and "\n" not in str(last.value)
    with pytest.raises(InputError, match="no such file"):
        resume_path(str(tmp_path / "missing.ckpt"), tmp_path / "checkpoints")


def _die_half_way(path: Path, checkpoint: dict, data: bytes) -> None:
    """In a forked child: save ``checkpoint`` through AtomicCheckpointIO and be SIGKILLed with half of its bytes
    (``data``) written. Both are made before the fork: torch ops in a forked child of a threaded process hang."""
    signal.alarm(30)  # a safety net: never leave a child behind

    def dying_save(obj, file) -> None:
        file.write(data[: len(data) // 2])
        file.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = dying_save
    try:
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    finally:
        os._exit(1)  # not reached: the kill comes first


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_whole(tmp_path):
    path = _write(tmp_path / "checkpoints" / "last.ckpt", step=1)
    checkpoint, buffer = _checkpoint(2), io.BytesIO()
    torch.save(checkpoint, buffer)
    pid = os.fork()
    if pid == 0:
        _die_half_way(path, checkpoint, buffer.getvalue())
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    (partial,) = path.parent.glob(".last.ckpt.tmp-*")  # the cut-short save went to its own file
    assert partial.stat().st_size > 0
    assert checkpoint_problem(path) is None
    assert torch.load(path, weights_only=True)["step"] == 1  # the previous state, whole: nothing lost
    assert resume_path("last", path.parent) == str(path)
    assert not partial.exists()  # the remains are cleared when the next run looks for its checkpoint
