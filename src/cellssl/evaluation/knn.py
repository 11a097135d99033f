"""Zero-shot cell typing: k-nearest-neighbour label transfer from a reference to a query, scored by macro F1."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier


def knn_predict(reference: np.ndarray, reference_labels: np.ndarray, query: np.ndarray, k: int = 5) -> np.ndarray:
    """Majority label of each query cell's ``k`` nearest reference cells (Euclidean)."""
    k = min(k, len(reference))
    return KNeighborsClassifier(n_neighbors=k).fit(reference, reference_labels).predict(query)


def macro_f1(true: np.ndarray, predicted: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in truth or prediction."""
    return float(f1_score(true, predicted, average="macro", zero_division=0))


def knn_macro_f1(
    reference: np.ndarray,
    reference_labels: np.ndarray,
    query: np.ndarray,
    query_labels: np.ndarray,
    k: int = 5,
) -> float:
    """Macro F1 of kNN label transfer from ``reference`` to ``query``."""
    return macro_f1(query_labels, knn_predict(reference, reference_labels, query, k))
