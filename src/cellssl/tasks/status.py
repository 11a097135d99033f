"""``cellssl-status``: where the jobs of a fire-and-forget sweep (``hydra/launcher=slurm_queue``) stand.

Reads the sweep's ``manifest.json`` and prints each job's state (queued / running / done / failed) and the last
log lines of the failed ones (:mod:`cellssl.sweeps`).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cellssl.store import InputError
from cellssl.sweeps import JobState, job_states, status_text
from cellssl.tasks import config_dir
from cellssl.tasks.common import exit_on_input_error


@exit_on_input_error
def status(cfg: DictConfig) -> list[JobState]:
    """Print the table of the sweep's jobs; returns their states."""
    if cfg.sweep_dir is None:
        raise InputError("config", "sweep_dir", "no sweep given", "pass sweep_dir=<the directory the sweep printed>")
    states = job_states(cfg.sweep_dir, cfg.log_lines)
    print(f"{cfg.sweep_dir}\n\n{status_text(states)}", flush=True)
    return states


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="status")
def main(cfg: DictConfig) -> None:
    status(cfg)


if __name__ == "__main__":
    main()
