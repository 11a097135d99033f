"""``cellssl-evaluate``: zero-shot evaluation of a checkpoint's frozen encoder on a cell store.

The same evaluation as after ``cellssl-train`` (:func:`cellssl.evaluation.zero_shot.zero_shot_evaluation`, set by
the ``evaluation`` group): kNN label transfer from a reference split to a query split for the encoder and the
baselines, masked-reconstruction scores for models that reconstruct, and optionally ontology-aware and scib-metrics
integration scores, and with ``benchmark=cz`` cz-benchmarks' tasks on the query cells. Genes are aligned to the
checkpoint's vocabulary, so the store may come from another data set. Writes ``metrics.json``,
``knn_<representation>_per_class.csv`` / ``_confusion.png``, ``integration.csv`` and ``cz_benchmark.csv``.
"""

from __future__ import annotations

# isort: off
# W&B (the default logger) before torch and lightning: building wandb's pydantic models looks up their docstrings
# with inspect.getmodule, which scans every loaded module; after torch, lightning and scanpy that import takes
# ~5-10 s instead of ~1 s (cellssl-evaluate on pbmc68k: 20 s -> 11 s)
import wandb  # noqa: F401

# isort: on

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cellssl.evaluation.identity import baseline_identity, model_identity, pretraining_name
from cellssl.evaluation.report import zero_shot_rows
from cellssl.store import CellStore, InputError
from cellssl.tasks import config_dir
from cellssl.tasks.common import environment, exit_on_input_error, quiet_library_noise, write_atomic, write_json
from cellssl.tasks.outputs import (
    finish_loggers,
    instantiate_loggers,
    load_model,
    log_table,
    print_table,
    run_zero_shot,
    write_classification,
)

log = logging.getLogger(__name__)


def integration_metrics(cfg: DictConfig, store: CellStore, result: Any, loggers: list, output_dir: Path) -> dict:
    """scib-metrics scores of every query embedding (``integration.batch_key``), written to ``integration.csv``."""
    from cellssl.evaluation.embed import log_normalized
    from cellssl.evaluation.integration import integration_scores

    batch_codes = store.labels(cfg.integration.batch_key)[0]
    codes, class_names = store.labels(cfg.evaluation.label_key)
    rows = result.query_rows
    expression = result.query_expression
    if expression is None:
        expression = log_normalized(store.read_rows(int(rows[0]), int(rows[-1]) + 1), cfg.evaluation.batch_size)
    embeddings = {k: v for k, v in result.query_embeddings.items() if k != "log_normalised"}  # PCA's own input
    table = integration_scores(
        expression,
        embeddings,
        np.asarray(class_names)[codes[rows]],
        batch_codes[rows].astype(str),
        n_jobs=cfg.integration.n_jobs,
        neighbors=cfg.integration.neighbors,
    )
    write_atomic(output_dir / "integration.csv", table.to_csv())
    log_table(loggers, "integration", table.reset_index())
    return {
        f"integration/{name}/{metric}": float(value) for name, row in table.iterrows() for metric, value in row.items()
    }


def benchmark_metrics(cfg: DictConfig, store: CellStore, result: Any, loggers: list, output_dir: Path) -> dict:
    """cz-benchmarks' tasks on the query cells and their embeddings (``benchmark=cz``), written to
    ``cz_benchmark.csv``; ``cz/<task>/<representation>/<metric>`` entries."""
    from cellssl.evaluation.cz_benchmark import cz_benchmark, cz_metrics, local_anndata

    settings = cfg.benchmark
    counts, rows = store.read_split(cfg.evaluation.query_split, cfg.evaluation.max_cells)
    codes, class_names = store.labels(cfg.evaluation.label_key)
    batches = None if settings.batch_key is None else store.labels(settings.batch_key)[0][rows]
    embeddings = {k: v for k, v in result.query_embeddings.items() if k != "log_normalised"}  # the genes themselves
    adata = local_anndata(counts, embeddings, np.asarray(class_names)[codes[rows]], batches)
    options = OmegaConf.to_container(settings, resolve=True)
    options = {key: value for key, value in options.items() if key not in ("name", "batch_key")}
    table = cz_benchmark(adata, seed=cfg.seed, **options)  # tasks, baselines, n_folds, ...: conf/benchmark/cz.yaml
    write_atomic(output_dir / "cz_benchmark.csv", table.to_csv(index=False))
    log_table(loggers, "cz_benchmark", table)
    return cz_metrics(table)


