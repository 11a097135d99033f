"""Checkpoints of in-process training runs (debug trainer, real pbmc68k store): ``last.ckpt`` is the newest state
and the only ``last*``, a requeued run resumes from it, a corrupt one is skipped or refused, and SIGINT / an early
SIGUSR1 stop at a batch end (or before training) with nothing lost."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from cellssl import training
from cellssl.tasks import config_dir
from cellssl.tasks.finetune import finetune
from cellssl.tasks.train import train

pytestmark = pytest.mark.slow


class Left(BaseException):
    """Raised in place of ``os._exit``: the process would have exited with ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@pytest.fixture
def exits(monkeypatch):
    """``os._exit`` raises :class:`Left`; SLURM's variables are cleared (this is "outside SLURM")."""

    def fake_exit(code: int) -> None:
        raise Left(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)


def _cfg(name: str, run_dir: Path, store: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(name, overrides=["~logger", "trainer=debug", "trainer.enable_progress_bar=false", *overrides])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.root_dir, cfg.paths.output_dir = str(run_dir.parent), str(run_dir)
        cfg.data.store_path, cfg.data.prepare = str(store), None
    return cfg


def _train(run_dir: Path, store: Path, *overrides: str) -> dict:
    return train(_cfg("train", run_dir, store, "evaluation.enabled=false", *overrides))


def _step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


def _lasts(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("last*.ckpt"))


def _record_saves(monkeypatch) -> list[str]:
    """The paths :class:`AtomicCheckpointIO` writes from now on (every checkpoint save of a run goes through it)."""
    saved: list[str] = []
    save = training.AtomicCheckpointIO.save_checkpoint

    def recording_save(self, checkpoint, path, storage_options=None) -> None:
        saved.append(path)
        save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(training.AtomicCheckpointIO, "save_checkpoint", recording_save)
    return saved


def test_last_ckpt_is_the_newest_state_through_resumes_and_a_corrupt_one(pbmc_store, tmp_path, monkeypatch, caplog):
    saved = _record_saves(monkeypatch)
    run = tmp_path / "run"
    # 2 epochs x 3 steps, last.ckpt every 2 steps and at each epoch end, best val loss beside it
    assert _train(run, pbmc_store, "callbacks.last_checkpoint.every_n_train_steps=2")["trainer/global_step"] == 6
    assert _lasts(run) == ["last.ckpt"] and _step(run / "checkpoints" / "last.ckpt") == 6
    (best,) = (run / "checkpoints").glob("best-epoch*.ckpt")
    assert saved and all(Path(p).parent == run / "checkpoints" for p in saved)  # every save is atomic
    assert not list((run / "checkpoints").glob(".*"))  # no temporary file left
    # a requeued (re-run) job in the same directory resumes from last.ckpt, and last.ckpt follows it
    metrics = _train(run, pbmc_store, "trainer.max_epochs=3")
    assert metrics["trainer/global_step"] == 9 and len(metrics["train/loss_history"]) == 1  # one epoch more
    assert _lasts(run) == ["last.ckpt"] and _step(run / "checkpoints" / "last.ckpt") == 9
    # the newest checkpoint is cut short: the run resumes from the newest readable one, with one warning
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    (best,) = (run / "checkpoints").glob("best-epoch*.ckpt")
    best_step = _step(best)
    with caplog.at_level(logging.WARNING, logger="cellssl.training"):
        metrics = _train(run, pbmc_store, "trainer.max_epochs=4")
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "cellssl.training"]
    assert str(last) in warning and best.name in warning
    assert metrics["trainer/global_step"] == best_step + 3 * (4 - best_step // 3)  # resumed, not started afresh
    assert _step(last) == metrics["trainer/global_step"]  # and last.ckpt is whole and newest again


def test_unreadable_checkpoints_are_refused_with_one_line(pbmc_store, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    for overrides in ([], [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"]):
        with pytest.raises(SystemExit) as exit_info:
            _train(run, pbmc_store, *overrides)  # neither a crash nor a silent fresh start
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("error: ") and "\n" not in error and "last.ckpt" in error


def test_sigint_mid_epoch_checkpoints_at_the_batch_end_and_the_same_command_resumes(
    pbmc_store, tmp_path, exits, capsys
):
    run = tmp_path / "run"
    stop = ["+callbacks.stop._target_=helpers.callbacks.SignalAfterSteps", "+callbacks.stop.steps=2"]
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Left) as left:
        _train(run, pbmc_store, *stop, "+callbacks.stop.signal_name=SIGINT")
    assert left.value.code == 128 + signal.SIGINT
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2 and checkpoint["CellDataModule"]["train"]["batches_done"] == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("SIGINT")]
    assert str(run / "checkpoints" / "last.ckpt") in line and "same command" in line
    assert signal.getsignal(signal.SIGINT) is before  # the handler is the caller's again
    assert _train(run, pbmc_store)["trainer/global_step"] == 6  # resumed: the 4 steps left


def test_usr1_before_fit_requeues_without_a_checkpoint_instead_of_killing(pbmc_store, tmp_path, exits, monkeypatch):
    default_action: list[int] = []  # what the signal's default action would have done: kill the job
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: default_action.append(signum))
    calls: list[list[str]] = []
    monkeypatch.setattr(
        subprocess, "run", lambda args, **kw: (calls.append(args), subprocess.CompletedProcess(args, 0))[1]
    )
    monkeypatch.setenv("SLURM_JOB_ID", "812")
    run = tmp_path / "run"
    try:
        with pytest.raises(Left) as left:
            _train(run, pbmc_store, "+callbacks.early._target_=helpers.callbacks.SignalOnInit")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert left.value.code == 0 and not default_action
    assert calls == [["scontrol", "requeue", "812"]]
    assert not list(run.glob("checkpoints/*.ckpt"))  # nothing was trained: nothing to save, nothing lost


def test_finetune_checkpoints_atomically_and_refuses_a_corrupt_pretrained(
    checkpoints, pbmc_store, tmp_path, monkeypatch, capsys
):
    saved = _record_saves(monkeypatch)
    run = tmp_path / "finetune"
    labels = ["data.label_key=bulk_labels", "trainer.max_epochs=1"]
    finetune(_cfg("finetune", run, pbmc_store, f"pretrained={checkpoints['mae']}", *labels))
    assert saved and _lasts(run) == ["last.ckpt"]
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(checkpoints["mae"].read_bytes()[:5000])
    with pytest.raises(SystemExit) as exit_info:
        finetune(_cfg("finetune", tmp_path / "refused", pbmc_store, f"pretrained={corrupt}", *labels))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and str(corrupt) in error
