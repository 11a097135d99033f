"""``cellssl-report``: a sweep's results at a glance.

Every fine-tune or evaluate run writes ``report_rows`` (method, data set, seed and its scores) into its
``metrics.json`` and its W&B config. This task gathers them from a multirun directory and/or offline W&B runs and
writes ``runs.csv`` (one row per run and method), ``summary.csv`` / ``summary.md`` (mean ± s.d. over seeds) and
``summary.png`` (methods × data sets, bars with error bars and the single seeds as dots).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from cellssl.store import InputError
from cellssl.tasks import config_dir
from cellssl.tasks.common import exit_on_input_error, write_atomic
from cellssl.tasks.outputs import save_figure
from cellssl.tracking.wandb_offline import read_offline_run

log = logging.getLogger(__name__)


def rows_from_multirun(directory: str | Path) -> list[dict]:
    """``report_rows`` of every ``metrics.json`` below ``directory``, each with the run's folder."""
    rows = []
    for path in sorted(Path(directory).rglob("metrics.json")):
        data = json.loads(path.read_text())
        rows += [{**row, "source": str(path.parent)} for row in data.get("report_rows", [])]
    return rows


def rows_from_wandb(directory: str | Path) -> list[dict]:
    """``report_rows`` from the config of every offline W&B run below ``directory`` (read with W&B's reader)."""
    rows = []
    for run_dir in sorted(p for p in Path(directory).rglob("offline-run-*") if p.is_dir()):
        run = read_offline_run(run_dir)
        rows += [{**row, "source": f"wandb:{run.run_id}"} for row in run.config.get("report_rows") or []]
    return rows


def summarise(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Mean, s.d. and count over seeds of each metric, per method and data set."""
    grouped = runs.groupby(["dataset", "method"], sort=False)[metrics]
    summary = grouped.agg(["mean", "std", "count"])
    summary.columns = [f"{m}_{stat}" for m, stat in summary.columns]
    return summary.reset_index()


def markdown_table(summary: pd.DataFrame, metrics: list[str]) -> str:
    """Methods as rows, data sets as columns, ``mean ± s.d. (n)`` of each metric."""
    table = summary[["dataset", "method"]].copy()
    for m in metrics:
        std = summary[f"{m}_std"].fillna(0.0)
        columns = zip(summary[f"{m}_mean"], std, summary[f"{m}_count"], strict=True)
        table[m] = [f"{mean:.3f} ± {s:.3f} ({int(n)})" for mean, s, n in columns]
    return table.to_markdown(index=False)


def summary_figure(runs: pd.DataFrame, metric: str, title: str):
    """Grouped bars: data sets on the x axis, one bar per method (mean over seeds, s.d. as error bar), seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(runs["dataset"]))
    methods = list(dict.fromkeys(runs["method"]))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + len(datasets) * len(methods) * 0.55), 3.6))
    colours = plt.get_cmap("tab10")
    for j, method in enumerate(methods):
        for i, dataset in enumerate(datasets):
            values = runs.loc[(runs["method"] == method) & (runs["dataset"] == dataset), metric].dropna()
            if values.empty:
                continue
            x = i - 0.4 + width * (j + 0.5)
            std = values.std() if len(values) > 1 else 0.0
            ax.bar(x, values.mean(), width * 0.9, yerr=std, capsize=3, color=colours(j % 10),
                   label=method if i == 0 else None)  # fmt: skip
            ax.scatter(np.full(len(values), x), values, s=10, color="black", zorder=3)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_ylim(0, 1.05 if runs[metric].max() <= 1 else None)
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


@exit_on_input_error
def report(cfg: DictConfig) -> pd.DataFrame:
    """Write runs.csv, summary.csv, summary.md and summary.png to the run directory; returns the summary."""
    output_dir = Path(cfg.paths.output_dir)
    if cfg.multirun_dir is None and cfg.wandb_dir is None:
        raise InputError("config", "multirun_dir", "nothing to report", "pass multirun_dir=<dir> or wandb_dir=<dir>")
    rows = []
    for key, reader in (("multirun_dir", rows_from_multirun), ("wandb_dir", rows_from_wandb)):
        if cfg[key] is not None:
            if not Path(cfg[key]).is_dir():
                raise InputError(str(cfg[key]), key, "no such directory", f"pass {key}=<an existing folder>")
            rows += reader(cfg[key])
    if not rows:
        where = cfg.multirun_dir or cfg.wandb_dir
        raise InputError(str(where), "report_rows", "no results found", "point at a cellssl-finetune/evaluate sweep")
    runs = pd.DataFrame(rows)
    runs = runs.sort_values(["dataset", "method", "seed"], key=lambda c: c.str.lower() if c.dtype == object else c)
    metrics = [m for m in dict.fromkeys([cfg.metric, *cfg.extra_metrics]) if m in runs.columns]
    if cfg.metric not in runs.columns:
        raise InputError(str(cfg.multirun_dir), "metric", f"no column {cfg.metric!r}", f"choose one of {metrics}")
    summary = summarise(runs, metrics)
    table = markdown_table(summary, metrics)
    write_atomic(output_dir / "runs.csv", runs.to_csv(index=False))
    write_atomic(output_dir / "summary.csv", summary.to_csv(index=False))
    write_atomic(output_dir / "summary.md", table + "\n")
    title = cfg.title or f"{cfg.metric.replace('_', ' ')} (mean ± s.d. over seeds)"
    save_figure(summary_figure(runs, cfg.metric, title), output_dir / "summary.png")
    print(f"\n{table}\n\n{len(runs)} results from {runs['source'].nunique()} runs; files in {output_dir}\n")
    return summary


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="report")
def main(cfg: DictConfig) -> None:
    report(cfg)


if __name__ == "__main__":
    main()
