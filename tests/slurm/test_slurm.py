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


def _submit_template(tmp_path: Path, env: dict[str, str], tasks: int, *args: str) -> str:
    """``sbatch`` the single-node template with ``tasks`` CPU tasks (this node has 2 CPUs and no GPU); the job id."""
    env = {**env, "CELLSSL_VENV": str(Path(sys.executable).parents[1]), "CELLSSL_ACCELERATOR": "cpu"}
    resources = [f"--ntasks-per-node={tasks}", "--gpus-per-node=0", "--cpus-per-task=1", "--mem=4G"]
    template = str(ROOT / "slurm" / "single_node.sbatch")
    submitted = subprocess.run(
        ["sbatch", "--parsable", *resources, f"--output={tmp_path}/slurm-%j.out", template, *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip().split(";")[0]


def test_requeued_job_resubmitted_on_one_task_sees_each_cell_once(tmp_path, slurm_env, pbmc_store):
    """A 2-task DDP job (the sbatch template) signalled mid-epoch checkpoints and requeues itself; the requeued job
    is replaced by a resubmission asking for one task, in the same run directory: it re-deals what epoch 0 had
    left to its one rank (each cell once in the epoch, no step lost), and epoch 1 is a whole 1-rank epoch."""
    run = tmp_path / "run"
    args = [
        f"data.store_path={pbmc_store}",
        "logger=csv",
        "callbacks=audit",
        f"hydra.run.dir={run}",
        *SMALL,
        "trainer.max_epochs=2",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "callbacks.requeue_on_signal.ddp_check_every=1",
    ]
    throttled = ["+callbacks.throttle._target_=helpers.callbacks.Throttle", "+callbacks.throttle.seconds=0.4"]
    job = _submit_template(tmp_path, slurm_env, 2, *args, *throttled)
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / "last.ckpt").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)  # the first is step 2's, mid-epoch 0 (8 steps a rank)
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        while _job_state(job).get("Restarts") != "1" and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        subprocess.run(["scancel", job], capture_output=True)  # the requeued job gives way to the resubmission
    if _job_state(job).get("Restarts") != "1":
        _fail("the job was not requeued", tmp_path / f"slurm-{job}.out")
    while _job_state(job).get("JobState") not in ("CANCELLED", None) and time.monotonic() < deadline:
        time.sleep(0.2)
    resubmitted = _submit_template(tmp_path, slurm_env, 1, *args)
    state = _wait_for_job(resubmitted, timeout=300)
    if state.get("JobState") != "COMPLETED" or state.get("ExitCode") != "0:0":
        _fail(f"job {resubmitted} ended {state.get('JobState')}", *tmp_path.glob("slurm-*.out"))
    (first0,), (first1,) = _records(run, 0, rank=0)[:1], _records(run, 0, rank=1)
    (resumed,) = _records(run, 0, rank=0)[1:]
    signalled_at = len(first0) // 30  # steps of ~30.6 cells a rank before the signal
    assert signalled_at >= 2 and len(first1) // 30 == signalled_at and len(resumed) == 490 - len(first0) - len(first1)
    assert np.array_equal(np.sort(np.concatenate([first0, first1, resumed])), np.arange(490))  # each cell once
    (epoch1,) = _records(run, 1)
    assert np.array_equal(np.sort(epoch1), np.arange(490)) and not _records(run, 1, rank=1)  # one rank
    steps = json.loads((run / "metrics.json").read_text())["trainer/global_step"]
    assert steps == signalled_at + -(-len(resumed) // 32) + 16  # re-dealt in batches of <= 32, then 16 of ~30.6


def _wait_for_states(sweep: Path, timeout: float) -> tuple[list, set[str]]:
    """Poll the sweep's jobs (as ``cellssl-status`` sees them) until none is queued or running; the final states
    and every state seen on the way."""
    from cellssl.sweeps import job_states

    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = job_states(sweep)
        seen |= {s.state for s in states}
        if not {"queued", "running"} & {s.state for s in states}:
            return states, seen
        time.sleep(0.5)
    pytest.fail(f"jobs still unfinished after {timeout} s: {[(s.num, s.state) for s in states]}")


def test_queued_sweep_returns_at_once_and_status_and_report_follow_its_jobs(tmp_path, slurm_env, pbmc_store):
    """hydra/launcher=slurm_queue: the command returns with the jobs still queued; the manifest names them;
    cellssl-status sees them run and end: done, failed by an exception (its message and log lines), and failed
    without a result (cancelled while queued: SLURM's word on it); cellssl-report reports the done one and counts
    the others. Three jobs on the two-CPU node: the third waits, and is cancelled before it starts."""
    import pandas as pd

    from cellssl.sweeps import job_states, read_manifest

    result = subprocess.run(
        [sys.executable, "-m", "cellssl.tasks.train", "-m", "hydra/launcher=slurm_queue", "logger=csv", *SMALL,
         "evaluation.enabled=true", "evaluation.baselines=[]", "evaluation.reconstruction=false",
         f"data.store_path={pbmc_store}", "trainer.max_epochs=1,-7,2"],
        cwd=tmp_path, env=slurm_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns" / "default").iterdir()
    assert f"manifest: {sweep / 'manifest.json'}" in result.stdout
    assert f"cellssl-status sweep_dir={sweep}" in result.stdout
    jobs = read_manifest(sweep)["jobs"]
    assert [job["run_dir"] for job in jobs] == ["0", "1", "2"]
    assert len({job["job_id"].split("_")[0] for job in jobs}) == 1  # one array
    assert "trainer.max_epochs=-7" in jobs[1]["overrides"] and f"data.store_path={pbmc_store}" in jobs[1]["overrides"]
    states = job_states(sweep)
    assert {s.state for s in states[:2]} <= {"queued", "running"}  # returned before any job ended
    assert states[2].state == "queued"  # the node's two CPUs are taken
    subprocess.run(["scancel", jobs[2]["job_id"]], check=True)

    states, seen = _wait_for_states(sweep, timeout=300)
    assert "running" in seen
    assert [s.state for s in states] == ["done", "failed", "failed"]
    assert (sweep / "0" / "metrics.json").is_file()
    assert "MisconfigurationException" in states[1].detail and "max_epochs" in states[1].detail  # the exception
    assert any("You passed in -7" in line for line in states[1].log_tail)  # the job's stderr: its traceback
    assert states[2].detail.startswith("CANCELLED")  # ended without a result: SLURM's word on it

    # the two console apps as a user runs them, later, from another shell
    app = {"cwd": tmp_path, "env": slurm_env, "capture_output": True, "text": True, "timeout": 120}
    shown = subprocess.run([sys.executable, "-m", "cellssl.tasks.status", f"sweep_dir={sweep}"], **app)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "3 jobs: 1 done, 2 failed" in shown.stdout and "job 2 (" in shown.stdout and "CANCELLED" in shown.stdout
    report_dir = tmp_path / "report"
    reported = subprocess.run(
        [sys.executable, "-m", "cellssl.tasks.report", f"multirun_dir={sweep}", f"paths.output_dir={report_dir}"], **app
    )
    assert reported.returncode == 0, reported.stderr[-3000:]
    assert f"{sweep}: 3 jobs: 1 done, 2 failed (cellssl-status sweep_dir={sweep})" in reported.stdout
    summary = pd.read_csv(report_dir / "summary.csv")
    assert summary["label"].tolist() == ["MAE random 50% · kNN zero-shot"]


def _trials(sweep: Path) -> list[tuple[dict, float]]:
    """Each trial's overrides (as the sweeper set them) and objective (from its metrics.json)."""
    import yaml

    trials = []
    for run in sorted(p for p in sweep.iterdir() if p.name.isdigit()):
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()))
        metrics = json.loads((run / "metrics.json").read_text())
        trials.append((overrides, metrics["val/knn/encoder/macro_f1"]))
    return trials


