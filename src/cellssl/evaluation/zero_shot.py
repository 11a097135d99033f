"""Zero-shot evaluation of a trained model on a cell store: the one evaluation path of ``cellssl-train`` (after
pretraining) and ``cellssl-evaluate``.

The model's encoder and the baselines embed a reference split and a query split; with labels, kNN label
transfer from reference to query is scored (macro F1 and friends, :func:`score_classification`); models that
reconstruct masked input are also scored on the query's masked-reconstruction explained variance. Baselines:
``random_encoder`` (the same architecture untrained), ``pca`` (PCA of the log-normalised data) and
``log_normalised`` (the log-normalised genes themselves), and on request ``scvi`` (scVI trained on the reference's
raw counts, :mod:`cellssl.evaluation.scvi_baseline`; also scored on masked reconstruction). Without labels, kNN is
skipped with one log line and reconstruction still runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.decomposition import PCA

from cellssl.data.cells import matrix_cells
from cellssl.evaluation.classification import ClassificationScores, score_classification
from cellssl.evaluation.embed import log_normalized
from cellssl.evaluation.knn import knn_predict
from cellssl.evaluation.reconstruction import reconstruction_metrics
from cellssl.masking import FixedMasking, common_evaluation_mask
from cellssl.methods.base import Reconstructs
from cellssl.model import CellSSLModel
from cellssl.store import CellStore, InputError

log = logging.getLogger(__name__)

BASELINES = ("random_encoder", "pca", "log_normalised")
OPTIONAL_BASELINES = ("scvi",)  # requested by name only: they need an optional extra and train a model
OntologyCorrection = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class ZeroShotResult:
    """Metrics (``knn/<representation>/<score>``, ``reconstruction/<representation>/<score>``, ``transfer/*``),
    a table (one row per representation), kNN scores per representation and the query embeddings."""

    metrics: dict[str, float | int | str]
    table: pd.DataFrame
    scores: dict[str, ClassificationScores] = field(default_factory=dict)
    query_embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    query_rows: np.ndarray | None = None
    query_expression: np.ndarray | None = None


@torch.no_grad()
def reconstruction_scores(
    model: Reconstructs,
    expression: np.ndarray,
    seed: int,
    genes: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> dict[str, float]:
    """Weighted and uniform explained variance and MSE of the hidden entries (``expression``: log-normalised, in the
    model's genes; ``genes``: score only these columns): hidden by the model's own masking, or, given ``mask``
    (cells × genes, True = hidden), by exactly that mask (:class:`~cellssl.masking.FixedMasking`)."""
    model.eval()
    x = torch.from_numpy(expression).to(model.device)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    masking = None if mask is None else FixedMasking(torch.from_numpy(np.asarray(mask)))
    reconstruction, hidden = model.reconstruct(x, generator, masking=masking)
    return reconstruction_metrics(expression, reconstruction.float().cpu().numpy(), hidden.cpu().numpy(), genes)


def _embeddings(
    models: dict[str, CellSSLModel],
    reference: sp.csr_matrix,
    query: sp.csr_matrix,
    store: CellStore,
    baselines: Sequence[str],
    pca_components: int,
    batch_size: int,
    seed: int,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray | None]:
    """Reference and query embeddings per representation, and the query's log-normalised data (when computed)."""
    embeddings = {}
    for name, model in models.items():
        cells = [matrix_cells(m, store.genes, str(store.path)) for m in (reference, query)]
        embeddings[name] = tuple(model.embed(c, batch_size=batch_size) for c in cells)
    query_expression = None
    if {"pca", "log_normalised"} & set(baselines):
        reference_expression = log_normalized(reference, batch_size)
        query_expression = log_normalized(query, batch_size)
        if "pca" in baselines:
            n_components = min(pca_components, *reference_expression.shape)
            pca = PCA(n_components=n_components, random_state=seed).fit(reference_expression)
            embeddings["pca"] = (pca.transform(reference_expression), pca.transform(query_expression))
        if "log_normalised" in baselines:
            embeddings["log_normalised"] = (reference_expression, query_expression)
    return embeddings, query_expression


def _reconstruction(
    models: dict[str, CellSSLModel],
    query: sp.csr_matrix,
    store: CellStore,
    seed: int,
    common_mask_rate: float | None,
    common_mask_seed: int,
) -> dict:
    """``reconstruction/<name>/<score>`` under each model's own masking and, with ``common_mask_rate``,
    ``reconstruction_common_mask/<name>/<score>`` under one seeded random mask of the query, the same for every
    model, so models trained with different maskings are compared on the same hidden entries."""
    metrics = {}
    common = None
    if common_mask_rate is not None:
        common = common_evaluation_mask((query.shape[0], store.n_genes), common_mask_rate, common_mask_seed).numpy()
    for name, model in models.items():
        if not isinstance(model.module, Reconstructs):
            continue
        alignment = model.align(matrix_cells(query, store.genes, str(store.path)))
        expression = log_normalized(query, target_sum=model.target_sum, alignment=alignment)
        scored = None if alignment.is_identity else np.sort(alignment.target_columns)
        scores = reconstruction_scores(model.module, expression, seed, genes=scored)
        metrics.update({f"reconstruction/{name}/{key}": value for key, value in scores.items()})
        if common is not None:
            mask = _in_model_genes(common, alignment, expression.shape[1])
            scores = reconstruction_scores(model.module, expression, seed, genes=scored, mask=mask)
            metrics.update({f"reconstruction_common_mask/{name}/{key}": value for key, value in scores.items()})
    return metrics


def _in_model_genes(mask: np.ndarray, alignment, n_model_genes: int) -> np.ndarray:
    """The store-gene mask carried to the model's genes (vocabulary genes the store lacks stay visible zeros)."""
    if alignment.is_identity:
        return mask
    carried = np.zeros((mask.shape[0], n_model_genes), dtype=bool)
    carried[:, alignment.target_columns] = mask[:, alignment.source_columns]
    return carried


def zero_shot_evaluation(
    model: CellSSLModel | None,
    store: CellStore,
    label_key: str | None,
    random_model: CellSSLModel | None = None,
    reference_split: str = "train",
    query_split: str = "test",
    k: int = 5,
    baselines: Sequence[str] = BASELINES,
    pca_components: int = 64,
    max_cells: int | None = 20_000,
    batch_size: int = 4096,
    reconstruction: bool = True,
    ontology: OntologyCorrection | None = None,
    seed: int = 0,
    skip_nearest: bool = False,
    common_mask_rate: float | None = 0.5,
    common_mask_seed: int = 0,
    scvi: dict | None = None,
    validation_split: str | None = None,
    labelled_rows: np.ndarray | None = None,
) -> ZeroShotResult:
    """Embed ``store``'s reference and query splits with ``model`` (None: baselines only) and the baselines; score
    kNN label transfer when ``label_key`` is set and masked reconstruction for models that reconstruct.

    ``random_model``: the untrained counterpart (``random_encoder``; built from ``model`` when not given).
    ``ontology``: maps (true, predicted) codes to ontology-corrected predictions (adds ``ontology_*`` scores).
    ``skip_nearest``: drop each query cell's nearest reference cell, as the paper's kNN does
    (:func:`~cellssl.evaluation.knn.knn_predict`). ``common_mask_rate``: also score reconstruction under one seeded
    random mask (``common_mask_seed``) shared by every model; None: own masks only.
    ``scvi``: the scVI baseline's settings (``evaluation.scvi``: ``n_latent``, ``max_epochs``, ``batch_key``, ...).
    ``validation_split``: also score the encoder's kNN transfer from the reference to this split
    (``<split>/knn/encoder/macro_f1``, ...), to choose hyper-parameters without looking at the query split.
    ``labelled_rows``: a label budget, the reference split's rows (split-relative, e.g. a donor subset's
    :func:`~cellssl.data.subset.donor_subset_rows`) whose labels kNN may use; every reference cell is still
    embedded and fits the data baselines (PCA, scVI), as unlabelled cells would. None: all are labelled.
    """
    unknown = set(baselines) - set(BASELINES) - set(OPTIONAL_BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {[*BASELINES, *OPTIONAL_BASELINES]}")
    if label_key is None:  # the data baselines only serve kNN (scVI also reconstructs)
        keep_scvi = reconstruction and common_mask_rate is not None  # scVI is scored on the common mask only
        baselines = [name for name in baselines if name == "random_encoder" or (name == "scvi" and keep_scvi)]
    reference, reference_rows = store.read_split(reference_split, max_cells)
    query, query_rows = store.read_split(query_split, max_cells)
    models = {} if model is None else {"encoder": model}
    if model is not None and "random_encoder" in baselines:
        models["random_encoder"] = random_model or model.random_initialisation(seed)
    embeddings, query_expression = _embeddings(
        models, reference, query, store, baselines, pca_components, batch_size, seed
    )
    metrics: dict = {"eval/n_reference": len(reference_rows), "eval/n_query": len(query_rows)}
    # --- scVI baseline (cellssl.evaluation.scvi_baseline): embeddings for kNN, reconstruction_common_mask/scvi/* ---
    if "scvi" in baselines:
        from cellssl.evaluation.scvi_baseline import scvi_evaluation

        batch_key = (scvi or {}).get("batch_key")
        batch_codes = None if batch_key is None else store.labels(batch_key)[0]
        batches = None if batch_codes is None else (batch_codes[reference_rows], batch_codes[query_rows])
        genes = store.gene_names.astype(str)
        mask = None
        if reconstruction and common_mask_rate is not None:
            mask = common_evaluation_mask(query.shape, common_mask_rate, common_mask_seed).numpy()
        embeddings["scvi"], scvi_metrics = scvi_evaluation(reference, query, genes, scvi, batches, mask, seed)
        metrics.update(scvi_metrics)
    # --- end of the scVI baseline ---
    if model is not None:
        metrics.update(model.gene_overlap)
    if reconstruction:
        metrics.update(_reconstruction(models, query, store, seed, common_mask_rate, common_mask_seed))
    scores = {}
    if label_key is None:
        log.info("no labels (label_key is null): kNN cell typing skipped; set data.label_key=<obs column> to run it")
    else:
        codes, class_names = store.labels(label_key)
        labelled = labelled_reference(reference_rows, store.split_range(reference_split)[0], labelled_rows)
        metrics["eval/n_labelled_reference"] = int(labelled.sum())
        reference_labels, query_labels = codes[reference_rows][labelled], codes[query_rows]
        for name, (ref, qry) in embeddings.items():
            predicted = knn_predict(ref[labelled], reference_labels, qry, k, skip_nearest=skip_nearest)
            scores[name] = score_classification(query_labels, predicted, class_names, prefix=f"knn/{name}/")
            metrics.update(scores[name].metrics)
            if ontology is not None:
                corrected = ontology(query_labels, predicted)
                prefix = f"knn/{name}/ontology_"
                metrics.update(score_classification(query_labels, corrected, class_names, prefix=prefix).metrics)
        if validation_split is not None and "encoder" in embeddings:
            reference_embedding = embeddings["encoder"][0][labelled]
            cells, rows = store.read_split(validation_split, max_cells)
            embedded = model.embed(matrix_cells(cells, store.genes, str(store.path)), batch_size=batch_size)
            predicted = knn_predict(reference_embedding, reference_labels, embedded, k, skip_nearest=skip_nearest)
            prefix = f"{validation_split}/knn/encoder/"
            metrics.update(score_classification(codes[rows], predicted, class_names, prefix=prefix).metrics)
    n_components = embeddings["pca"][0].shape[1] if "pca" in embeddings else pca_components
    setting = f"{reference_split}→{query_split}, k={k}" + (", nearest skipped" if skip_nearest else "")
    table = _table(metrics, list(embeddings), setting, n_components, common_mask_rate)
    query_embeddings = {name: qry for name, (_, qry) in embeddings.items()}
    return ZeroShotResult(metrics, table, scores, query_embeddings, query_rows, query_expression)


def labelled_reference(reference_rows: np.ndarray, split_start: int, labelled_rows: np.ndarray | None) -> np.ndarray:
    """Mask over the reference cells read (global ``reference_rows``) of those whose labels kNN may use."""
    if labelled_rows is None:
        return np.ones(len(reference_rows), dtype=bool)
    labelled = np.isin(reference_rows, split_start + np.asarray(labelled_rows, dtype=np.int64))
    if not labelled.any():
        raise InputError(
            "config",
            "evaluation.max_cells",
            "no labelled cell among the reference cells read",
            "raise evaluation.max_cells or data.donor_fraction",
        )
    return labelled


def _table(
    metrics: dict, names: list[str], knn_setting: str, pca_components: int, common_mask_rate: float | None
) -> pd.DataFrame:
    shown = {
        "encoder": "encoder (trained)",
        "random_encoder": "encoder (random init)",
        "pca": f"PCA ({pca_components} comps)",
        "log_normalised": "log-normalised genes",
        "scvi": "scVI",
    }
    rows = [
        {
            "representation": shown[name],
            f"kNN macro F1 ({knn_setting})": metrics.get(f"knn/{name}/macro_f1", np.nan),
            "kNN accuracy": metrics.get(f"knn/{name}/accuracy", np.nan),
            "masked recon. weighted EV (own mask)": metrics.get(f"reconstruction/{name}/weighted_ev", np.nan),
            f"(common random {common_mask_rate or 0:.0%} mask)": metrics.get(
                f"reconstruction_common_mask/{name}/weighted_ev", np.nan
            ),
        }
        for name in names
    ]
    return pd.DataFrame(rows).dropna(axis=1, how="all")  # no kNN columns without labels
