"""``cellssl-evaluate``: zero-shot evaluation of a checkpoint's frozen encoder on a cell store.

kNN label transfer from a reference split to a query split (k configurable) for the encoder and a PCA baseline,
masked-reconstruction scores for models that reconstruct, and optionally ontology-aware and scib-metrics
integration scores. Genes are aligned to the checkpoint's vocabulary, so the store may come from another data set.
Writes ``metrics.json``, ``knn_<representation>_per_class.csv`` / ``_confusion.png`` and ``integration.csv``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig
from sklearn.decomposition import PCA

from cellssl.data import CellDataModule
from cellssl.evaluation.classification import score_classification
from cellssl.evaluation.embed import embed, log_normalized
from cellssl.evaluation.knn import knn_predict
from cellssl.evaluation.pretraining import reconstruction_scores
from cellssl.evaluation.transfer import store_genes
from cellssl.methods import Reconstructs
from cellssl.store import InputError
from cellssl.tasks import config_dir
from cellssl.tasks.common import exit_on_input_error, labelled_datamodule, quiet_library_noise, write_atomic, write_json
from cellssl.tasks.outputs import (
    align_to_model,
    finish_loggers,
    instantiate_loggers,
    load_checkpoint,
    log_table,
    ontology_predictions,
    write_classification,
)

log = logging.getLogger(__name__)


@exit_on_input_error
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Embed reference and query cells, score kNN label transfer and the rest; returns ``metrics.json``'s content."""
    quiet_library_noise()
    output_dir = Path(cfg.paths.output_dir)
    datamodule: CellDataModule = labelled_datamodule(cfg.data)
    store = datamodule.store
    knn = cfg.knn
    reference_counts, reference_rows = store.read_split(knn.reference_split, knn.max_cells)
    query_counts, query_rows = store.read_split(knn.query_split, knn.max_cells)
    codes, class_names = store.labels(datamodule.label_key)
    reference_labels, query_labels = codes[reference_rows], codes[query_rows]
    batch_key = cfg.integration.batch_key
    batch_codes = store.labels(batch_key)[0] if batch_key is not None else None  # a wrong column fails first
    loggers = instantiate_loggers(cfg)
    started = time.perf_counter()

    metrics: dict[str, Any] = {"eval/n_reference": len(reference_rows), "eval/n_query": len(query_rows)}
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    model = None
    if cfg.pretrained is not None:
        model = load_checkpoint(str(cfg.pretrained))
        alignment = align_to_model(model, store_genes(store), cfg.transfer, str(store.path))
        metrics.update(alignment.report())
        reference_aligned, query_aligned = alignment.apply_csr(reference_counts), alignment.apply_csr(query_counts)
        embeddings["encoder"] = (
            embed(model.encoder, reference_aligned, knn.batch_size, model.target_sum),
            embed(model.encoder, query_aligned, knn.batch_size, model.target_sum),
        )
        if cfg.reconstruction.enabled and isinstance(model, Reconstructs):
            expression = log_normalized(query_aligned, knn.batch_size, model.target_sum)
            scores = reconstruction_scores(model, expression, cfg.seed, genes=np.sort(alignment.target_columns))
            metrics.update({f"reconstruction/{k}": v for k, v in scores.items()})
    query_expression = None
    if cfg.baselines.pca:
        reference_expression = log_normalized(reference_counts, knn.batch_size)
        query_expression = log_normalized(query_counts, knn.batch_size)
        n_components = min(cfg.baselines.pca_components, *reference_expression.shape)
        pca = PCA(n_components=n_components, random_state=cfg.seed).fit(reference_expression)
        embeddings["pca"] = (pca.transform(reference_expression), pca.transform(query_expression))
    if not embeddings:
        raise InputError(
            "config", "pretrained", "nothing to evaluate", "pass pretrained=<checkpoint> or baselines.pca=true"
        )

    correct = ontology_predictions(cfg.ontology, class_names)
    dataset = cfg.dataset_name or Path(store.path).stem
    base_name = cfg.method_name or (type(model).__name__ if model is not None else "")
    rows = []
    for name, (reference, query) in embeddings.items():
        predicted = knn_predict(reference, reference_labels, query, knn.k)
        prefix = f"knn/{name}/"
        scores = score_classification(query_labels, predicted, class_names, prefix=prefix)
        metrics.update(scores.metrics)
        write_classification(scores, output_dir, f"knn_{name}", loggers, title=f"kNN (k={knn.k}) on {name}")
        if correct is not None:
            corrected = correct(query_labels, predicted)
            ontology = score_classification(query_labels, corrected, class_names, prefix=f"{prefix}ontology_")
            metrics.update(ontology.metrics)
        method = f"kNN {base_name}" if name == "encoder" else f"kNN {name.upper()}"
        rows.append(
            {
                "method": method,
                "dataset": dataset,
                "seed": int(cfg.seed),
                **{key.removeprefix(prefix): value for key, value in metrics.items() if key.startswith(prefix)},
            }
        )

    if batch_codes is not None:
        from cellssl.evaluation.integration import integration_scores

        if query_expression is None:
            query_expression = log_normalized(query_counts, knn.batch_size)
        table = integration_scores(
            query_expression,
            {name: query for name, (_, query) in embeddings.items()},
            np.asarray(class_names)[query_labels],
            batch_codes[query_rows].astype(str),
            n_jobs=cfg.integration.n_jobs,
            neighbors=cfg.integration.neighbors,
        )
        write_atomic(output_dir / "integration.csv", table.to_csv())
        log_table(loggers, "integration", table.reset_index())
        for name, row in table.iterrows():
            metrics.update({f"integration/{name}/{metric}": float(value) for metric, value in row.items()})
    metrics["time/eval_s"] = time.perf_counter() - started

    numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    for logger in loggers:
        logger.log_metrics(numeric, step=0)
        logger.log_hyperparams({"report_rows": rows})
    finish_loggers(loggers)
    result = {**metrics, "run": {"task": "evaluate", "pretrained": cfg.pretrained, "dataset": dataset}}
    result["report_rows"] = rows
    write_json(output_dir / "metrics.json", result)
    lines = [f"{r['method']:>28}: kNN macro F1 {r['macro_f1']:.3f}, accuracy {r['accuracy']:.3f}" for r in rows]
    print(f"\n{dataset}, {knn.reference_split} → {knn.query_split}, k={knn.k}\n" + "\n".join(lines) + "\n", flush=True)
    return result


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
