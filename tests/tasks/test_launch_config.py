"""SLURM launch configs: sweeps expand to the paper's grids, the launcher follows the trainer, run directories and
W&B run ids are stable across requeues, resume picks the newest checkpoint, and W&B never stops a run."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose
from omegaconf import OmegaConf

from cellssl.tasks import config_dir, slurm_job_tag
from cellssl.tracking.wandb_offline import read_offline_run

STORE = ["data.store_path=/tmp/store.zarr", "data.label_key=cell_type"]
CONF = Path(config_dir())
# every experiment that sweeps (hydra.sweeper.params); those named *finetune* are grids of cellssl-finetune (below)
SWEEPS = sorted(
    p.stem for p in (CONF / "experiment").glob("*.yaml") if OmegaConf.select(OmegaConf.load(p), "hydra.sweeper.params")
)
TRAIN_SWEEPS = [name for name in SWEEPS if "finetune" not in name]
# the paper's grids: jobs and one swept key
GRIDS = {
    "paper_sweep_masking_rate": (9, "model.masking.rate"),
    "paper_sweep_programme_masking_rate": (5, "model.masking.rate"),
    "paper_sweep_contrastive": (12, "model"),
    "paper_sweep_data_scaling": (18, "data.donor_fraction"),
}


def test_the_paper_grids_are_sweeps_of_the_train_app():
    assert set(GRIDS) <= set(TRAIN_SWEEPS) and "paper_sweep_finetune" in SWEEPS


@pytest.mark.parametrize("experiment", TRAIN_SWEEPS)
def test_paper_sweeps_expand_and_every_job_composes(hydra_conf, experiment):
    cfg = compose("train", overrides=[f"experiment={experiment}", *STORE], return_hydra_config=True)
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    jobs = [dict(zip(params, values, strict=True)) for values in itertools.product(*params.values())]
    if experiment in GRIDS:
        n_jobs, key = GRIDS[experiment]
        assert len(jobs) == n_jobs and key in params
    assert len(jobs) > 1
    for job in jobs:
        job_cfg = compose(
            "train", overrides=[f"experiment={experiment}", *STORE, *(f"{k}={v}" for k, v in job.items())]
        )
        model = OmegaConf.to_container(job_cfg.model, resolve=True)
        assert model["_target_"].startswith("cellssl.methods.")
    if experiment == "paper_sweep_data_scaling":
        assert params["data.donor_fraction"] == ["0.01", "0.0316", "0.1", "0.178", "0.316", "0.562"]
        assert params["seed"] == ["0", "1", "2"]
        assert job_cfg.data.donor_key == "donor_id"


def test_finetune_grid_expands_over_checkpoints_modes_and_seeds_and_launches_on_slurm(hydra_conf):
    grid = ["experiment=paper_sweep_finetune", "hydra/launcher=slurm", *STORE]
    cfg = compose("finetune", overrides=grid, return_hydra_config=True)
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    assert params == {"mode": ["full", "frozen", "linear_probe"], "seed": ["0", "1", "2", "3", "4"]}
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["tasks_per_node"] == 1 and launcher["gpus_per_node"] == 1 and launcher["partition"] == "debug"
    heads = set()
    for pretrained, mode, seed in itertools.product(["/ckpt/last.ckpt", "null"], params["mode"], params["seed"]):
        job = compose("finetune", overrides=[*grid, f"pretrained={pretrained}", f"mode={mode}", f"seed={seed}"])
        assert job.model._target_ == "cellssl.methods.FineTuneClassifier" and job.ckpt_path == "last"
        heads.add((job.pretrained, job.mode.name, OmegaConf.to_yaml(job.model.mode)))
    assert len(heads) == 6  # 2 starts x 3 modes, each its own recipe


def test_slurm_launcher_follows_the_trainer_and_the_cluster(hydra_conf):
    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=4"]
    cfg = compose("train", overrides=[*overrides, "cluster=example_site"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["tasks_per_node"] == 4 and launcher["gpus_per_node"] == 4 and launcher["nodes"] == 1
    assert launcher["partition"] == "gpu" and launcher["cpus_per_task"] == 8
    assert launcher["setup"][0] == "module load cuda/12.4"
    assert launcher["additional_parameters"] == {"signal": "USR1@300", "requeue": True}  # replaces submitit's USR2
    assert launcher["max_num_timeout"] == 0
    cpu = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp_cpu"], return_hydra_config=True)
    cpu_launcher = OmegaConf.to_container(cpu.hydra.launcher, resolve=True)
    assert cpu_launcher["tasks_per_node"] == 2 and cpu_launcher["gpus_per_node"] is None
    assert cpu_launcher["partition"] == "debug"  # cluster=local_slurm by default
    every_gpu = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp"], return_hydra_config=True)
    with pytest.raises(Exception, match=r"trainer.devices=-1 cannot size a SLURM job"):
        OmegaConf.to_container(every_gpu.hydra.launcher, resolve=True)


def test_slurm_job_tag_is_stable_across_requeues(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_STEP_ID", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert slurm_job_tag() is None
    monkeypatch.setenv("SLURM_JOB_ID", "812")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_JOB_NAME", "cellssl-train")
    assert slurm_job_tag() == "slurm-812"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "800")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "12")
    assert slurm_job_tag() == "slurm-800_12"
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # salloc: each srun its own directory
    assert slurm_job_tag() == "slurm-800_12.0"


@pytest.mark.slow
def test_unreachable_wandb_falls_back_to_an_offline_run_that_holds_its_config_before_finish(tmp_path):
    """The offline run W&B falls back to holds the config from its first record: read while the run is still
    running, and again after a kill -9 (no ``finish()``)."""
    script = f"""
