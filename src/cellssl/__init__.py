"""cellssl: self-supervised pretraining on single-cell transcriptomes.

The notebook API, in the manner of scvi-tools:

>>> import cellssl
>>> cellssl.prepare(adata, "atlas.zarr")                  # an AnnData or .h5ad path(s) -> a cell store
>>> model = cellssl.load("run/checkpoints/last.ckpt")    # any cellssl checkpoint
>>> adata.obsm["X_cellssl"] = model.embed(adata)         # genes aligned, counts normalised as in training
>>> adata.obs["cellssl_label"] = cellssl.load("finetune/checkpoints/last.ckpt").predict(adata)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["CellSSLModel", "load", "prepare"]

if TYPE_CHECKING:
    from cellssl.model import CellSSLModel, load
    from cellssl.store import prepare_store as prepare


def __getattr__(name: str) -> Any:
    # imported on first use: `import cellssl` stays cheap for the command-line apps that need no model
    if name in ("CellSSLModel", "load"):
        from cellssl import model

        return getattr(model, name)
    if name == "prepare":
        from cellssl.store import prepare_store

        return prepare_store
    raise AttributeError(f"module 'cellssl' has no attribute {name!r}")
