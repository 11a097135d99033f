"""cellssl-train on a real SLURM: a sweep as one job array, a 2-task DDP job, and preemption with exact resume.

Needs a SLURM controller that answers (`bash scripts/slurm_local.sh` starts a one-node one as root); skipped
otherwise, unless CELLSSL_REQUIRE_SLURM=1 (set by .ci/run after starting SLURM), which turns that into a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cellssl.tracking.wandb_offline import offline_runs, read_offline_run
from helpers import with_tests_on_path

ROOT = Path(__file__).resolve().parents[2]


def _slurm_unavailable() -> str | None:
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH: SLURM is not installed (bash scripts/slurm_local.sh sets up a one-node SLURM)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sinfo failed ({err}): no SLURM controller answers"
    if out.returncode != 0 or not re.search(r"idle|mixed|alloc", out.stdout):
        return f"no usable SLURM node (sinfo: {(out.stdout + out.stderr).strip()[:200]})"
    return None


_REASON = _slurm_unavailable()
if _REASON and os.environ.get("CELLSSL_REQUIRE_SLURM") == "1":
    raise RuntimeError(f"CELLSSL_REQUIRE_SLURM=1 but {_REASON}")
# one xdist worker runs the SLURM tests one after another: the local SLURM is one small node
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.xdist_group("slurm"),
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]


@pytest.fixture
def slurm_env(tmp_path, pbmc_store) -> dict[str, str]:
    """Environment of the submitting process; sbatch passes it on to the jobs (``--export=ALL``, its default), so
    they import the test helpers from ``tests/`` on their ``PYTHONPATH`` (``helpers.callbacks.Throttle``)."""
    return with_tests_on_path(
        {
            **os.environ,
            "CELLSSL_DATA_DIR": str(tmp_path / "data"),
            "CELLSSL_LOG_DIR": str(tmp_path / "logs"),
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )


def _app(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _job_state(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def _wait_for_job(job: str, timeout: float) -> dict[str, str]:
    """The job's state once it has ended, polled every 0.2 s (``sbatch --wait`` polls after 2, 8 and 32 s: a
    15 s job would be waited on for 42 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _job_state(job)
        if state.get("JobState") not in (None, "PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            return state
        time.sleep(0.2)
    subprocess.run(["scancel", job])
    return _job_state(job)


def _records(run_dir: Path, epoch: int, rank: int = 0) -> list[np.ndarray]:
    files = (run_dir / "cell_ids").glob(f"rank{rank}_epoch{epoch}_from*.npy")
    return [np.load(f) for f in sorted(files, key=lambda p: int(p.stem.split("from")[1]))]


def _fail(message: str, *logs: Path) -> None:
    text = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in logs if p.is_file())
    pytest.fail(f"{message}\n{text}")


