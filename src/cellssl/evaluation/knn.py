"""Zero-shot cell typing: k-nearest-neighbour label transfer from a reference to a query (scored by
:func:`cellssl.evaluation.classification.score_classification`)."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import KNeighborsClassifier


def knn_predict(reference: np.ndarray, reference_labels: np.ndarray, query: np.ndarray, k: int = 5) -> np.ndarray:
    """Majority label of each query cell's ``k`` nearest reference cells (Euclidean)."""
    k = min(k, len(reference))
    return KNeighborsClassifier(n_neighbors=k).fit(reference, reference_labels).predict(query)
