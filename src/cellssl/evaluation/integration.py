"""Integration scores of embeddings (batch mixing and biology conservation) with scib-metrics' Benchmarker.

scib-metrics is an optional extra (``pip install cellssl[integration]``; it pulls jax). Its Benchmarker
computes the neighbour graphs, the unintegrated baseline (PCA of the expression) and every metric; this module
only builds the AnnData it expects and flattens its result table.
"""

from __future__ import annotations

from collections.abc import Mapping

import anndata as ad
import numpy as np
import pandas as pd

from cellssl.store.validation import InputError

# Metrics that need several batches per label or many cells per batch are cheap to keep on; leiden clustering
# (igraph) and kBET are the slow ones and are off by default.
DEFAULT_BIO = {
    "isolated_labels": True,
    "nmi_ari_cluster_labels_kmeans": True,
    "silhouette_label": True,
    "clisi_knn": True,
}
DEFAULT_BATCH = {"bras": True, "ilisi_knn": True, "kbet_per_label": False, "graph_connectivity": True}


def integration_scores(
    expression: np.ndarray,
    embeddings: Mapping[str, np.ndarray],
    labels: np.ndarray,
    batches: np.ndarray,
    bio: Mapping[str, bool] | None = None,
    batch: Mapping[str, bool] | None = None,
    n_jobs: int = 1,
    neighbors: str = "sklearn",
) -> pd.DataFrame:
    """scib-metrics scores, one row per embedding, one column per metric, with the Benchmarker's aggregates
    (``Batch correction``, ``Bio conservation``, ``Total``). ``expression`` is the data's ``X`` (the Benchmarker
    computes a PCA of it in preparation). ``neighbors``: ``sklearn`` (exact, no JIT compilation; fine up to about
    10^5 cells) or ``pynndescent`` (approximate; scib-metrics' default, for larger data)."""
    try:
        from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation
    except ImportError as err:
        raise InputError(
            "scib-metrics", "integration.batch_key", "scib-metrics is not installed", "pip install cellssl[integration]"
        ) from err
    if len(np.unique(batches)) < 2:
        raise InputError("data", "integration.batch_key", "only one batch", "choose an obs column with several batches")
    adata = ad.AnnData(
        X=np.asarray(expression, dtype=np.float32),
        obs=pd.DataFrame({"label": pd.Categorical(labels), "batch": pd.Categorical(batches)}),
    )
    adata.obs_names = [f"c{i}" for i in range(adata.n_obs)]
    for name, values in embeddings.items():
        adata.obsm[name] = np.asarray(values, dtype=np.float32)
    benchmark = Benchmarker(
        adata,
        batch_key="batch",
        label_key="label",
        embedding_obsm_keys=list(embeddings),
        bio_conservation_metrics=BioConservation(**{**DEFAULT_BIO, **(bio or {})}),
        batch_correction_metrics=BatchCorrection(**{**DEFAULT_BATCH, **(batch or {}), "pcr_comparison": False}),
        n_jobs=n_jobs,
        progress_bar=False,
    )
    if neighbors not in ("sklearn", "pynndescent"):
        raise InputError(
            "config", "integration.neighbors", f"unknown value {neighbors!r}", "use sklearn or pynndescent"
        )
    benchmark.prepare(neighbor_computer=exact_neighbors if neighbors == "sklearn" else None)
    benchmark.benchmark()
    table = benchmark.get_results(min_max_scale=False)
    table = table.drop(index="Metric Type", errors="ignore").apply(pd.to_numeric, errors="coerce")
    table.index.name = "embedding"
    return table


def exact_neighbors(x: np.ndarray, k: int):
    """Exact k nearest neighbours with scikit-learn, in the form scib-metrics' Benchmarker takes."""
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=min(k, len(x))).fit(x).kneighbors(x)
    return NeighborsResults(indices=indices, distances=distances)