def _submit_sweep(app: str, tmp_path: Path, env: dict[str, str], *overrides: str) -> Path:
    """Run a multirun of ``app`` on the SLURM launcher; the sweep's directory after all its jobs finished."""
    result = subprocess.run(
        [_app(app), "-m", "hydra/launcher=slurm", *overrides],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (experiment,) = (tmp_path / "logs" / app.removeprefix("cellssl-") / "multiruns").iterdir()
    (sweep,) = experiment.iterdir()
    return sweep


SMALL = [
    "trainer=debug",
    "trainer.limit_train_batches=null",
    "trainer.limit_val_batches=2",
    "evaluation.enabled=false",
    "trainer.enable_progress_bar=false",
]


def test_sweep_runs_as_one_job_array(tmp_path, slurm_env, pbmc_store):
    sweep = _submit_sweep(
        "cellssl-train",
        tmp_path,
        slurm_env,
        f"data.store_path={pbmc_store}",
        "logger=csv",
        *SMALL,
        "trainer.max_epochs=1",
        "model.masking.rate=0.25,0.75",
    )
    (script,) = (sweep / ".submitit").glob(".submission_file_*.sh")
    assert "#SBATCH --array=0-1%" in script.read_text()  # one sbatch: a job array of two tasks
    assert "#SBATCH --signal=USR1@" in script.read_text() and "USR2" not in script.read_text()
    array_ids = {p.name.split("_")[0] for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d", p.name)}
    assert len(array_ids) == 1
    for job, rate in ((0, 0.25), (1, 0.75)):
        run = sweep / str(job)
        metrics = json.loads((run / "metrics.json").read_text())
        assert len(metrics["train/loss_history"]) == 1 and np.isfinite(metrics["train/loss_history"][0])
        assert f"rate: {rate}" in (run / "config_resolved.yaml").read_text()


def test_finetune_grid_runs_as_one_job_array_from_a_checkpoint(tmp_path, slurm_env, pbmc_store):
    """experiment=paper_sweep_finetune on SLURM: checkpoint and random init x a mode, as documented."""
    pretrain = tmp_path / "pretrain"
    subprocess.run(
        [_app("cellssl-train"), f"data.store_path={pbmc_store}", "logger=csv", *SMALL, f"hydra.run.dir={pretrain}"],
        cwd=tmp_path, env=slurm_env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    store = [f"data.store_path={pbmc_store}", "data.label_key=bulk_labels", "data.batch_size=64"]
    sweep = _submit_sweep(
        "cellssl-finetune",
        tmp_path,
        slurm_env,
        "experiment=paper_sweep_finetune",
        f"pretrained={pretrain / 'checkpoints' / 'last.ckpt'},null",
        *store,
        "trainer=cpu",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "mode=linear_probe",
        "seed=0",
        "logger=csv",
    )
    (script,) = (sweep / ".submitit").glob(".submission_file_*.sh")
    assert "#SBATCH --array=0-1%" in script.read_text()
    runs = [json.loads((sweep / str(job) / "metrics.json").read_text())["run"] for job in (0, 1)]
    assert [r["pretrained"] is not None for r in runs] == [True, False]
    assert {r["mode"] for r in runs} == {"linear_probe"} and {r["seed"] for r in runs} == {0}


def test_two_task_ddp_job_from_the_sbatch_template(tmp_path, slurm_env, pbmc_store):
    env = {**slurm_env, "CELLSSL_VENV": str(Path(sys.executable).parents[1]), "CELLSSL_ACCELERATOR": "cpu"}
    # the template's GPU/CPU/memory requests are for a GPU node; this node has 2 CPUs and no GPU
    resources = ["--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--mem=4G"]
    args = [f"data.store_path={pbmc_store}", "logger=csv", "callbacks=audit", *SMALL, "trainer.max_epochs=1"]
    template = str(ROOT / "slurm" / "single_node.sbatch")
    submitted = subprocess.run(
        ["sbatch", "--parsable", *resources, f"--output={tmp_path}/slurm-%j.out", template, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    state = _wait_for_job(job, timeout=400)
    if state.get("JobState") != "COMPLETED" or state.get("ExitCode") != "0:0":
        _fail(f"job {job} ended {state.get('JobState')} (exit {state.get('ExitCode')})", tmp_path / f"slurm-{job}.out")
    run = tmp_path / "logs" / "train" / "runs" / "default" / f"slurm-{job}"
    rank0, rank1 = _records(run, 0, rank=0)[0], _records(run, 0, rank=1)[0]
    assert len(rank0) and len(rank1) and not set(rank0) & set(rank1)
    assert np.array_equal(np.sort(np.concatenate([rank0, rank1])), np.arange(490))  # each train cell once
    assert json.loads((run / "metrics.json").read_text())["trainer/global_step"] == 8  # 490 cells / 2 ranks / 32


def test_signalled_job_is_requeued_and_resumes_exactly(tmp_path, slurm_env, pbmc_store):
    """SIGUSR1 mid-epoch -> checkpoint + requeue -> same directory, same W&B run, each cell once per epoch."""
    launcher = subprocess.Popen(
        [
            _app("cellssl-train"),
            "-m",
            "hydra/launcher=slurm",
            f"data.store_path={pbmc_store}",
            "callbacks=audit",
            *SMALL,
            "trainer.max_epochs=2",
            "callbacks.last_checkpoint.every_n_train_steps=3",
            "+callbacks.throttle._target_=helpers.callbacks.Throttle",
            "+callbacks.throttle.seconds=0.4",
            "+callbacks.throttle.first_run_only=true",  # the resumed run at full speed
        ],
        cwd=tmp_path,
        env=slurm_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    job = None
    try:
        sweep_root = tmp_path / "logs" / "train" / "multiruns" / "default"
        deadline = time.monotonic() + 240
        steps = []
        while not steps and time.monotonic() < deadline and launcher.poll() is None:
            time.sleep(0.2)
            steps = list(sweep_root.glob("*/0/checkpoints/last.ckpt"))  # the first is step 3's, mid-epoch 0
        assert steps, "no mid-epoch checkpoint appeared"
        sweep = steps[0].parents[2]
        # a one-point sweep is a plain job (.submitit/<id>), several points an array (.submitit/<id>_<task>)
        (job,) = [p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+(_0)?", p.name)]
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        # SLURM holds a requeued job for ~2 minutes (BeginTime); release it once it is back in the queue and
        # its first run has finished completing (squeue's state: PENDING, not COMPLETING)
        while time.monotonic() < deadline:
            queued = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
            if _job_state(job).get("Restarts") == "1" and queued.strip() == "PENDING":
                # slurmd refuses a launch credential issued in the same second the old one was revoked
                time.sleep(2)
                subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True)
                break
            time.sleep(0.2)
        else:
            _fail("the job was not requeued", *(sweep / ".submitit" / job).glob("*_log.*"))
        output, _ = launcher.communicate(timeout=200)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            if job is not None:
                subprocess.run(["scancel", job])
    assert launcher.returncode == 0, output[-5000:]
    assert sorted(p.name for p in sweep.iterdir() if not p.name.startswith(".")) == ["0", "multirun.yaml"]
    run = sweep / "0"
    assert json.loads((run / "metrics.json").read_text())["trainer/global_step"] == 32  # 2 epochs x 16 batches
    # epoch 0 was cut by the signal: two records (before and after the requeue), together each cell once
    first, resumed = _records(run, 0)
    assert 0 < len(first) < 490 and len(first) + len(resumed) == 490
    assert np.array_equal(np.sort(np.concatenate([first, resumed])), np.arange(490))
    (epoch1,) = _records(run, 1)
    assert np.array_equal(np.sort(epoch1), np.arange(490))
    # one W&B run: each segment wrote an offline folder, all with the same run id
    runs = [read_offline_run(p) for p in offline_runs(run / "wandb")]
    assert len(runs) == 2 and len({r.run_id for r in runs}) == 1
    logged = {key for r in runs for row in r.history for key in row}
    assert {"train/loss_step", "train/device/samples_per_sec"} <= logged  # cells/s (one device here)
    # the history across the requeue: the cut segment's last row is the signal's step, the resumed segment
    # continues _step after it and trainer/global_step from that checkpoint (neither restarts at 0)
    cut_segment, resumed = runs
    cut = cut_segment.history[-1]
    assert cut["preemption/signal"] == signal.SIGUSR1 and cut["preemption/step"] == cut["trainer/global_step"] > 0
    rows = [row["_step"] for row in resumed.history]
    assert rows == list(range(cut["_step"] + 1, cut["_step"] + 1 + len(rows)))
    trained = [row["trainer/global_step"] for row in resumed.history if "lr-AdamW" in row]
    assert cut["preemption/step"] <= min(trained) and max(trained) > cut["preemption/step"]
