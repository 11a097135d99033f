"""``cellssl-report``: a sweep's results at a glance.

Every fine-tune or evaluate run writes ``report_rows`` (the pretraining's experiment, method, masking and
checkpoint, the read-out mode, data set, split, seed and scores) into its ``metrics.json`` and its W&B config. This
task gathers them from a multirun directory and/or offline W&B runs, labels each by what it is
(:mod:`cellssl.evaluation.report`) and writes ``runs.csv`` (one row per run and result), ``summary.csv`` /
``summary.md`` (mean ± s.d. over the seeds of one checkpoint, mode and data set) and ``summary.png`` (one panel
per data set, bars grouped by read-out mode, the seeds as dots).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig

from cellssl.evaluation.report import (
    label_runs,
    markdown_table,
    order_runs,
    rows_from_multirun,
    rows_from_wandb,
    summarise,
    summary_figure,
)
from cellssl.store import InputError
from cellssl.sweeps import progress
from cellssl.tasks import config_dir
from cellssl.tasks.common import exit_on_input_error, write_atomic
from cellssl.tasks.outputs import save_figure

log = logging.getLogger(__name__)
FIRST_COLUMNS = ["experiment", "method", "masking", "checkpoint", "mode", "dataset", "split", "seed"]
FIRST_COLUMNS += ["pretraining", "label"]
LAST_COLUMNS = ["pretrain_run", "name", "source"]


def collect_rows(cfg: DictConfig) -> pd.DataFrame:
    """The rows of ``multirun_dir`` and/or ``wandb_dir``, labelled and ordered; refused when there are none."""
    if cfg.multirun_dir is None and cfg.wandb_dir is None:
        raise InputError("config", "multirun_dir", "nothing to report", "pass multirun_dir=<dir> or wandb_dir=<dir>")
    rows = []
    for key, reader in (("multirun_dir", rows_from_multirun), ("wandb_dir", rows_from_wandb)):
        if cfg[key] is not None:
            if not Path(cfg[key]).is_dir():
                raise InputError(str(cfg[key]), key, "no such directory", f"pass {key}=<an existing folder>")
            rows += reader(cfg[key])
    queued = progress(cfg.multirun_dir) if cfg.multirun_dir is not None else []  # slurm_queue sweeps' jobs
    for line in queued:
        print(line, flush=True)
    if not rows:
        where = cfg.multirun_dir or cfg.wandb_dir
        fix = "wait for its jobs" if queued else "point at a cellssl-train/finetune/evaluate sweep"
        raise InputError(str(where), "report_rows", "no results found", fix)
    runs = order_runs(label_runs(pd.DataFrame(rows)))
    middle = [c for c in runs.columns if c not in FIRST_COLUMNS + LAST_COLUMNS]  # the scores
    return runs[[*FIRST_COLUMNS, *middle, *(c for c in LAST_COLUMNS if c in runs)]]


@exit_on_input_error
def report(cfg: DictConfig) -> pd.DataFrame:
    """Write runs.csv, summary.csv, summary.md and summary.png to the run directory; returns the summary."""
    output_dir = Path(cfg.paths.output_dir)
    runs = collect_rows(cfg)
    metrics = [m for m in dict.fromkeys([cfg.metric, *cfg.extra_metrics]) if m in runs.columns]
    if cfg.metric not in runs.columns:
        where = str(cfg.multirun_dir or cfg.wandb_dir)
        raise InputError(where, "metric", f"no column {cfg.metric!r}", f"choose one of {metrics}")
    summary = summarise(runs, metrics)
    table = markdown_table(summary, metrics)
    write_atomic(output_dir / "runs.csv", runs.to_csv(index=False))
    write_atomic(output_dir / "summary.csv", summary.to_csv(index=False))
    write_atomic(output_dir / "summary.md", table + "\n")
    title = cfg.title or "mean ± s.d. over seeds; dots: single seeds"
    save_figure(summary_figure(runs, cfg.metric, title), output_dir / "summary.png")
    print(f"\n{table}\n\n{len(runs)} results from {runs['source'].nunique()} runs; files in {output_dir}\n")
    return summary


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="report")
def main(cfg: DictConfig) -> None:
    report(cfg)


if __name__ == "__main__":
    main()
