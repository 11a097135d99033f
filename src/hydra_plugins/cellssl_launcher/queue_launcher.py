"""``hydra/launcher=slurm_queue``: hydra-submitit-launcher's SLURM launcher, returning once the job array is queued.

The SLURM launcher submits a sweep as one job array and then waits on every job's result (Hydra #2479). This one
submits the same array, writes the sweep's manifest (:mod:`cellssl.sweeps`) and returns: the command ends with
the manifest's path and the ``cellssl-status`` command that follows the jobs. Only Hydra's basic sweeper (grids) can
use it: a search (``hparams_search=...``) needs each trial's result before it asks for the next ones.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class QueueingSlurmLauncher(SlurmLauncher):
    """Submit the sweep's job array, write ``manifest.json`` into the sweep directory, return without waiting."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """Run in the job: a task that raised fails the SLURM job too, and submitit keeps its traceback (Hydra's
        ``run_job`` would return it as a value that nobody reads, and SLURM would call the job completed)."""
        result = super().__call__(*args, **kwargs)
        if result.status == JobStatus.FAILED:
            raise result._return_value
        return result

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        """Refuse a sweeper that needs results (a search) here, before it has opened a study or asked for trials."""
        sweeper = config.hydra.sweeper.get("_target_")
        if sweeper != BASIC_SWEEPER:  # bad input: one line and exit 2, as the apps do (cellssl.tasks.common)
            print(
                f"error: config: hydra/launcher: slurm_queue does not wait for results, which the sweeper {sweeper} "
                "needs; launch a search with hydra/launcher=slurm",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(2)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit 'slurm' sweep output dir (queued, not waited on): {sweep_dir}")
        state = Singleton.get_state()
        arguments = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            arguments.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", state))
        jobs = self._executor().map_array(self, *zip(*arguments, strict=True))
        entries = [self._entry(job, args[0], args[2], sweep_dir) for job, args in zip(jobs, arguments, strict=True)]
        path = self._write_manifest(sweep_dir, entries)
        array = jobs[0].job_id.split("_")[0]
        print(
            f"\n{len(jobs)} jobs queued on SLURM (array {array}); manifest: {path}\n"
            f"follow them with: cellssl-status sweep_dir={sweep_dir}\n",
            flush=True,
        )
        return [self._queued(entry, sweep_dir) for entry in entries]

    def _executor(self) -> Any:
        """submitit's SLURM executor with the launcher's parameters, as ``SlurmLauncher.launch`` builds it (that
        method submits and waits in one, so the few lines that build the executor are repeated here)."""
        import submitit  # lazily, as the submitit plugin does: Hydra imports every plugin module at start-up

        params = dict(self.params)
        executor = submitit.AutoExecutor(
            cluster="slurm", folder=params.pop("submitit_folder"), slurm_max_num_timeout=params.pop("max_num_timeout")
        )
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
        return executor

    def _entry(self, job: Any, overrides: list[str], num: int, sweep_dir: Path) -> dict[str, Any]:
        """A job's manifest entry; its run directory as the job will compose it (``hydra.sweep.subdir``)."""
        assert self.hydra_context is not None and self.config is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config.hydra.job):
            config.hydra.job.num, config.hydra.job.id = num, job.job_id
        subdir = str(OmegaConf.select(config, "hydra.sweep.subdir"))
        relative = {name: str(Path(getattr(job.paths, name)).relative_to(sweep_dir)) for name in ("stdout", "stderr")}
        return {
            "num": num,
            "job_id": job.job_id,
            "overrides": filter_overrides(overrides),
            "run_dir": subdir,
            "result": str(Path(job.paths.result_pickle).relative_to(sweep_dir)),
            **relative,
        }

    def _write_manifest(self, sweep_dir: Path, entries: list[dict[str, Any]]) -> Path:
        """``manifest.json``, keeping the entries of earlier batches of the same sweep (a sweeper's max_batch_size)."""
        from cellssl.store.output import write_atomic
        from cellssl.sweeps import MANIFEST

        path = sweep_dir / MANIFEST
        jobs = json.loads(path.read_text())["jobs"] if path.is_file() else []
        numbers = {entry["num"] for entry in entries}
        jobs = [job for job in jobs if job["num"] not in numbers] + entries
        task = str(self.config.hydra.job.name) if self.config is not None else ""
        write_atomic(path, json.dumps({"task": task, "jobs": jobs}, indent=1) + "\n")
        return path

    def _queued(self, entry: dict[str, Any], sweep_dir: Path) -> JobReturn:
        """What Hydra's sweeper gets back for a queued job: its manifest entry, no result (Hydra only needs a
        status that is not UNKNOWN)."""
        queued = JobReturn(overrides=entry["overrides"], working_dir=str(sweep_dir / entry["run_dir"]))
        queued.status, queued.return_value = JobStatus.COMPLETED, entry
        return queued
