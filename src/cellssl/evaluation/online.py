"""Evaluation while pretraining: a fixed labelled subset of cells, embedded by the model as it trains and scored by
the zero-shot evaluation's own parts (:func:`~cellssl.evaluation.knn.knn_predict`,
:func:`~cellssl.evaluation.classification.score_classification`,
:func:`~cellssl.evaluation.zero_shot.reconstruction_scores`). :class:`cellssl.callbacks.OnlineEvaluation` runs it.

The cells are the first ``n_cells`` labelled rows of one split (rows are pre-shuffled when a store is written, so
they are a random subset, as the zero-shot evaluation's ``max_cells`` rows are). kNN transfers labels from a
reference to a query, as the zero-shot evaluation does, here from the subset's first half to its second half;
reconstruction is scored on the query half under the model's own masking with a fixed seed. The same cells, the
same split into halves and the same mask at every evaluation: the scores over steps differ by the model only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from cellssl.evaluation.classification import score_classification
from cellssl.evaluation.embed import apply_network, csr_blocks, normalized_blocks
from cellssl.evaluation.knn import knn_predict
from cellssl.evaluation.transfer import GeneAlignment
from cellssl.evaluation.zero_shot import reconstruction_scores
from cellssl.methods.base import PretrainingModule, Reconstructs
from cellssl.store import CellStore, InputError

BLOCK = 4096  # cells per forward pass


@dataclass(frozen=True)
class EvaluationCells:
    """Counts in the model's genes, label codes (indexing ``class_names``) and where the query half starts.

    ``scored_genes``: the model's genes the data has (reconstruction is scored on those only); None: all.
    """

    counts: sp.csr_matrix
    labels: np.ndarray
    class_names: list[str]
    n_reference: int
    normalised: bool = False
    scored_genes: np.ndarray | None = None

    @property
    def obs(self) -> pd.DataFrame:
        """The cells' labels as a categorical column ``label`` (for figures)."""
        return pd.DataFrame({"label": pd.Categorical.from_codes(self.labels, categories=self.class_names)})


def evaluation_cells(
    store: CellStore, split: str, label_key: str, n_cells: int, alignment: GeneAlignment | None = None
) -> EvaluationCells:
    """The first ``n_cells`` labelled cells of ``store``'s ``split`` (aligned to the model's genes by
    ``alignment``; None: the store's genes are the model's), halved into reference and query."""
    counts, rows = store.read_split(split, n_cells)
    codes, class_names = store.labels(label_key)
    labelled = codes[rows] >= 0
    counts, labels = counts[labelled], codes[rows][labelled]
    field = f"obs['{label_key}'] (split {split})"
    if len(labels) < 4 or len(np.unique(labels)) < 2:
        problem = f"{len(labels)} labelled cells of {len(np.unique(labels))} classes; kNN needs 4 cells of 2 classes"
        raise InputError(str(store.path), field, problem, "set callbacks.online_evaluation.split to a larger split")
    scored = None
    if alignment is not None and not alignment.is_identity:
        counts, scored = alignment.apply_csr(counts), np.sort(alignment.target_columns)
    normalised = bool(store.metadata.get("normalised", False))
    return EvaluationCells(counts, labels, class_names, len(labels) // 2, normalised, scored)


@dataclass
class OnlineScores:
    """``online/*`` metrics and the embedding of every evaluation cell (reference half first)."""

    metrics: dict[str, float]
    embedding: np.ndarray


def online_scores(module: PretrainingModule, cells: EvaluationCells, k: int = 5, seed: int = 0) -> OnlineScores:
    """kNN scores (``online/knn_macro_f1``, ``online/knn_accuracy``, ...) reference half → query half and, for
    models that reconstruct, the query half's masked-reconstruction ``online/reconstruction_ev`` (variance-weighted)
    and ``online/reconstruction_mse``. No gradients; the module's train/eval mode is restored."""
    was_training = module.training
    try:
        blocks = csr_blocks(cells.counts, BLOCK)
        embedding = apply_network(module, module.encoder, blocks, module.target_sum, normalised=cells.normalised)
        n = cells.n_reference
        predicted = knn_predict(embedding[:n], cells.labels[:n], embedding[n:], k)
        scores = score_classification(cells.labels[n:], predicted, cells.class_names, prefix="online/knn_")
        metrics = dict(scores.metrics)
        if isinstance(module, Reconstructs):
            query = csr_blocks(cells.counts[n:], BLOCK)
            parts = normalized_blocks(query, torch.device("cpu"), module.target_sum, normalised=cells.normalised)
            expression = np.concatenate([x.numpy() for x in parts])
            reconstruction = reconstruction_scores(module, expression, seed, genes=cells.scored_genes)
            metrics["online/reconstruction_ev"] = reconstruction["weighted_ev"]
            metrics["online/reconstruction_mse"] = reconstruction["mse"]
    finally:
        module.train(was_training)
    return OnlineScores(metrics, embedding)
