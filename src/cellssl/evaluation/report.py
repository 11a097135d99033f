"""A sweep's results for a slide: runs labelled by what they are, seeds grouped, a table and the paper-style figure.

Rows are the ``report_rows`` that ``cellssl-finetune`` and ``cellssl-evaluate`` write (into ``metrics.json`` and
the W&B config): the pretraining's identity (:mod:`cellssl.evaluation.identity`: experiment, method, masking,
checkpoint), the read-out ``mode`` (``full``, ``frozen``, ``linear_probe``, ``knn``), data set, split, seed and
scores. Seeds are grouped only when everything else is equal; two checkpoints of one method stay two rows, named
apart by their run directories.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cellssl.evaluation.identity import (
    BASELINE_METHODS,
    IDENTITY_KEYS,
    MODE_NAMES,
    baseline_identity,
    mode_name,
    pretraining_name,
    run_directory,
)
from cellssl.tracking.wandb_offline import read_offline_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TEXT_COLUMNS = (*IDENTITY_KEYS, "mode", "dataset", "split", "name")
# what one bar / one table row is; the seeds of a group are its repeats
# seeds group when all of these agree; ``pretraining_key`` is the recipe (or, for runs that recorded none, the
# checkpoint), so the checkpoints of a pretraining sweep over seeds are one pretraining
GROUP_KEYS = ["dataset", "mode", "pretraining", "label", "experiment", "method", "masking", "pretraining_key"]
METRIC_NAMES = {
    "macro_f1": "macro F1",
    "micro_f1": "micro F1",
    "weighted_f1": "weighted F1",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
}
# tab10 without its grey, then the light tab20 tones: 18 pretrainings before a colour repeats
SSL_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
SSL_COLOURS += ["#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5"]


def zero_shot_rows(
    result: Any, identity: dict[str, str], dataset: str, split: str, seed: int, name: str | None = None
) -> list[dict[str, Any]]:
    """One row per representation for ``cellssl-report``: who it is (the encoder's pretraining, or a baseline),
    mode ``knn``, data set, query split, seed and the kNN scores; ``name`` (``method_name=``) names the encoder."""
    rows = []
    for representation in result.scores:
        prefix = f"knn/{representation}/"
        who = identity if representation == "encoder" else baseline_identity(representation, identity)
        named = {"name": name} if name and representation == "encoder" else {}
        scores = {k.removeprefix(prefix): v for k, v in result.metrics.items() if k.startswith(prefix)}
        rows.append({**who, **named, "mode": "knn", "dataset": dataset, "split": split, "seed": seed, **scores})
    return rows


def rows_from_multirun(directory: str | Path) -> list[dict]:
    """``report_rows`` of every ``metrics.json`` below ``directory``, each with the run's folder as ``source``."""
    rows = []
    for path in sorted(Path(directory).rglob("metrics.json")):
        data = json.loads(path.read_text())
        rows += [{**row, "source": str(path.parent)} for row in data.get("report_rows", [])]
    return rows


def rows_from_wandb(directory: str | Path) -> list[dict]:
    """``report_rows`` from the config of every offline W&B run below ``directory`` (read back without network)."""
    rows = []
    for run_dir in sorted(p for p in Path(directory).rglob("offline-run-*") if p.is_dir()):
        run = read_offline_run(run_dir)
        rows += [{**row, "source": f"wandb:{run.run_id}"} for row in run.config.get("report_rows") or []]
    return rows


def distinguishing_names(checkpoints: Sequence[str]) -> list[str]:
    """The shortest tails of the checkpoints' run directories that tell them apart (``2024-05-01_12-00_ab12``;
    a multirun job number keeps its sweep folder: ``<sweep>/3``), with the file name when one run has several."""
    run_dirs = [run_directory(c) for c in checkpoints]
    distinct = list(dict.fromkeys(run_dirs))
    tails = {d: str(d) for d in distinct}
    for k in range(1, max(len(d.parts) for d in distinct) + 1):
        names = ["/".join(d.parts[-k - 1 :] if d.parts[-k:][0].isdigit() else d.parts[-k:]) for d in distinct]
        if len(set(names)) == len(names):
            tails = dict(zip(distinct, names, strict=True))
            break
    shared = {d: run_dirs.count(d) > 1 for d in distinct}
    return [tails[d] + (f" {Path(c).name}" if shared[d] else "") for c, d in zip(checkpoints, run_dirs, strict=True)]


def label_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Adds ``pretraining`` (``MAE random 50%``, ``from scratch``; checkpoints of one recipe trained with different
    seeds are seeds of one pretraining; two recipes with one name get a run directory in brackets) and ``label``
    (``MAE random 50% · linear probe``). A row's ``name`` (``method_name=``)
    replaces the pretraining's name; rows of older runs without a mode keep their ``method`` as label."""
    runs = runs.copy()
    for column in TEXT_COLUMNS:
        runs[column] = runs[column].fillna("").astype(str) if column in runs else ""
    base = [row["name"] or pretraining_name(row) for row in runs.to_dict("records")]
    runs["pretraining"] = np.where(runs["mode"] == "", runs["method"], base)
    recipes = runs["recipe"].where(runs["recipe"] != "", runs["checkpoint"])  # older rows: one recipe per file
    runs["pretraining_key"] = recipes
    for name, group in runs.groupby("pretraining", sort=False):
        kept = group["checkpoint"] != ""
        first = dict(reversed(list(zip(recipes[group.index[kept]], group.loc[kept, "checkpoint"], strict=True))))
        if len(first) > 1:  # two recipes under one name: each named by the run directory of its first checkpoint
            suffix = dict(zip(first, distinguishing_names(list(first.values())), strict=True))
            rows = group.index[kept]
            runs.loc[rows, "pretraining"] = [f"{name} ({suffix[r]})" for r in recipes[rows]]
    modes = runs["mode"].map(mode_name)
    runs["label"] = np.where(runs["mode"] == "", runs["pretraining"], runs["pretraining"] + " · " + modes)
    return runs


def is_baseline(method: str) -> bool:
    """Training from scratch and the zero-shot baselines (random encoder, PCA, log-normalised genes)."""
    return method in BASELINE_METHODS


def order_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Sorted by data set, read-out mode (full, frozen, linear probe, kNN), pretraining (SSL first, then the
    baselines in a fixed order) and seed; identical results (a baseline scored by several runs) kept once."""
    runs = runs.drop_duplicates(subset=[c for c in runs.columns if c != "source"])
    modes = {mode: i for i, mode in enumerate(MODE_NAMES)}
    baselines = {method: i for i, method in enumerate(BASELINE_METHODS)}
    keys = pd.DataFrame(
        {
            "dataset": runs["dataset"].str.lower(),
            "mode": runs["mode"].map(lambda m: modes.get(m, len(modes))),
            "kind": runs["method"].map(lambda m: baselines.get(m, -1)),
            "pretraining": runs["pretraining"].str.lower(),
            "seed": pd.to_numeric(runs["seed"], errors="coerce"),
        },
        index=runs.index,
    )
    return runs.loc[keys.sort_values(list(keys.columns)).index].reset_index(drop=True)


def summarise(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Mean, s.d. and count over seeds of each metric, per data set, mode and pretraining (``label_runs`` rows),
    with the seeds of each group."""
    grouped = runs.groupby(GROUP_KEYS, sort=False)
    summary = grouped[metrics].agg(["mean", "std", "count"])
    summary.columns = [f"{m}_{stat}" for m, stat in summary.columns]
    summary["seeds"] = grouped["seed"].agg(lambda s: ",".join(str(v) for v in s))
    summary["checkpoint"] = grouped["checkpoint"].agg(lambda s: ",".join(dict.fromkeys(str(v) for v in s)))
    return summary.reset_index()


def markdown_table(summary: pd.DataFrame, metrics: list[str]) -> str:
    """One row per data set and label, ``mean ± s.d. (n)`` over seeds of each metric."""
    table = summary[["dataset", "label"]].copy()
    for m in metrics:
        columns = zip(summary[f"{m}_mean"], summary[f"{m}_std"], summary[f"{m}_count"], strict=True)
        table[m] = [_mean_sd(mean, sd, int(n)) for mean, sd, n in columns]
    return table.to_markdown(index=False)


def _mean_sd(mean: float, sd: float, n: int) -> str:
    """``0.812 ± 0.010 (3)``; one value: ``0.812 (1)``; none: ``–``."""
    if n == 0:
        return "–"
    return f"{mean:.3f} ({n})" if n == 1 else f"{mean:.3f} ± {sd:.3f} ({n})"


def metric_label(metric: str, splits: Sequence[str] = ()) -> str:
    """An axis label: ``macro F1 (test split)``; ``ontology_macro_f1`` → ``ontology-aware macro F1``."""
    ontology = metric.startswith("ontology_")
    name = METRIC_NAMES.get(metric.removeprefix("ontology_"), metric.removeprefix("ontology_").replace("_", " "))
    name = f"ontology-aware {name}" if ontology else name
    shown = sorted({s for s in splits if s})
    return f"{name} ({', '.join(shown)} split)" if shown else name


def pretraining_colours(runs: pd.DataFrame) -> dict[str, str]:
    """One colour per pretraining, the same in every panel: SSL in colours, then from scratch and the baselines
    in grey tones from dark to light (in the order of ``BASELINE_METHODS``); the legend's order too."""
    names = list(dict.fromkeys(runs["pretraining"]))
    methods = dict(zip(runs["pretraining"], runs["method"], strict=True))
    ssl = [n for n in names if not is_baseline(methods[n])]
    baselines = sorted((n for n in names if is_baseline(methods[n])), key=lambda n: BASELINE_METHODS.index(methods[n]))
    colours = {n: SSL_COLOURS[i % len(SSL_COLOURS)] for i, n in enumerate(ssl)}
    greys = np.linspace(0.2, 0.85, len(baselines)) if len(baselines) > 1 else [0.3] * len(baselines)
    colours.update({n: "#" + f"{round(g * 255):02x}" * 3 for n, g in zip(baselines, greys, strict=True)})
    return colours


def _panel(ax, runs: pd.DataFrame, metric: str, colours: dict[str, str]) -> None:
    """One data set: a group of bars per read-out mode, one bar per pretraining (mean ± s.d.), seeds as dots."""
    x, ticks = 0.0, []
    for mode, in_mode in runs.groupby("mode", sort=False):
        start = x
        for name, group in in_mode.groupby("pretraining", sort=False):
            values = group[metric].dropna().to_numpy(dtype=float)
            if values.size:
                std = values.std(ddof=1) if values.size > 1 else 0.0
                ax.bar(x, values.mean(), 0.8, yerr=std, capsize=3, color=colours[name], edgecolor="black",
                       linewidth=0.5, error_kw={"elinewidth": 1})  # fmt: skip
                jitter = np.linspace(-0.18, 0.18, values.size) if values.size > 1 else np.zeros(1)
                ax.scatter(x + jitter, values, s=12, color="black", edgecolor="white", linewidth=0.4, zorder=3)
                x += 1.0
        ticks.append(((start + x - 1.0) / 2, mode_name(mode).replace(" ", "\n") if mode else "–"))
        x += 0.8
    ax.set_xticks([t for t, _ in ticks], [name for _, name in ticks])
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def summary_figure(runs: pd.DataFrame, metric: str, title: str = "") -> Figure:
    """The paper's figure: one panel per data set, bars grouped by read-out mode, one colour per pretraining
    (greys for from scratch and the baselines), mean ± s.d. over seeds with the seeds as dots, legend below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    runs = runs[runs[metric].notna()]
    datasets = list(dict.fromkeys(runs["dataset"]))
    colours = pretraining_colours(runs)
    widths = [0.8 + sum(g["pretraining"].nunique() + 0.8 for _, g in runs[runs["dataset"] == d].groupby("mode"))
              for d in datasets]  # fmt: skip
    size = (max(4.5, 0.42 * sum(widths) + 1.2), 3.8)
    fig, axes = plt.subplots(1, len(datasets), figsize=size, sharey=True, squeeze=False,
                             gridspec_kw={"width_ratios": widths}, layout="constrained")  # fmt: skip
    for ax, dataset in zip(axes[0], datasets, strict=True):
        _panel(ax, runs[runs["dataset"] == dataset], metric, colours)
        ax.set_title(dataset)
    axes[0][0].set_ylabel(metric_label(metric, runs["split"].tolist()))
    if runs[metric].max() <= 1:
        axes[0][0].set_ylim(0, 1.05)
    handles = [Patch(facecolor=c, edgecolor="black", linewidth=0.5, label=n) for n, c in colours.items()]
    columns = min(len(handles), max(1, int(size[0] / 2.8)))  # about 2.8 inches a long entry at font size 8
    fig.legend(handles=handles, loc="outside lower center", ncol=columns, frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
