"""Fire-and-forget SLURM sweeps: the manifest a queued sweep leaves in its directory, and the states of its jobs.

``cellssl-train -m hydra/launcher=slurm_queue ...`` (:mod:`hydra_plugins.cellssl_launcher`) submits the sweep as one
job array and returns at once, leaving ``manifest.json`` in the sweep directory: per job its number, SLURM job id,
overrides, run directory and submitit's log and result files (paths relative to the sweep directory, so the sweep
can be moved). ``cellssl-status`` and ``cellssl-report`` read it later. A job is

- ``queued`` or ``running`` while SLURM lists it (``squeue``; a requeued job is queued again);
- ``done`` when submitit's result file holds the task's return, ``failed`` when it holds the task's exception;
- ``failed`` when SLURM no longer lists it and it left no result: cancelled, out of time or memory, or it exited
  early (``exit 2`` on bad input); SLURM's last word on it (``scontrol``, while it remembers) and the job's log
  lines say which.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellssl.store import InputError

MANIFEST = "manifest.json"
STATES = ("queued", "running", "done", "failed", "unknown")
RUNNING = {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"}


@dataclass
class JobState:
    """One job of a queued sweep: ``state`` is one of :data:`STATES`; ``detail`` what SLURM or the task said."""

    num: int
    job_id: str
    state: str
    detail: str
    run_dir: Path
    overrides: list[str]
    log_tail: list[str] = field(default_factory=list)


def read_manifest(sweep_dir: str | Path) -> dict[str, Any]:
    """The manifest of a sweep queued with ``hydra/launcher=slurm_queue``; refused when there is none."""
    path = Path(sweep_dir) / MANIFEST
    if not path.is_file():
        fix = "pass the directory a `hydra/launcher=slurm_queue` sweep printed (it holds manifest.json)"
        raise InputError(str(sweep_dir), MANIFEST, "no manifest of a queued sweep", fix)
    try:
        manifest = json.loads(path.read_text())
        manifest["jobs"] = sorted(manifest["jobs"], key=lambda job: job["num"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(str(path), "jobs", f"not a sweep manifest ({err})", "point at a slurm_queue sweep") from err
    return manifest


def queue_states(job_ids: list[str]) -> dict[str, str] | None:
    """SLURM's state of each listed job that it still queues or runs (``squeue``); None when SLURM does not answer."""
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(arrays)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        # jobs SLURM has forgotten (all of them ended long ago) are an error of squeue, not of SLURM
        return {} if "Invalid job id" in out.stderr else None
    return dict(line.split()[:2] for line in out.stdout.splitlines() if line.strip())


def ended_state(job_id: str) -> str:
    """SLURM's word on an ended job while it remembers it (``scontrol``: ``CANCELLED``, ``TIMEOUT``, ...), or ''."""
    try:
        out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    fields = dict(re.findall(r"(\w+)=(\S+)", out.stdout))
    if "JobState" not in fields:
        return ""
    reason = fields.get("Reason", "None")
    return f"{fields['JobState']} (exit {fields.get('ExitCode', '?')}" + (f", {reason})" if reason != "None" else ")")


def result_state(path: Path) -> tuple[str, str] | None:
    """``done``/``failed`` and a line from submitit's result file of a job, or None when it has written none."""
    if not path.is_file():
        return None
    from submitit.core.utils import pickle_load  # submitit reads its own files (and imports slowly)

    outcome, value = pickle_load(path)
    if outcome != "success":  # the task raised: submitit kept the traceback, whose unindented tail is the error
        lines = str(value).rstrip().splitlines()
        frames = [i for i, line in enumerate(lines) if line.startswith(" ")]
        return "failed", " ".join(lines[frames[-1] + 1 if frames else 0 :])
    status = getattr(value, "status", None)  # a hydra JobReturn
    if status is not None and status.name == "FAILED":
        return "failed", repr(value._return_value)
    return "done", ""


def last_lines(paths: list[Path], n: int) -> list[str]:
    """The last ``n`` lines of the first of ``paths`` that has any (a job's stderr, then its stdout)."""
    for path in paths:
        if path.is_file():
            lines = path.read_text(errors="replace").splitlines()
            if lines:
                return lines[-n:]
    return []


def job_states(sweep_dir: str | Path, log_lines: int = 10) -> list[JobState]:
    """The state of every job in the sweep's manifest; failed jobs come with their last ``log_lines`` log lines."""
    sweep_dir = Path(sweep_dir)
    jobs = read_manifest(sweep_dir)["jobs"]
    queued = queue_states([job["job_id"] for job in jobs])
    states = []
    for job in jobs:
        slurm_state = None if queued is None else queued.get(job["job_id"])
        result = result_state(sweep_dir / job["result"])
        if slurm_state is not None:  # listed: queued or running (also a requeued job that left a result before)
            state, detail = ("running" if slurm_state in RUNNING else "queued"), slurm_state
        elif result is not None:
            state, detail = result
        elif queued is None:
            state, detail = "unknown", "SLURM does not answer (squeue failed) and the job left no result yet"
        else:
            state, detail = "failed", ended_state(job["job_id"]) or "ended without a result"
        tail = (
            last_lines([sweep_dir / job["stderr"], sweep_dir / job["stdout"]], log_lines) if state == "failed" else []
        )
        states.append(
            JobState(job["num"], job["job_id"], state, detail, sweep_dir / job["run_dir"], job["overrides"], tail)
        )
    return states


def summary(states: list[JobState]) -> str:
    """``4 jobs: 1 queued, 1 running, 1 done, 1 failed`` (states without jobs left out)."""
    counts = Counter(s.state for s in states)
    return f"{len(states)} jobs: " + ", ".join(f"{counts[name]} {name}" for name in STATES if counts[name])


def status_text(states: list[JobState]) -> str:
    """A table of the jobs (number, SLURM id, state, the overrides that set it apart), then each failed job's detail
    and log lines."""
    shared = set.intersection(*(set(s.overrides) for s in states)) if len(states) > 1 else set()
    rows = [f"{'job':>4}  {'slurm id':<12} {'state':<8} overrides"]
    for s in states:
        rows.append(f"{s.num:>4}  {s.job_id:<12} {s.state:<8} {' '.join(o for o in s.overrides if o not in shared)}")
    for s in states:
        if s.state in ("failed", "unknown"):
            rows += ["", f"job {s.num} ({s.job_id}) {s.state}: {s.detail}; run directory {s.run_dir}"]
            rows += [f"  | {line}" for line in s.log_tail]
    return "\n".join([*rows, "", summary(states)])


def progress(directory: str | Path) -> list[str]:
    """One line per queued sweep below ``directory`` (a manifest): its jobs' states, for ``cellssl-report``."""
    lines = []
    for path in sorted(Path(directory).rglob(MANIFEST)):
        states = job_states(path.parent, log_lines=0)
        unfinished = [s for s in states if s.state != "done"]
        hint = f" (cellssl-status sweep_dir={path.parent})" if unfinished else ""
        lines.append(f"{path.parent}: {summary(states)}{hint}")
    return lines
