"""Highly variable genes at prepare time: scanpy's seurat_v3 selection, in memory and out of core alike."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellssl.store import CellStore, InputError, prepare_store
from cellssl.store.hvg import seurat_v3_out_of_core
from cellssl.store.sources import load_pbmc68k

pytest.importorskip("skmisc")
N_TOP = 150


@pytest.fixture(scope="module")
def pbmc():
    import scanpy as sc

    adata = load_pbmc68k()
    expected = sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=N_TOP, inplace=False)
    return adata, list(adata.var_names[expected["highly_variable"].to_numpy()])


def test_out_of_core_seurat_v3_selects_scanpys_genes(pbmc):
    adata, expected = pbmc
    x = sp.csr_matrix(adata.X)

    def entries():  # rows in chunks of 97, as a backed file is read
        for start in range(0, x.shape[0], 97):
            block = x[start : start + 97]
            yield block.data, block.indices

    mask = seurat_v3_out_of_core(entries, x.shape[0], x.shape[1], N_TOP)
    assert list(adata.var_names[mask]) == expected


def test_prepare_keeps_the_top_genes_in_their_order_in_memory_and_backed(pbmc, tmp_path):
    adata, expected = pbmc
    adata.write_h5ad(tmp_path / "pbmc.h5ad")
    options = {"label_columns": ["bulk_labels"], "n_top_genes": N_TOP, "flavor": "seurat_v3"}
    in_memory = CellStore(prepare_store(adata, tmp_path / "memory.zarr", **options))
    backed = CellStore(prepare_store(str(tmp_path / "pbmc.h5ad"), tmp_path / "backed.zarr", **options))
    assert list(in_memory.gene_names) == list(backed.gene_names) == expected  # the original order
    hvg = backed.metadata["highly_variable_genes"]
    assert hvg == {
        "n_top_genes": N_TOP,
        "flavor": "seurat_v3",
        "cells": "all",
        "genes_before": adata.n_vars,
        "computed": "out of core",
    }
    assert in_memory.metadata["highly_variable_genes"]["computed"] == "scanpy"
    adata[:350].write_h5ad(tmp_path / "first.h5ad")  # several files: selected over all their cells
    adata[350:].write_h5ad(tmp_path / "second.h5ad")
    halves = CellStore(
        prepare_store([tmp_path / "first.h5ad", tmp_path / "second.h5ad"], tmp_path / "h.zarr", **options)
    )
    assert list(halves.gene_names) == expected
    stored = ad.io.read_zarr(in_memory.path)
    assert np.array_equal(stored.X.toarray(), adata[stored.obs_names, expected].X.toarray())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_top_genes": 0}, r"genes\.n_top_genes: 0 is not a positive number"),
        ({"n_top_genes": 10, "flavor": "cell_ranger"}, r"genes\.flavor: unknown flavor 'cell_ranger'"),
        ({"n_top_genes": 10, "normalised": True}, "selects on raw counts"),
    ],
)
def test_bad_selection_options_are_refused_in_one_line(pbmc, tmp_path, options, message):
    adata, _ = pbmc
    with pytest.raises(InputError, match=message):
        prepare_store(adata[:50], tmp_path / "bad.zarr", **options)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("backed", [False, True])
def test_data_the_loess_cannot_fit_is_refused_instead_of_crashing(tmp_path, backed):
    """skmisc's loess kills the process on empty input: one cell, or no gene whose counts vary."""
    adata = ad.AnnData(sp.csr_matrix(np.ones((4, 5), dtype=np.float32)))
    adata.var_names = [f"G{i}" for i in range(5)]
    adata.write_h5ad(tmp_path / "flat.h5ad")
    source = str(tmp_path / "flat.h5ad") if backed else adata
    with pytest.raises(InputError, match=r"genes\.n_top_genes: seurat_v3 failed on 4 cells × 5 genes"):
        prepare_store(source, tmp_path / "flat.zarr", n_top_genes=2)
    assert not (tmp_path / "flat.zarr").exists()
