"""``cellssl-evaluate``: zero-shot evaluation of a checkpoint's frozen encoder on a cell store.

The same evaluation as after ``cellssl-train`` (:func:`cellssl.evaluation.zero_shot.zero_shot_evaluation`, set by
the ``evaluation`` group): kNN label transfer from a reference split to a query split for the encoder and the
baselines, masked-reconstruction scores for models that reconstruct, and optionally ontology-aware and scib-metrics
integration scores. Genes are aligned to the checkpoint's vocabulary, so the store may come from another data set.
Writes ``metrics.json``, ``knn_<representation>_per_class.csv`` / ``_confusion.png`` and ``integration.csv``.
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
from omegaconf import DictConfig

from cellssl.store import CellStore, InputError
from cellssl.tasks import config_dir
from cellssl.tasks.common import exit_on_input_error, quiet_library_noise, write_atomic, write_json
from cellssl.tasks.outputs import (
    finish_loggers,
    instantiate_loggers,
    load_model,
    log_table,
    ontology_predictions,
    print_table,
    run_zero_shot,
    write_classification,
)

log = logging.getLogger(__name__)
BASELINE_NAMES = {"random_encoder": "random encoder", "pca": "PCA", "log_normalised": "log-normalised genes"}


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


def report_rows(result: Any, base_name: str, dataset: str, seed: int) -> list[dict[str, Any]]:
    """One row per representation for ``cellssl-report``: method, dataset, seed and the kNN scores."""
    rows = []
    for name in result.scores:
        prefix = f"knn/{name}/"
        method = f"kNN {base_name}" if name == "encoder" else f"kNN {BASELINE_NAMES[name]}"
        scores = {k.removeprefix(prefix): v for k, v in result.metrics.items() if k.startswith(prefix)}
        rows.append({"method": method, "dataset": dataset, "seed": seed, **scores})
    return rows


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
    model = None if cfg.pretrained is None else load_model(str(cfg.pretrained), cfg.transfer, cfg.trainer.accelerator)
    if model is None and not {"pca", "log_normalised"} & set(cfg.evaluation.baselines):
        raise InputError("config", "pretrained", "nothing to evaluate", "pass pretrained=<checkpoint> or a baseline")
    loggers = instantiate_loggers(cfg)
    started = time.perf_counter()
    class_names = store.labels(label_key)[1] if label_key is not None else []
    ontology = ontology_predictions(cfg.ontology, class_names) if label_key is not None else None
    result = run_zero_shot(cfg, model, store, ontology=ontology)
    metrics: dict[str, Any] = dict(result.metrics)
    for name, scores in result.scores.items():
        title = f"kNN (k={cfg.evaluation.k}) on {name}"
        write_classification(scores, output_dir, f"knn_{name}", loggers, title=title)
    if cfg.integration.batch_key is not None:
        metrics.update(integration_metrics(cfg, store, result, loggers, output_dir))
    metrics["time/eval_s"] = time.perf_counter() - started

    dataset = cfg.dataset_name or Path(store.path).stem
    rows = report_rows(result, cfg.method_name or (type(model.module).__name__ if model else ""), dataset, cfg.seed)
    numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    for logger in loggers:
        logger.log_metrics(numeric, step=0)
        logger.log_hyperparams({"report_rows": rows})
    finish_loggers(loggers)
    run = {"task": "evaluate", "pretrained": cfg.pretrained, "dataset": dataset}
    result_json = {**metrics, "run": run, "report_rows": rows}
    write_json(output_dir / "metrics.json", result_json)
    print_table(result.table, f"{dataset}: evaluation {metrics['time/eval_s']:.1f} s")
    return result_json


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
