"""Zero-shot cell typing: k-nearest-neighbour label transfer from a reference to a query (scored by
:func:`cellssl.evaluation.classification.score_classification`)."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors


def knn_predict(
    reference: np.ndarray, reference_labels: np.ndarray, query: np.ndarray, k: int = 5, skip_nearest: bool = False
) -> np.ndarray:
    """Majority label of each query cell's ``k`` nearest reference cells (Euclidean; ties go to the lowest code).

    ``skip_nearest`` reproduces Richter et al.'s ``perform_knn``: it searches ``k + 1`` neighbours and drops the
    nearest, meant as the query cell itself, though their reference (validation) and query (test) splits share no
    cell; so the nearest genuine neighbour is dropped. Only for comparing with their published numbers.
    """
    if not skip_nearest:
        k = min(k, len(reference))
        return KNeighborsClassifier(n_neighbors=k).fit(reference, reference_labels).predict(query)
    k = min(k + 1, len(reference))
    neighbours = NearestNeighbors(n_neighbors=k).fit(reference).kneighbors(query, return_distance=False)[:, 1:]
    classes, codes = np.unique(np.asarray(reference_labels), return_inverse=True)
    return classes[[np.argmax(np.bincount(row)) for row in codes[neighbours]]]
