"""cz-benchmarks' tasks on local AnnData (never its hosted data sets): each task gives finite numbers for every
representation and its own baseline and tells a type-revealing embedding from noise; ``cellssl-evaluate benchmark=cz``
writes ``cz/*`` metrics and ``cz_benchmark.csv``; a missing cz-benchmarks is one line and exit 2."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from cellssl.evaluation.cz_benchmark import TASKS, cz_benchmark, cz_metrics, local_anndata
from cellssl.tasks.evaluate import evaluate
from helpers.apps import evaluate_config
from helpers.cells import separable_cells

HEADLINE = {
    "clustering": "adjusted_rand_index",
    "embedding": "silhouette_score",
    "label_prediction": "mean_fold_f1",
    "batch_integration": "batch_silhouette",
}


def _needs_cz():
    pytest.importorskip("czbenchmarks", reason="cz-benchmarks is an optional extra: pip install cellssl[czbench]")


@pytest.fixture(scope="module")
def local_cells():
    """150 cells of 3 types in 2 batches (120 genes: the PCA baseline needs 100 highly variable genes), with an
    embedding that reveals the types and one of noise."""
    cells = separable_cells(n_per_type=50, genes_per_type=40, n_batches=2)
    rng = np.random.default_rng(1)
    types = cells.obs["cell_type"].cat.codes.to_numpy()
    embeddings = {"typed": np.eye(3)[types] * 5 + rng.normal(size=(cells.n_obs, 3)), "noise": rng.normal(size=(150, 8))}
    return local_anndata(cells.X, embeddings, cells.obs["cell_type"], cells.obs["batch"])


@pytest.mark.parametrize("task", TASKS)
def test_cz_task_on_local_anndata(local_cells, task):
    _needs_cz()
    table = cz_benchmark(local_cells, tasks=[task])
    assert set(table["task"]) == {task} and set(table["representation"]) == {"typed", "noise", "cz_baseline"}
    assert np.isfinite(table["value"]).all()
    headline = table[table["metric"] == HEADLINE[task]].set_index("representation")["value"]
    if task == "batch_integration":  # the batches are random: every representation mixes them
        assert (headline > 0.5).all()
    else:
        assert headline["typed"] > headline["noise"] + 0.3
    metrics = cz_metrics(table)
    assert metrics[f"cz/{task}/typed/{HEADLINE[task]}"] == headline["typed"]


def test_evaluate_with_benchmark_cz_writes_metrics_and_csv(tmp_path, pbmc_store):
    _needs_cz()
    overrides = ["evaluation.baselines=[pca]", "benchmark=cz", "benchmark.tasks=[embedding]"]
    cfg = evaluate_config(tmp_path, pbmc_store, *overrides)
    metrics = evaluate(cfg)
    table = pd.read_csv(tmp_path / "out" / "cz_benchmark.csv")
    assert set(table["representation"]) == {"pca", "cz_baseline"} and set(table["task"]) == {"embedding"}
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    value = written["cz/embedding/pca/silhouette_score"]
    assert value == metrics["cz/embedding/pca/silhouette_score"] and -1 <= value <= 1


def test_benchmark_cz_without_cz_benchmarks_is_one_line_and_exit_2(tmp_path, pbmc_store, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "czbenchmarks", None)  # `from czbenchmarks import tasks` raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        evaluate(evaluate_config(tmp_path, pbmc_store, "evaluation.baselines=[pca]", "benchmark=cz"))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and "pip install cellssl[czbench]" in error
    assert not (tmp_path / "out" / "metrics.json").exists()
