"""Cells to apply a trained model to: row blocks of counts from an AnnData, an ``.h5ad`` file or a cell store.

:func:`open_cells` takes what a user has in hand — an :class:`~anndata.AnnData` (``X``, ``raw`` or a layer;
dense or sparse; in memory or backed), the path of an ``.h5ad`` file (opened backed) or of a cell store (a
split of it, or its first rows) — and gives a :class:`Cells`: its genes, its cell names and its rows read in
blocks of bounded size, each block checked to hold counts (or, with ``normalised``, finite non-negative values).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellssl.store import CellStore, InputError
from cellssl.store.validation import check_counts
from cellssl.store.vocabulary import GeneTable

API_FIX = "pass layer= the layer with raw counts, or normalised=True if the values are already log1p-normalised"


@dataclass(frozen=True)
class Cells:
    """Rows of cells and their genes; ``read(start, stop)`` returns rows ``[start, stop)`` (sparse or dense).

    ``normalised``: the values are already log-normalised (used as they are, never normalised again).
    ``fix``: what a refusal of non-integer values tells the user to do (in the words of the API or the app).
    """

    name: str
    field: str
    genes: GeneTable
    obs_names: pd.Index
    read: Callable[[int, int], Any]
    normalised: bool = False
    fix: str = API_FIX

    @property
    def n_cells(self) -> int:
        return len(self.obs_names)

    def blocks(self, batch_size: int) -> Iterator[sp.csr_matrix]:
        """CSR blocks of at most ``batch_size`` rows, in order; refuses values that are not counts."""
        for start in range(0, self.n_cells, batch_size):
            block = sp.csr_matrix(self.read(start, min(start + batch_size, self.n_cells)))
            check_counts(block, self.name, self.field, normalised=self.normalised, non_integer_fix=self.fix)
            yield block


def _matrix_and_var(adata: ad.AnnData, layer: str | None, name: str) -> tuple[Any, pd.DataFrame, str]:
    if layer in (None, "X"):
        if adata.X is None:
            raise InputError(name, "X", "the AnnData has no X", "pass layer=<name of the layer with raw counts>")
        return adata.X, adata.var, "X"
    if layer in adata.layers:
        return adata.layers[layer], adata.var, f"layers['{layer}']"
    if layer == "raw":
        if adata.raw is None:
            raise InputError(name, "raw", "the AnnData has no .raw", "pass layer=X or a layer name")
        return adata.raw.X, adata.raw.var, "raw.X"
    layers = ", ".join(["X", *adata.layers.keys(), *(["raw"] if adata.raw is not None else [])])
    raise InputError(name, f"layers['{layer}']", "no such layer", f"pass layer= one of: {layers}")


def anndata_cells(adata: ad.AnnData, layer: str | None = None, normalised: bool = False, name: str = "") -> Cells:
    """The cells of an AnnData (``layer``: ``X``/None, a layer name, or ``raw`` for ``raw.X``)."""
    name = name or (str(adata.filename) if adata.isbacked else "AnnData")
    matrix, var, field = _matrix_and_var(adata, layer, name)
    return Cells(
        name=name,
        field=field,
        genes=GeneTable.from_var(var),
        obs_names=adata.obs_names,
        read=lambda start, stop: matrix[start:stop],
        normalised=normalised,
    )


def store_cells(store: CellStore, split: str | None = None, max_cells: int | None = None) -> Cells:
    """The cells of a cell store: one split's rows (all rows when ``split`` is None), the first ``max_cells``."""
    start, stop = store.split_range(split) if split is not None else (0, store.n_cells)
    if max_cells is not None:
        stop = min(stop, start + max_cells)
    names = np.asarray(ad.io.read_elem(store.root["obs"]["_index"]))[start:stop]
    obs_names = pd.Index(names.astype(object), dtype=str)
    return Cells(
        name=str(store.path),
        field=f"X (rows {start}-{stop})",
        genes=store.genes,
        obs_names=obs_names,
        read=lambda a, b: store.read_rows(start + a, start + b),
        normalised=bool(store.metadata.get("normalised", False)),
    )


def open_cells(
    data: ad.AnnData | str | Path | Cells,
    layer: str | None = None,
    normalised: bool = False,
    split: str | None = None,
) -> Cells:
    """:class:`Cells` from an AnnData, an ``.h5ad`` path (opened backed: read block by block) or a store path.

    ``layer`` applies to AnnData input; ``split`` to a store (``train``, ``val`` or ``test``; None: every cell).
    """
    if isinstance(data, Cells):
        return data
    if isinstance(data, ad.AnnData):
        return anndata_cells(data, layer, normalised)
    path = Path(data)
    if path.is_dir():
        return store_cells(CellStore(path), split)
    if not path.is_file():
        raise InputError(str(path), "path", "no such file or store", "pass an AnnData, an .h5ad file or a store path")
    try:
        adata = ad.read_h5ad(path, backed="r")
    except Exception as err:  # h5py/anndata raise many types for a corrupt or foreign file
        raise InputError(str(path), "file", f"not a readable .h5ad ({type(err).__name__})", "re-export it") from err
    return anndata_cells(adata, layer, normalised, name=str(path))


def matrix_cells(
    matrix: Any, genes: GeneTable, name: str, obs_names: pd.Index | None = None, normalised: bool = False
) -> Cells:
    """Cells of a matrix already in memory (rows: cells, columns: ``genes``)."""
    names = obs_names if obs_names is not None else pd.RangeIndex(matrix.shape[0]).astype(str)
    return Cells(name, "X", genes, pd.Index(names), lambda start, stop: matrix[start:stop], normalised)
