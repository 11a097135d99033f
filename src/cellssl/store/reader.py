"""Read a cell store: contiguous row ranges of the CSR counts, labels, genes, split ranges."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr

from cellssl.store.splits import SPLITS
from cellssl.store.validation import InputError


class CellStore:
    """Read-only view of a store written by :func:`cellssl.store.write_store`.

    Rows are grouped by split, so each split is one contiguous range of rows; ``read_rows``
    reads a contiguous range with one slice per CSR array.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise InputError(str(self.path), "store", "no Zarr v3 store here", "run cellssl-prepare to write one")
        self.root = zarr.open_group(self.path, mode="r")
        if "cellssl" not in self.root.get("uns", {}):
            raise InputError(str(self.path), "uns/cellssl", "not a cellssl store", "write it with cellssl-prepare")
        self._x = self.root["X"]

    @cached_property
    def metadata(self) -> dict:
        """Format version, source, cell and gene counts, vocabulary hash, split counts."""
        return json.loads(str(self.root["uns/cellssl/metadata_json"][()]))

    @property
    def n_cells(self) -> int:
        return int(self.metadata["n_cells"])

    @property
    def n_genes(self) -> int:
        return int(self.metadata["n_genes"])

    @cached_property
    def gene_names(self) -> pd.Index:
        return ad.io.read_elem(self.root["var"]).index

    @cached_property
    def indptr(self) -> np.ndarray:
        """Row pointers of the CSR counts (8 bytes per cell, kept in memory)."""
        return self._x["indptr"][:]

    def labels(self, column: str) -> tuple[np.ndarray, list[str]]:
        """Integer codes (one per row) and the category names of an obs column."""
        if column not in self.root["obs"]:
            available = ", ".join(k for k in self.root["obs"] if k != "_index")
            raise InputError(str(self.path), f"obs['{column}']", "no such column", f"choose one of: {available}")
        values = ad.io.read_elem(self.root["obs"][column])
        categorical = pd.Categorical(values)
        return np.asarray(categorical.codes, dtype=np.int64), [str(c) for c in categorical.categories]

    def split_range(self, split: str) -> tuple[int, int]:
        """The ``[start, stop)`` row range of a split (rows are grouped train, val, test)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        counts = self.metadata["split_counts"]
        start = sum(counts[name] for name in SPLITS[: SPLITS.index(split)])
        return start, start + counts[split]

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Counts of rows ``[start, stop)`` as a CSR matrix with the stored integer dtype."""
        indptr = self.indptr[start : stop + 1]
        lo, hi = int(indptr[0]), int(indptr[-1])
        data = self._x["data"][lo:hi]
        indices = self._x["indices"][lo:hi]
        return sp.csr_matrix((data, indices, indptr - lo), shape=(stop - start, self.n_genes))

    def read_split(self, split: str, max_cells: int | None = None) -> tuple[sp.csr_matrix, np.ndarray]:
        """Counts and global row ids of a split's first ``max_cells`` rows (a random subset: rows are pre-shuffled)."""
        start, stop = self.split_range(split)
        if max_cells is not None:
            stop = min(stop, start + max_cells)
        return self.read_rows(start, stop), np.arange(start, stop)