def test_optuna_search_runs_trials_on_slurm_reports_the_best_and_continues_its_study(tmp_path, slurm_env, pbmc_store):
    """hparams_search=mae_optuna: 4 trials as one SLURM job array, each returning its validation kNN macro F1;
    optimization_results.yaml holds the best; a second invocation adds trials to the same stored study."""
    import optuna
    import yaml

    search = [sys.executable, "-m", "cellssl.tasks.train", "-m", "hparams_search=mae_optuna", "logger=csv", *SMALL,
              "trainer.max_epochs=1", "evaluation.enabled=true", "evaluation.baselines=[]",
              "evaluation.reconstruction=false", f"data.store_path={pbmc_store}"]  # fmt: skip
    first = subprocess.run(
        [*search, "hydra/launcher=slurm", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=4"],
        cwd=tmp_path, env=slurm_env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    root = tmp_path / "logs" / "train" / "multiruns" / "default"
    (sweep,) = [p for p in root.iterdir() if p.is_dir()]
    (script,) = (sweep / ".submitit").glob(".submission_file_*.sh")
    assert "#SBATCH --array=0-3%" in script.read_text()  # the 4 trials: one job array
    trials = _trials(sweep)
    assert len(trials) == 4 and len({t[0]["model.masking.rate"] for t in trials}) == 4
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best_overrides, best_value = max(trials, key=lambda t: t[1])
    assert best["best_value"] == pytest.approx(best_value)
    assert {k: float(v) for k, v in best["best_params"].items()} == {
        k: float(best_overrides[k]) for k in best["best_params"]
    }

    # the same command again (here with its trial in this process): the study goes on, 4 -> 5 trials
    second = subprocess.run(
        [*search, "hydra.sweeper.n_trials=1"], cwd=tmp_path, env=slurm_env, capture_output=True, text=True, timeout=200
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    (second_sweep,) = [p for p in root.iterdir() if p.is_dir() and p != sweep]
    study = optuna.load_study(study_name="mae_optuna", storage=f"sqlite:///{root / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    assert sorted(t.value for t in study.trials[:4]) == pytest.approx(sorted(value for _, value in trials))
    ((_, added),) = _trials(second_sweep)
    assert study.trials[4].value == pytest.approx(added)
    best_now = yaml.safe_load((second_sweep / "optimization_results.yaml").read_text())["best_value"]
    assert best_now == pytest.approx(max(best_value, added))  # the best of the whole study