import time
from pathlib import Path
from cellssl.tracking import ResilientWandbLogger
logger = ResilientWandbLogger(project="p", save_dir={str(tmp_path)!r}, offline=False, id="stable1")
logger.log_hyperparams({{"model": {{"lr": 0.5}}, "seed": 3}})  # before the run starts, as cellssl-train does
deadline = time.monotonic() + 120
row = {{f"train/loss_{{i}}": 1.5 for i in range(40)}}  # wide rows: W&B writes its log in 32 KiB blocks
for step in range(100_000):
    logger.log_metrics(row, step=step)
    (log,) = Path(logger.experiment.dir).parent.glob("*.wandb")
    if log.stat().st_size > 7 or time.monotonic() > deadline:  # W&B has written more than the file header
        break
    time.sleep(0.002)
print("RUN", log.parent, flush=True)  # offline-run-<time>-<run id>
time.sleep(600)
"""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    env.update(WANDB_API_KEY="a" * 40, WANDB_BASE_URL="http://127.0.0.1:9", WANDB_SILENT="true")  # a closed port
    child = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = child.stdout.readline().strip()
        assert line.startswith("RUN ") and line.endswith("-stable1"), child.stderr.read()[-3000:]
        run_dir = Path(line.removeprefix("RUN "))
        assert run_dir.name.startswith("offline-run-")
        running = read_offline_run(run_dir)
        assert running.config["model"] == {"lr": 0.5} and running.config["seed"] == 3 and not running.finished
    finally:
        child.kill()  # SIGKILL: no finish()
        _, stderr = child.communicate(timeout=60)
    killed = read_offline_run(run_dir)
    assert killed.run_id == "stable1" and killed.config["seed"] == 3 and not killed.finished
    assert "W&B unreachable" in stderr


def test_queue_launcher_submits_as_the_slurm_launcher_does(hydra_conf):
    """hydra/launcher=slurm_queue: the SLURM launcher's resources and requeue settings, its own class."""
    overrides = ["trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=4", "cluster=example_site"]
    queued, blocking = (
        OmegaConf.to_container(
            compose("train", overrides=[f"hydra/launcher={name}", *overrides], return_hydra_config=True).hydra.launcher,
            resolve=True,
        )
        for name in ("slurm_queue", "slurm")
    )
    assert queued.pop("_target_") == "hydra_plugins.cellssl_launcher.queue_launcher.QueueingSlurmLauncher"
    assert blocking.pop("_target_").endswith("SlurmLauncher")
    assert queued.pop("submitit_folder").endswith("/.submitit/%j") and blocking.pop("submitit_folder")  # own time
    assert queued == blocking and queued["additional_parameters"]["requeue"] is True


