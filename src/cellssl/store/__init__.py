"""The cell store: a sharded Zarr v3 store of raw counts (CSR), obs labels, genes, splits and metadata.

Data flow: sources (AnnData / `.h5ad` files, the census, the synthetic generator) feed
:class:`StoreWriter` rows in final order; training and evaluation read through :class:`CellStore`.
See docs/store-format.md.
"""

from cellssl.store.convert import anndata_to_store, prepare_store, write_store
from cellssl.store.reader import CellStore
from cellssl.store.validation import InputError
from cellssl.store.writer import StoreWriter

__all__ = ["CellStore", "InputError", "StoreWriter", "anndata_to_store", "prepare_store", "write_store"]
