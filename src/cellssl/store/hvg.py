"""Highly variable genes at prepare time: scanpy's ``seurat_v3`` selection, in memory or out of core.

Genes are selected on raw counts of **all cells** of all sources (as ``scanpy.pp.highly_variable_genes`` run on
the whole data set would), over the merged vocabulary, before any row is placed; the store's vocabulary is then
the selected genes in their original order. Data in memory goes to scanpy itself; backed files are read in
chunks by :func:`seurat_v3_out_of_core`, which computes the same statistics in two streaming passes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import anndata as ad
import numpy as np
import scipy.sparse as sp

from cellssl.store.validation import InputError

log = logging.getLogger(__name__)

FLAVORS = ("seurat_v3", "seurat_v3_paper")
SPAN = 0.3  # scanpy's default loess span
MIN_VARYING_GENES = 3

# (values, vocabulary columns) of the stored entries of a run of cells, in any order
Entries = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


def check_hvg_options(n_top_genes: int | None, flavor: str, normalised: bool, source: str) -> None:
    """Refuse options the selection cannot honour, with one line."""
    if n_top_genes is None:
        return
    if isinstance(n_top_genes, bool) or not isinstance(n_top_genes, int | np.integer) or n_top_genes < 1:
        raise InputError(source, "genes.n_top_genes", f"{n_top_genes!r} is not a positive number", "give e.g. 2000")
    if flavor not in FLAVORS:
        raise InputError(source, "genes.flavor", f"unknown flavor {flavor!r}", f"use one of {', '.join(FLAVORS)}")
    if normalised:
        raise InputError(
            source, "genes.n_top_genes", f"{flavor} selects on raw counts; the data is normalised", "give raw counts"
        )


def _check_fit(n_cells: int, n_varying: int) -> None:
    """skmisc's loess crashes the process (no exception) on empty input: refuse data it cannot fit first."""
    if n_cells < 2 or n_varying < MIN_VARYING_GENES:
        raise ValueError(f"the loess fit needs 2 cells and {MIN_VARYING_GENES} genes whose counts vary")


def seurat_v3_in_memory(counts: sp.csr_matrix, n_top_genes: int, flavor: str = "seurat_v3") -> np.ndarray:
    """The ``highly_variable`` mask of ``scanpy.pp.highly_variable_genes(flavor=…)`` on ``(cells, genes)`` counts."""
    import scanpy as sc

    counts = sp.csr_matrix(counts)
    _check_fit(counts.shape[0], int((counts.max(axis=0).toarray() > counts.min(axis=0).toarray()).sum()))

    table = sc.pp.highly_variable_genes(
        ad.AnnData(counts), flavor=flavor, n_top_genes=n_top_genes, span=SPAN, inplace=False
    )
    return table["highly_variable"].to_numpy(dtype=bool)


def _sums(entries: Entries, n_genes: int, clip: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per gene, the sum and the sum of squares of its counts (each first clipped to ``clip[gene]``)."""
    total, squares = np.zeros(n_genes), np.zeros(n_genes)
    for values, genes in entries():
        values = np.asarray(values, dtype=np.float64)
        if clip is not None:
            values = np.minimum(values, clip[genes])
        total += np.bincount(genes, weights=values, minlength=n_genes)
        squares += np.bincount(genes, weights=values * values, minlength=n_genes)
    return total, squares


def seurat_v3_out_of_core(entries: Entries, n_cells: int, n_genes: int, n_top_genes: int) -> np.ndarray:
    """scanpy's ``seurat_v3`` selection (one batch) computed from streamed counts; the ``highly_variable`` mask.

    Hand-written (scanpy needs the whole matrix in memory), step for step as
    ``scanpy.preprocessing._highly_variable_genes._highly_variable_genes_seurat_v3``: pass 1 gives each gene's
    mean and variance (ddof=1); loess (``skmisc``, span 0.3, degree 2) of log10 variance on log10 mean gives the
    regularised standard deviation; pass 2 sums the counts clipped at ``mean + std * sqrt(n_cells)`` (the clip
    needs the fit, hence the second pass); the normalised variance ranks the genes. With one batch
    ``seurat_v3_paper`` selects the same genes. ``entries()`` must yield the same entries on every call.
    """
    from skmisc.loess import loess

    _check_fit(n_cells, MIN_VARYING_GENES)  # the variance needs two cells
    total, squares = _sums(entries, n_genes)
    mean = total / n_cells
    variance = (squares / n_cells - mean**2) * (n_cells / (n_cells - 1))
    not_constant = variance > 0
    _check_fit(n_cells, int(not_constant.sum()))
    estimated = np.zeros(n_genes, dtype=np.float64)
    model = loess(np.log10(mean[not_constant]), np.log10(variance[not_constant]), span=SPAN, degree=2)
    model.fit()
    estimated[not_constant] = model.outputs.fitted_values
    regularised_std = np.sqrt(10**estimated)
    clipped_total, clipped_squares = _sums(entries, n_genes, clip=regularised_std * np.sqrt(n_cells) + mean)
    normalised_variance = (1 / ((n_cells - 1) * np.square(regularised_std))) * (
        n_cells * np.square(mean) + clipped_squares - 2 * clipped_total * mean
    )
    ranks = np.argsort(np.argsort(-normalised_variance))  # as scanpy ranks them (ties included)
    return ranks < n_top_genes
