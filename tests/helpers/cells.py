"""Small synthetic AnnData sets for the evaluation tests."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd


def separable_cells(
    n_per_type: int = 100, n_types: int = 3, genes_per_type: int = 20, n_batches: int = 1, seed: int = 0
) -> ad.AnnData:
    """Poisson counts of cell types that each express their own genes 40 times as highly as the others;
    ``obs['cell_type']`` and ``obs['batch']`` (batches assigned at random)."""
    rng = np.random.default_rng(seed)
    n_genes = n_types * genes_per_type
    types = np.repeat(np.arange(n_types), n_per_type)
    rates = np.full((len(types), n_genes), 0.5)
    for t in range(n_types):
        rates[types == t, t * genes_per_type : (t + 1) * genes_per_type] = 20.0
    adata = ad.AnnData(rng.poisson(rates).astype(np.float32))
    adata.obs_names = [f"cell{i}" for i in range(adata.n_obs)]
    adata.var_names = [f"gene{i}" for i in range(n_genes)]
    adata.obs["cell_type"] = pd.Categorical([f"type{t}" for t in types])
    adata.obs["batch"] = pd.Categorical([f"batch{b}" for b in rng.integers(0, n_batches, len(types))])
    return adata
