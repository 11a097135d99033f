"""Built-in data sets, returned as in-memory AnnData with raw counts in X (files are read by convert.py)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp

from cellssl.store.validation import InputError

# How far a recovered count may sit from the nearest integer: pbmc68k_reduced keeps log1p values as
# float32, whose rounding error on expm1(x) * n_counts / 1e4 stays well below this.
_MAX_RECOVERY_ERROR = 0.25


def load_pbmc68k() -> ad.AnnData:
    """scanpy's bundled ``pbmc68k_reduced`` (700 PBMCs, 10 ``bulk_labels``) with its raw counts recovered.

    The data set ships log-normalised values in ``.raw``; counts are ``expm1(raw.X) * n_counts / 1e4``,
    which must come out integral (checked) before they are rounded.
    """
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    lognorm = adata.raw.X.astype(np.float64)
    lognorm = lognorm.toarray() if sp.issparse(lognorm) else lognorm
    recovered = np.expm1(lognorm) * adata.obs["n_counts"].to_numpy()[:, None] / 1e4
    counts = np.round(recovered)
    error = float(np.abs(recovered - counts).max())
    if error > _MAX_RECOVERY_ERROR:
        raise InputError(
            "pbmc68k_reduced",
            "raw.X",
            f"recovered counts are not integral (max error {error:.3f})",
            "check the scanpy version that ships the data set",
        )
    out = ad.AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)),
        obs=adata.obs[["bulk_labels", "louvain", "phase", "n_counts"]].copy(),
        var=adata.raw.var.copy(),
    )
    out.uns["count_recovery_max_error"] = error
    return out


BUILTIN_SOURCES = {"pbmc68k": load_pbmc68k}
