"""Figures of embeddings: scanpy's UMAP of an embedding, coloured by a label (``cellssl-embed``, the online
evaluation during pretraining)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def umap_figure(
    embedding: np.ndarray, obs: pd.DataFrame, label_key: str | None, n_neighbors: int, seed: int
) -> tuple[np.ndarray, Figure]:
    """scanpy's neighbours graph and UMAP of the embedding; returns the coordinates and the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    view = ad.AnnData(obs=obs.copy(), obsm={"X_emb": embedding})
    sc.pp.neighbors(view, use_rep="X_emb", n_neighbors=min(n_neighbors, view.n_obs - 1), random_state=seed)
    sc.tl.umap(view, random_state=seed)
    fig = sc.pl.umap(view, color=label_key, show=False, return_fig=True, frameon=False)
    return view.obsm["X_umap"], fig
