"""End-to-end runs of `cellssl-train` on the real pbmc68k data: learning, outputs, W&B, DDP."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cellssl.methods import MaskedAutoencoder, load_pretrained
from cellssl.tasks import config_dir
from cellssl.tracking.wandb_offline import offline_runs, read_offline_run
from helpers import with_tests_on_path

pytestmark = pytest.mark.slow
SYNC_SWEEP = Path(__file__).resolve().parents[2] / "scripts" / "wandb_sync_sweep.py"


def _sync_sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SYNC_SWEEP), *args], capture_output=True, text=True, timeout=120)


def test_pretraining_learns_and_beats_random_encoder(run_app, tmp_path):
    run_dir = tmp_path / "run"
    result = run_app("cellssl-train", "logger=csv", f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = metrics["train/loss_history"]
    assert len(history) == 40
    assert history[-1] < 0.75 * history[0]  # the loss falls
    assert metrics["knn/encoder/macro_f1"] > metrics["knn/random_encoder/macro_f1"] + 0.1
    assert metrics["reconstruction/encoder/weighted_ev"] > 0.1
    assert metrics["reconstruction/random_encoder/weighted_ev"] < 0.05
    assert "encoder (trained)" in result.stdout and "PCA (64 comps)" in result.stdout  # the printed table
    assert (run_dir / "config_resolved.yaml").is_file()
    assert (run_dir / "csv" / "metrics.csv").is_file()
    last = run_dir / "checkpoints" / "last.ckpt"
    model = load_pretrained(last)
    assert isinstance(model, MaskedAutoencoder) and model.masking.rate == 0.5
    assert model.encoder(torch.zeros(3, 765)).shape == (3, 64)


def test_each_job_of_a_multirun_is_its_own_wandb_run_holding_config_and_metrics(run_app, tmp_path):
    """One multirun of two jobs (one process) checks both what a W&B offline run holds and that each job gets its
    own; without any logger the same run trains."""
    sweep_dir = tmp_path / "sweep"
    run_app("cellssl-train", "-m", "seed=0,1", "trainer=debug", "tags=[test]", f"hydra.sweep.dir={sweep_dir}")
    runs = [read_offline_run(run) for job in ("0", "1") for run in offline_runs(sweep_dir / job / "wandb")]
    assert len(runs) == 2 and runs[0].run_id != runs[1].run_id
    assert [run.config["seed"] for run in runs] == [0, 1]  # each run holds its own job's config
    run = runs[0]
    assert run.project == "cellssl" and run.run_id
    assert run.config["model"]["masking"]["rate"] == 0.5  # the resolved config
    assert run.config["data"]["store_path"].endswith("pbmc68k.zarr") and run.config["tags"] == ["test"]
    logged = {key for row in run.history for key in row}
    assert {"train/loss_step", "val/loss", "knn/encoder/macro_f1"} <= logged
    assert "lr-AdamW" in logged  # the learning rate, per logged step
    # scripts/wandb_sync_sweep.py syncs the two runs at the same time; `wandb sync` needs the network and an
    # account, so a command that notes when it ran (start, end) stands in for it
    note = 'echo "$(date +%s.%N) $(sleep 1; date +%s.%N)" > "$1/ran"'
    synced = _sync_sweep(str(sweep_dir), "--jobs", "2", "--command", f"sh -c '{note}' sync")
    assert synced.returncode == 0 and synced.stdout.splitlines()[-1] == "2 synced, 0 failed", synced.stdout
    assert {line.split()[1] for line in synced.stdout.splitlines() if line.startswith("ok ")} == {
        r.run_id for r in runs
    }
    starts, ends = zip(*(map(float, p.read_text().split()) for p in sweep_dir.rglob("offline-run-*/ran")), strict=True)
    assert len(starts) == 2 and max(starts) < min(ends)  # the two ran at once
    (folder,) = offline_runs(sweep_dir / "0" / "wandb")
    (folder / f"run-{runs[0].run_id}.wandb.synced").touch()  # the marker wandb sync leaves
    listed = _sync_sweep(str(sweep_dir), "--dry-run").stdout.splitlines()
    assert listed[0].startswith("1 W&B run(s)") and listed[1].endswith(str(offline_runs(sweep_dir / "1" / "wandb")[0]))
    # without any logger the same run trains (the learning-rate callback stays silent)
    run_app("cellssl-train", f"hydra.run.dir={tmp_path / 'quiet'}", "trainer=debug", "~logger")
    assert (tmp_path / "quiet" / "metrics.json").is_file() and not (tmp_path / "quiet" / "wandb").exists()


def test_ddp_two_cpu_processes_see_disjoint_cells(run_app, tmp_path):
    run_dir = tmp_path / "run"
    run_app(
        "cellssl-train",
        "trainer=ddp_cpu",
        "callbacks=audit",
        f"hydra.run.dir={run_dir}",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "callbacks.online_evaluation.max_overhead=null",
    )
    ids = Path(run_dir / "cell_ids")
    for epoch in range(2):
        rank0, rank1 = (np.load(next(ids.glob(f"rank{r}_epoch{epoch}_from*.npy"))) for r in range(2))
        assert len(rank0) and len(rank1)
        assert not set(rank0) & set(rank1)
        assert np.array_equal(np.sort(np.concatenate([rank0, rank1])), np.arange(490))  # each train cell once
    epoch0 = np.load(next(ids.glob("rank0_epoch0_from*.npy")))
    assert not np.array_equal(epoch0, np.load(next(ids.glob("rank0_epoch1_from*.npy"))))  # reshuffled per epoch
    (wandb_run,) = offline_runs(run_dir / "wandb")  # one W&B run for the whole DDP training
    # the online evaluation ran on rank 0 while rank 1 waited at the next all-reduce: at the start, each epoch end
    online = [row["trainer/global_step"] for row in read_offline_run(wandb_run).history if "online/knn_macro_f1" in row]
    assert online == [0, 8, 16]  # 490 cells / 2 ranks / 32 a batch: 8 steps an epoch
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["knn/encoder/macro_f1"] >= 0


def _records(run_dir: Path, epoch: int, rank: int) -> dict[int, np.ndarray]:
    """The cell ids ``rank`` trained on in ``epoch``, by the global step each run's record starts at."""
    files = (run_dir / "cell_ids").glob(f"rank{rank}_epoch{epoch}_from*.npy")
    return {int(p.stem.split("from")[1]): np.load(p) for p in files}


