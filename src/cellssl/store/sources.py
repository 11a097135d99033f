"""Where cells come from: an `.h5ad` file or a built-in data set, returned as AnnData with raw counts in X."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from cellssl.store.validation import InputError

BUILTIN_SOURCES = ("pbmc68k",)

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


def read_h5ad(path: str | Path, counts_layer: str | None = None) -> ad.AnnData:
    """Read an `.h5ad` file and put the counts (``X``, a layer, or ``raw``) into ``X``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "path", "file not found", "give the path of an existing .h5ad file")
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # h5py/anndata raise many types for a corrupt file
        raise InputError(str(path), "file", f"not a readable .h5ad ({type(err).__name__})", "re-export it") from err
    if counts_layer in (None, "X"):
        return adata
    if counts_layer == "raw":
        if adata.raw is None:
            raise InputError(str(path), "raw", "the file has no .raw", "set counts_layer to X or a layer name")
        return ad.AnnData(X=adata.raw.X, obs=adata.obs, var=adata.raw.var)
    if counts_layer not in adata.layers:
        layers = ", ".join(adata.layers.keys()) or "none"
        raise InputError(str(path), f"layers['{counts_layer}']", "no such layer", f"choose one of: X, raw, {layers}")
    return ad.AnnData(X=adata.layers[counts_layer], obs=adata.obs, var=adata.var)


def load_source(source: str, counts_layer: str | None = None) -> ad.AnnData:
    """A built-in data set by name, or an `.h5ad` path."""
    if source == "pbmc68k":
        return load_pbmc68k()
    return read_h5ad(source, counts_layer)