def _cz_requested(cfg: DictConfig) -> bool:
    return cfg.get("benchmark") is not None and cfg.benchmark.name == "cz"


def check_optional_extras(cfg: DictConfig, store: CellStore) -> None:
    """Refuse, before any work, what needs an optional extra that is missing or a column the store lacks."""
    if "scvi" in cfg.evaluation.baselines:
        from cellssl.evaluation.scvi_baseline import require_scvi

        require_scvi()
        if cfg.evaluation.scvi.batch_key is not None:
            store.labels(cfg.evaluation.scvi.batch_key)
    if _cz_requested(cfg):
        from cellssl.evaluation.cz_benchmark import require_czbenchmarks

        require_czbenchmarks()
        if cfg.evaluation.label_key is None:
            raise InputError(str(store.path), "evaluation.label_key", "benchmark=cz needs labels", "set data.label_key")
        if cfg.benchmark.batch_key is not None:
            store.labels(cfg.benchmark.batch_key)


def labelled_rows(cfg: DictConfig, datamodule: Any) -> Any:
    """The label budget of kNN: with ``data.donor_fraction`` < 1, only the cells of that fraction of the training
    donors lend their labels (the donors ``cellssl-finetune`` trains on with the same seed); None: all."""
    if datamodule.train_rows is None:
        return None
    if cfg.evaluation.reference_split != "train":
        raise InputError("config", "data.donor_fraction", "a label budget applies to the train split", "set 1.0")
    log.info("kNN reference: labels of %d training cells (data.donor_fraction)", len(datamodule.train_rows))
    return datamodule.train_rows


@exit_on_input_error
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Embed reference and query cells, score kNN label transfer and the rest; returns ``metrics.json``'s content."""
    quiet_library_noise()
    output_dir = Path(cfg.paths.output_dir)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # builds the built-in pbmc68k store when it is missing
    datamodule.setup()
    store = datamodule.store
    label_key = cfg.evaluation.label_key
    if cfg.integration.batch_key is not None:
        if label_key is None:
            raise InputError(str(store.path), "evaluation.label_key", "integration needs labels", "set data.label_key")
        store.labels(cfg.integration.batch_key)  # a wrong column fails before any work
    check_optional_extras(cfg, store)
    model = None if cfg.pretrained is None else load_model(str(cfg.pretrained), cfg.transfer, cfg.trainer.accelerator)
    if model is None and not {"pca", "log_normalised", "scvi"} & set(cfg.evaluation.baselines):
        raise InputError("config", "pretrained", "nothing to evaluate", "pass pretrained=<checkpoint> or a baseline")
    loggers = instantiate_loggers(cfg)
    started = time.perf_counter()
    result = run_zero_shot(cfg, model, store, labelled_rows=labelled_rows(cfg, datamodule))
    metrics: dict[str, Any] = dict(result.metrics)
    identity = model_identity(model) if model is not None else {}
    split = cfg.evaluation.query_split
    for name, scores in result.scores.items():
        who = identity if name == "encoder" else baseline_identity(name, identity)
        title = f"{pretraining_name(who)} · kNN (k={cfg.evaluation.k}), {split} split"
        write_classification(scores, output_dir, f"knn_{name}", loggers, title=title)
    if cfg.integration.batch_key is not None:
        metrics.update(integration_metrics(cfg, store, result, loggers, output_dir))
    if _cz_requested(cfg):
        metrics.update(benchmark_metrics(cfg, store, result, loggers, output_dir))
    metrics["time/eval_s"] = time.perf_counter() - started

    dataset = cfg.dataset_name or Path(store.path).stem
    rows = zero_shot_rows(result, identity, dataset, split, cfg.seed, cfg.method_name)
    numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    for logger in loggers:
        logger.log_metrics(numeric, step=0)
        logger.log_hyperparams({"report_rows": rows})
    finish_loggers(loggers)
    run = {"task": "evaluate", "pretrained": cfg.pretrained, "dataset": dataset}
    result_json = {**metrics, **environment(), "run": run, "report_rows": rows}
    write_json(output_dir / "metrics.json", result_json)
    print_table(result.table, f"{dataset}: evaluation {metrics['time/eval_s']:.1f} s")
    return result_json


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