def _fresh_epoch(store: Path, epoch: int, rank: int, world_size: int) -> list[np.ndarray]:
    """The batches (cell ids) a fresh run on ``world_size`` ranks trains ``rank`` on in ``epoch`` (the data module
    of the default data config, as the runs compose it)."""
    datamodule = instantiate(compose("train", [f"data.store_path={store}"]).data)
    strategy = SimpleNamespace(root_device=torch.device("cpu"))
    datamodule.trainer = SimpleNamespace(
        current_epoch=epoch, global_rank=rank, world_size=world_size, training=False, strategy=strategy
    )
    datamodule.setup("fit")
    return [batch["cell_id"].numpy() for batch in datamodule.train_dataloader()]


def test_resume_mid_epoch_on_another_number_of_ranks_sees_each_cell_once(run_app, tmp_path, pbmc_store, hydra_conf):
    """One rank: checkpoint at step 5 of 16, crash at step 7. Resumed on 2 ranks (trainer=ddp_cpu): steps 6-7 are
    redone, the 337 cells epoch 0 had left are re-dealt (6 steps a rank), epoch 1 is a fresh 2-rank epoch; SIGTERM
    at step 15 (mid-epoch 1): checkpoint at that batch end, exit 143. Resumed on 1 rank: the 245 cells left are
    re-dealt (8 steps), epoch 2 is a fresh 1-rank epoch. Each train cell once per epoch, no step lost (with a
    schedule that needs the run's length, Lightning reads the resumed epoch's length early: it must be the
    re-dealt one). The W&B history (one offline folder per segment) logs the signal's step and continues across
    the segments; the sync script hands a run's segments to one `wandb sync`."""
    run_dir = tmp_path / "run"
    common = [
        f"data.store_path={pbmc_store}",
        "callbacks=audit",
        f"hydra.run.dir={run_dir}",
        "evaluation.enabled=false",
        "trainer.max_epochs=3",
        "callbacks.last_checkpoint.every_n_train_steps=5",
        "callbacks.requeue_on_signal.ddp_check_every=1",
        "model/scheduler=cosine",  # asks for the epoch's length before Lightning restores its loops
        "trainer.enable_progress_bar=false",
    ]
    crashed = run_app(
        "cellssl-train",
        *common,
        "+callbacks.crash._target_=helpers.callbacks.CrashAfterSteps",
        "+callbacks.crash.steps=7",
        check=False,
    )
    assert crashed.returncode == 3
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)["CellDataModule"]["train"]
    assert state["epoch"] == 0 and state["batches_done"] == 5
    assert [(s["world_size"], s["batches"]) for s in state["segments"]] == [(1, 5)]
    stopped = run_app(
        "cellssl-train",
        *common,
        "trainer=ddp_cpu",
        f"ckpt_path={checkpoint}",
        "+callbacks.stop._target_=helpers.callbacks.SignalAfterSteps",
        "+callbacks.stop.steps=15",
        "+callbacks.stop.signal_name=SIGTERM",
        check=False,
    )
    assert stopped.returncode == 143, stopped.stderr[-3000:]  # 128 + SIGTERM: stopped, resumable
    (line,) = [line for line in stopped.stderr.splitlines() if line.startswith("SIGTERM: stopped")]
    assert str(checkpoint) in line and "same command" in line
    state = torch.load(checkpoint, weights_only=True)["CellDataModule"]["train"]
    assert state["epoch"] == 1 and state["batches_done"] == 4  # the signal's batch end: nothing lost
    assert [(s["world_size"], s["batches"]) for s in state["segments"]] == [(2, 4)]
    assert sorted(p.name for p in checkpoint.parent.glob("last*.ckpt")) == ["last.ckpt"]
    run_app("cellssl-train", *common)  # the same command on one rank: ckpt_path: last
    assert json.loads((run_dir / "metrics.json").read_text())["trainer/global_step"] == 5 + 6 + 4 + 8 + 16
    epoch0 = [_records(run_dir, 0, 0), _records(run_dir, 0, 1)]
    assert [{k: len(v) for k, v in r.items()} for r in epoch0] == [{0: 153, 5: 168}, {5: 169}]
    epoch1 = [_records(run_dir, 1, 0), _records(run_dir, 1, 1)]
    assert [sorted(r) for r in epoch1] == [[11, 15], [11]] and len(epoch1[0][15]) == 245
    for records in (epoch0, epoch1):
        cells = np.concatenate([ids for rank in records for ids in rank.values()])
        assert np.array_equal(np.sort(cells), np.arange(490))  # each train cell once
    for rank in range(2):  # the 2-rank epoch after the re-dealt one is a fresh 2-rank run's (its first 4 steps)
        assert np.array_equal(epoch1[rank][11], np.concatenate(_fresh_epoch(pbmc_store, 1, rank, 2)[:4]))
    (epoch2,) = _records(run_dir, 2, 0).values()  # and the 1-rank one a fresh 1-rank run's
    assert np.array_equal(epoch2, np.concatenate(_fresh_epoch(pbmc_store, 2, 0, 1)))
    folders = offline_runs(run_dir / "wandb")
    assert len({p.name.rsplit("-", 1)[1] for p in folders}) == 1  # one W&B run id
    crashed, stopped, resumed = segments = [read_offline_run(p) for p in folders]
    assert not crashed.finished and stopped.finished and resumed.finished  # the kill left no exit record
    (cut,) = [row for s in segments for row in s.history if "preemption/step" in row]
    assert cut["preemption/step"] == cut["trainer/global_step"] == 15 and cut["preemption/signal"] == 15  # SIGTERM
    assert cut is stopped.history[-1]
    rows = [[row["_step"] for row in s.history] for s in segments]  # the crashed one: what W&B wrote before the kill
    for i, resumed_from in ((1, 5), (2, 15)):  # each resumed segment continues _step and trainer/global_step
        earlier = [step for segment_rows in rows[:i] for step in segment_rows]
        assert rows[i] == list(range(max(earlier, default=-1) + 1, max(earlier, default=-1) + 1 + len(rows[i])))
        # (training rows: Lightning's ThroughputMonitor logs validation throughput at the validation batch count)
        trained = [row["trainer/global_step"] for row in segments[i].history if "lr-AdamW" in row]
        assert min(trained) >= resumed_from  # not from 0
    assert max(trained) > 15  # and went on past the cut
    listed = _sync_sweep(str(run_dir), "--dry-run").stdout.splitlines()
    assert listed == ["1 W&B run(s) to sync below " + str(run_dir), shlex.join(["wandb", "sync", *map(str, folders)])]
    failed = _sync_sweep(str(run_dir), "--command", "false")
    assert failed.returncode == 1 and failed.stdout.splitlines()[1].startswith("FAILED "), failed.stdout


