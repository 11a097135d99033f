"""cz-benchmarks (CZI's benchmarking harness) tasks on our own cells: clustering, embedding, metadata label prediction
and batch integration, run on an AnnData of a store's query cells (raw counts in ``X``, labels and batches in
``obs``, one ``obsm`` entry per representation), for every representation and for the harness's own per-task
baselines (``cz_baseline``: PCA of highly variable genes of the normalised counts; for label prediction the raw
expression itself).

cz-benchmarks is an optional extra (``pip install cellssl[czbench]``); only its tasks are used, never its hosted
data sets, so nothing is downloaded. Written for cz-benchmarks 0.14 and 0.15 (whose baselines take their
parameters differently).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellssl.store.validation import InputError

log = logging.getLogger(__name__)

TASKS = ("clustering", "embedding", "label_prediction", "batch_integration")
BASELINE = "cz_baseline"
LABEL, BATCH = "label", "batch"


def require_czbenchmarks() -> Any:
    """The ``czbenchmarks.tasks`` module; an :class:`InputError` when cz-benchmarks is missing."""
    try:
        from czbenchmarks import tasks
    except ImportError as err:
        problem, fix = "benchmark=cz needs cz-benchmarks, which is not installed", "pip install cellssl[czbench]"
        raise InputError("cz-benchmarks", "benchmark", problem, f"{fix}, or benchmark=none") from err
    return tasks


def local_anndata(
    counts: sp.csr_matrix, embeddings: Mapping[str, np.ndarray], labels: Sequence, batches: Sequence | None = None
) -> ad.AnnData:
    """The AnnData the tasks run on: raw ``counts`` in ``X``, ``obs['label']`` (and ``obs['batch']``), and each
    embedding in ``obsm``."""
    obs = pd.DataFrame({LABEL: pd.Categorical(np.asarray(labels).astype(str))})
    if batches is not None:
        obs[BATCH] = pd.Categorical(np.asarray(batches).astype(str))
    obs.index = [f"c{i}" for i in range(len(obs))]
    adata = ad.AnnData(X=sp.csr_matrix(counts, dtype=np.float32), obs=obs)
    for name, values in embeddings.items():
        adata.obsm[name] = np.asarray(values, dtype=np.float32)
    return adata


def _metric_name(result: Any) -> str:
    """``<metric>`` for a task's headline value, ``<classifier>_<metric>`` for label prediction's per-classifier
    values, other parameters appended as ``_<key>-<value>``."""
    name = result.metric_type.value.lower()
    params = dict(result.params or {})
    classifier = str(params.pop("classifier", ""))
    if classifier and not classifier.startswith("MEAN("):
        name = f"{classifier}_{name}"
    return "_".join([name, *(f"{key}-{value}" for key, value in sorted(params.items()))])


def _task_and_input(cz: Any, name: str, adata: ad.AnnData, settings: Mapping[str, Any], seed: int) -> tuple:
    obs = adata.obs
    if name == "clustering":
        task_input = cz.ClusteringTaskInput(
            obs=obs.copy(), input_labels=obs[LABEL], n_iterations=settings["n_iterations"], flavor=settings["flavor"]
        )
        return cz.ClusteringTask(random_seed=seed), task_input
    if name == "embedding":
        return cz.EmbeddingTask(random_seed=seed), cz.EmbeddingTaskInput(input_labels=obs[LABEL])
    if name == "label_prediction":
        task_input = cz.MetadataLabelPredictionTaskInput(
            labels=obs[LABEL], n_folds=settings["n_folds"], min_class_size=settings["min_class_size"]
        )
        return cz.MetadataLabelPredictionTask(random_seed=seed), task_input
    if name == "batch_integration":
        task_input = cz.BatchIntegrationTaskInput(batch_labels=obs[BATCH], labels=obs[LABEL])
        return cz.BatchIntegrationTask(random_seed=seed), task_input
    raise InputError("config", "benchmark.tasks", f"unknown task {name!r}", f"choose from {list(TASKS)}")


def _baseline(task: Any, name: str, counts: sp.csr_matrix, settings: Mapping[str, Any]) -> np.ndarray:
    """The task's own baseline of the raw counts (PCA of highly variable genes; raw expression for label
    prediction), with the PCA sized to the data."""
    if name == "label_prediction":
        return np.asarray(task.compute_baseline(counts))
    n_top_genes = min(settings["n_top_genes"], counts.shape[1])
    n_pcs = min(settings["n_pcs"], counts.shape[0] - 1, n_top_genes - 1)
    model = getattr(task, "baseline_model", None)
    if model is not None and "n_pcs" in getattr(model, "model_fields", {}):  # cz-benchmarks >= 0.15
        return np.asarray(task.compute_baseline(counts, model(n_top_genes=n_top_genes, n_pcs=n_pcs)))
    return np.asarray(task.compute_baseline(counts, n_top_genes=n_top_genes, n_pcs=n_pcs))


def cz_benchmark(
    adata: ad.AnnData,
    tasks: Sequence[str] = TASKS,
    baselines: bool = True,
    seed: int = 0,
    n_folds: int = 5,
    min_class_size: int = 10,
    n_iterations: int = 2,
    flavor: str = "igraph",
    n_top_genes: int = 3000,
    n_pcs: int = 50,
) -> pd.DataFrame:
    """Every task on every ``adata.obsm`` representation (and the task's baseline of ``adata.X`` with
    ``baselines``): a long table with columns ``task``, ``representation``, ``metric``, ``value``.

    ``batch_integration`` needs ``obs['batch']``; without it that task is skipped with a log line.
    """
    cz = require_czbenchmarks()
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise InputError("config", "benchmark.tasks", f"unknown tasks {sorted(unknown)}", f"choose from {list(TASKS)}")
    settings = {
        "n_folds": n_folds,
        "min_class_size": min_class_size,
        "n_iterations": n_iterations,
        "flavor": flavor,
        "n_top_genes": n_top_genes,
        "n_pcs": n_pcs,
    }
    rows = []
    for name in tasks:
        if name == "batch_integration" and BATCH not in adata.obs:
            log.info("cz-benchmarks batch_integration skipped: no batch column (set integration.batch_key)")
            continue
        representations = dict(adata.obsm.items())
        task, task_input = _task_and_input(cz, name, adata, settings, seed)
        if baselines:
            representations[BASELINE] = _baseline(task, name, adata.X, settings)
        for representation, values in representations.items():
            try:
                results = task.run(np.asarray(values), task_input)
            except ValueError as err:  # e.g. too few cells per class for the folds
                problem = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                field = f"benchmark.tasks[{name}] on {representation}"
                fix = "use more query cells (evaluation.max_cells) or leave the task out"
                raise InputError("cz-benchmarks", field, problem, fix) from err
            rows += [
                {"task": name, "representation": representation, "metric": _metric_name(r), "value": float(r.value)}
                for r in results
            ]
    return pd.DataFrame(rows, columns=["task", "representation", "metric", "value"])


def cz_metrics(table: pd.DataFrame) -> dict[str, float]:
    """``cz/<task>/<representation>/<metric>`` entries for ``metrics.json``."""
    return {f"cz/{r.task}/{r.representation}/{r.metric}": float(r.value) for r in table.itertuples()}