def test_hparams_search_optimizes_validation_knn_or_loss_and_stores_its_study(hydra_conf, tmp_path, monkeypatch):
    """hparams_search=mae_optuna: Optuna's sweeper, the validation kNN macro F1 maximised (labels) or the validation
    loss minimised (none), a study named after the search in an SQLite file beside the sweep directories."""
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.setenv("CELLSSL_LOG_DIR", str(tmp_path / "logs"))
    cfg = compose("train", overrides=["hparams_search=mae_optuna", *STORE], return_hydra_config=True)
    assert cfg.optimized_metric == "val/knn/encoder/macro_f1" and cfg.evaluation.validation_split == "val"
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.study_name == "mae_optuna" and set(sweeper.params) >= {"model.masking.rate", "model.optimizer.lr"}
    HydraConfig.instance().set_config(cfg)  # the sweep directory's ${now:} resolves as in a run
    sweep_dir = Path(cfg.hydra.sweep.dir)
    assert sweeper.storage == f"sqlite:///{sweep_dir.parent / 'optuna.db'}" and sweep_dir.parent.is_dir()
    unlabelled = compose("train", overrides=["hparams_search=mae_optuna", *STORE, "data.label_key=null"])
    assert unlabelled.optimized_metric == "val/loss"
    unlabelled = compose(
        "train", overrides=["hparams_search=mae_optuna", *STORE, "data.label_key=null"], return_hydra_config=True
    )
    assert unlabelled.hydra.sweeper.direction == "minimize"


def test_validation_knn_objective_without_its_score_is_refused_before_training(hydra_conf):
    from cellssl.store import InputError
    from cellssl.tasks.common import check_optimized_metric, optimized_value

    search = ["hparams_search=mae_optuna", *STORE]
    check_optimized_metric(compose("train", overrides=search))
    for bad in (
        "evaluation.enabled=false",
        "data.label_key=null optimized_metric=val/knn/encoder/macro_f1",
        "evaluation.validation_split=test",
    ):
        with pytest.raises(InputError, match="optimized_metric"):
            check_optimized_metric(compose("train", overrides=[*search, *bad.split()]))
    assert optimized_value({"val/loss": 2.5}, "val/loss") == 2.5 and optimized_value({}, "val/loss") is None
    with pytest.raises(KeyError, match="val/loss"):
        optimized_value({"train/loss": 1.0}, "val/loss")


def test_queue_launcher_refuses_a_search_before_it_starts(hydra_conf, capsys):
    """A search needs its trials' results: slurm_queue refuses the Optuna sweeper in one line, exit 2."""
    from hydra_plugins.cellssl_launcher.queue_launcher import QueueingSlurmLauncher

    cfg = compose(
        "train", overrides=["hparams_search=mae_optuna", "hydra/launcher=slurm_queue"], return_hydra_config=True
    )
    with pytest.raises(SystemExit) as exit_:
        QueueingSlurmLauncher().setup(hydra_context=None, task_function=None, config=cfg)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("error: config: hydra/launcher: slurm_queue does not wait for results")


@pytest.mark.parametrize("sweep_dir", ["null", "{tmp_path}"])
def test_status_without_a_queued_sweep_is_one_line(hydra_conf, capsys, tmp_path, sweep_dir):
    from cellssl.tasks.status import status

    with pytest.raises(SystemExit) as exit_:
        status(compose("status", overrides=[f"sweep_dir={sweep_dir.format(tmp_path=tmp_path)}"]))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "sweep" in err