# every model config but the default (mae, whose DDP run through the console script is tested above)
METHODS = sorted(p.stem for p in (Path(config_dir()) / "model").glob("*.yaml") if p.stem != "mae")


@pytest.fixture(scope="module")
def ddp_methods(pbmc_store, tmp_path_factory) -> Path:
    """One real 2-process DDP launch (gloo) that trains every method in turn, one epoch each (helpers/train_methods.py):
    the train task with a fresh data module, model and Trainer per method, in the ranks and process group the
    first Trainer started. One launch instead of one per method saves the ranks' start-up (~10 s a method); the
    console app's own DDP launch (Hydra re-running the command for rank 1) is tested end to end above."""
    root = tmp_path_factory.mktemp("ddp_methods")
    overrides = [
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "evaluation.enabled=false",
        "logger=csv",
        "callbacks=audit",
        "trainer.enable_progress_bar=false",
    ]
    command = [sys.executable, "-m", "helpers.train_methods", str(root), str(pbmc_store), *METHODS, "--", *overrides]
    env = with_tests_on_path({**os.environ, "CELLSSL_LOG_DIR": str(root / "logs")})
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return root


@pytest.mark.parametrize("model", METHODS)
def test_every_method_runs_one_ddp_epoch_on_two_cpu_processes(ddp_methods, hydra_conf, model):
    run_dir = ddp_methods / model
    rank0, rank1 = (np.load(next((run_dir / "cell_ids").glob(f"rank{r}_epoch0_from*.npy"))) for r in range(2))
    assert len(rank0) and len(rank1) and not set(rank0) & set(rank1)
    assert np.array_equal(np.sort(np.concatenate([rank0, rank1])), np.arange(490))  # each train cell once
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["train/loss_history"]) == 1 and np.isfinite(metrics["train/loss_history"][0])
    assert metrics["trainer/global_step"] == 8  # 490 cells / 2 ranks / 32 a batch
    rebuilt = load_pretrained(run_dir / "checkpoints" / "last.ckpt")
    assert rebuilt.model_config["_target_"].endswith(type(rebuilt).__name__)
    # this run trained its own method (the runs share one process): the composed model config, as trained
    assert rebuilt.model_config == OmegaConf.to_container(compose("train", [f"model={model}"]).model, resolve=True)
