"""The cell store: a chunked Zarr v3 store of raw counts (CSR), obs labels, genes and splits.

Data flow: a source (an `.h5ad` file or a built-in data set) is validated, split, and written
by :func:`write_store`; training and evaluation read it through :class:`CellStore`.
"""

from cellssl.store.reader import CellStore
from cellssl.store.validation import InputError
from cellssl.store.writer import prepare_store, write_store

__all__ = ["CellStore", "InputError", "prepare_store", "write_store"]
