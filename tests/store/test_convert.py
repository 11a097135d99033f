"""h5ad → store conversion: several files on one gene vocabulary, bounded-memory buckets, synthetic data."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellssl.store import CellStore, InputError, anndata_to_store
from cellssl.store.synthetic import synthetic_to_store


def dataset(n_cells, genes, ensembl, seed, prefix):
    rng = np.random.default_rng(seed)
    x = rng.poisson(0.8, size=(n_cells, len(genes))).astype(np.float32)
    x[:, 0] += 1
    obs = pd.DataFrame(
        {
            "cell_type": rng.choice(["T", "B", "NK"], n_cells),
            "donor": rng.choice([f"{prefix}d{i}" for i in range(5)], n_cells),
        },
        index=[f"{prefix}{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"gene_ids": ensembl}, index=genes)
    return ad.AnnData(sp.csr_matrix(x), obs=obs, var=var)


GENES = [f"G{i}" for i in range(12)]
ENSEMBL = [f"ENSG{i:011d}" for i in range(12)]


@pytest.fixture
def two_files(tmp_path):
    a = dataset(80, GENES[:8], ENSEMBL[:8], 0, "a")  # genes 0-7
    order = [11, 10, 9, 8, 7, 6, 5, 4]  # genes 4-11, reversed order
    b = dataset(60, [GENES[i] for i in order], [ENSEMBL[i] for i in order], 1, "b")
    # file b names its genes by a different symbol spelling: only Ensembl ids match across files
    b.var.index = [f"sym{i}" for i in order]
    a.write_h5ad(tmp_path / "a.h5ad")
    b.write_h5ad(tmp_path / "b.h5ad")
    return tmp_path / "a.h5ad", tmp_path / "b.h5ad", a, b


def dense_by_ensembl(adata, ensembl_order):
    frame = pd.DataFrame(adata.X.toarray(), index=adata.obs_names, columns=adata.var["gene_ids"])
    return frame.reindex(columns=ensembl_order, fill_value=0.0)


@pytest.mark.parametrize(("mode", "n_genes"), [("union", 12), ("intersection", 4)])
def test_files_merge_onto_one_vocabulary_by_ensembl_id(two_files, tmp_path, mode, n_genes):
    path_a, path_b, a, b = two_files
    out = anndata_to_store([path_a, path_b], tmp_path / f"{mode}.zarr", label_columns=["cell_type"], vocabulary=mode)
    stored = ad.io.read_zarr(out)
    ensembl = list(stored.var["ensembl_id"])
    everything = pd.concat([dense_by_ensembl(a, ensembl), dense_by_ensembl(b, ensembl)])
    nonempty = everything.sum(axis=1) > 0  # cells left without counts in the vocabulary are dropped
    assert stored.n_vars == n_genes and stored.n_obs == nonempty.sum() and (mode == "union") == nonempty.all()
    expected = everything.loc[stored.obs_names]
    assert np.array_equal(stored.X.toarray(), expected.to_numpy())  # zeros where a file lacks a gene
    assert json.loads(str(stored.uns["cellssl"]["metadata_json"]))["dropped_empty_cells"] == (~nonempty).sum()
    overlap = json.loads(str(stored.uns["cellssl"]["metadata_json"]))["gene_overlap"]
    assert [row["matched"] for row in overlap] == ([8, 8] if mode == "union" else [4, 4])


def test_fixed_gene_list_by_symbol(two_files, tmp_path):
    path_a, _, a, _ = two_files
    genes = tmp_path / "genes.tsv"
    pd.DataFrame({"symbol": ["G7", "G1", "NOTAGENE", "G3"]}).to_csv(genes, sep="\t", index=False)
    out = anndata_to_store([path_a], tmp_path / "fixed.zarr", vocabulary=str(genes), match_by="symbol")
    stored = ad.io.read_zarr(out)
    assert list(stored.var_names) == ["G7", "G1", "NOTAGENE", "G3"]
    source = a[stored.obs_names]
    expected = np.column_stack(
        [source[:, g].X.toarray().ravel() for g in ("G7", "G1")]
        + [np.zeros(stored.n_obs)]
        + [source[:, "G3"].X.toarray().ravel()]
    )
    assert np.array_equal(stored.X.toarray(), expected)


def test_bounded_memory_buckets_give_the_same_store(two_files, tmp_path, caplog):
    """A tiny memory budget forces the on-disk bucket shuffle; the result equals the in-memory one."""
    caplog.set_level("INFO", logger="cellssl.store.convert")
    path_a, path_b, _, _ = two_files
    kwargs = {"label_columns": ["cell_type"], "donor_column": "donor", "chunk_rows": 16}
    small = anndata_to_store([path_a, path_b], tmp_path / "small.zarr", memory_mb=0.0005, **kwargs)
    large = anndata_to_store([path_a, path_b], tmp_path / "large.zarr", **kwargs)
    s, big = ad.io.read_zarr(small), ad.io.read_zarr(large)
    assert list(s.obs_names) == list(big.obs_names)
    assert (s.X != big.X).nnz == 0
    assert (s.obs.groupby("donor", observed=True)["split"].nunique() == 1).all()
    assert not any(p.name.startswith(".small.zarr") for p in tmp_path.iterdir())  # buckets cleaned up
    assert "buckets" in caplog.text


def test_no_genes_in_common_is_refused(two_files, tmp_path):
    path_a, path_b, _, _ = two_files
    with pytest.raises(InputError, match="vocabulary is empty"):
        anndata_to_store([path_a, path_b], tmp_path / "x.zarr", vocabulary="intersection", match_by="symbol")
    assert not (tmp_path / "x.zarr").exists()


def test_synthetic_store_is_realistic(tmp_path):
    path = synthetic_to_store(tmp_path / "syn.zarr", 2000, n_genes=2000, n_donors=10, progress=False)
    store = CellStore(path)
    meta = store.metadata
    density = meta["nnz"] / (meta["n_cells"] * meta["n_genes"])
    assert 0.03 < density < 0.3
    stored = ad.io.read_zarr(path)
    assert (stored.obs.groupby("donor_id", observed=True)["split"].nunique() == 1).all()  # donor-wise
    libraries = np.asarray(stored.X.sum(axis=1)).ravel()
    assert 500 < np.median(libraries) < 5000 and libraries.std() > 0.2 * libraries.mean()  # log-normal spread
    import scanpy as sc

    sc.pp.normalize_total(stored)
    sc.pp.log1p(stored)
    sc.pp.pca(stored, n_comps=20)
    from sklearn.metrics import silhouette_score

    assert silhouette_score(stored.obsm["X_pca"], stored.obs["cell_type"]) > 0.05  # cell types are separable


def test_synthetic_generation_is_the_same_for_any_number_of_processes(tmp_path):
    options = {"n_genes": 300, "n_donors": 8, "chunk_cells": 100, "progress": False}
    one = ad.io.read_zarr(synthetic_to_store(tmp_path / "one.zarr", 700, processes=1, **options))
    two = ad.io.read_zarr(synthetic_to_store(tmp_path / "two.zarr", 700, processes=2, **options))
    assert (one.X != two.X).nnz == 0 and one.obs.equals(two.obs)


@pytest.mark.parametrize("memory_mb", [1024, 0.0005])  # placed in one array / through buckets on disk
@pytest.mark.parametrize("backed", [True, False])  # validated while placed (one pass) / in a first pass
@pytest.mark.parametrize(("bad", "message"), [(np.nan, "NaN or infinite"), (2.5, "non-integer"), (-3.0, "negative")])
def test_bad_values_are_refused_on_either_path(two_files, tmp_path, memory_mb, backed, bad, message):
    _, _, a, _ = two_files
    a = a.copy()
    a.X.data[5] = bad
    a.write_h5ad(tmp_path / "bad.h5ad")
    source = tmp_path / "bad.h5ad" if backed else a
    name = "bad.h5ad" if backed else "anndata"
    with pytest.raises(InputError, match=rf"{name}: X: .*{message}"):
        anndata_to_store([source], tmp_path / "bad.zarr", memory_mb=memory_mb, chunk_rows=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5ad", "b.h5ad", "bad.h5ad"]  # no store, no buckets


@pytest.mark.parametrize("memory_mb", [1024, 0.0005])
@pytest.mark.parametrize(("largest", "dtype"), [(200, np.uint8), (70_000, np.uint32), (5e9, np.uint64)])
def test_counts_are_stored_in_the_narrowest_type_found_in_one_pass(two_files, tmp_path, memory_mb, largest, dtype):
    """A backed file is read once, placed as uint16; a larger count starts the placement again in a wider type."""
    _, _, a, _ = two_files
    a = a.copy()
    a.X.data[:] = np.minimum(a.X.data, 100)
    a.X.data[-7] = largest
    a.X = a.X.astype(np.float64)  # 5e9 is not a float32 integer
    a.write_h5ad(tmp_path / "wide.h5ad")
    out = anndata_to_store([tmp_path / "wide.h5ad"], tmp_path / "wide.zarr", memory_mb=memory_mb, chunk_rows=16)
    stored = ad.io.read_zarr(out)
    assert stored.X.dtype == dtype
    assert np.array_equal(stored.X.toarray(), a[stored.obs_names].X.toarray())


def test_unsorted_gene_indices_are_stored_sorted(tmp_path):
    """Rows whose column indices are out of order (legal in CSR) come out sorted, as the loader expects."""
    x = sp.random(40, 30, density=0.3, format="csr", random_state=0, dtype=np.float32)
    x.data = np.ceil(x.data * 10)
    expected = x.toarray()
    data, indices = x.data.copy(), x.indices.copy()
    for row in range(x.shape[0]):  # reverse each row's entries
        lo, hi = x.indptr[row], x.indptr[row + 1]
        indices[lo:hi], data[lo:hi] = x.indices[lo:hi][::-1], x.data[lo:hi][::-1]
    x = sp.csr_matrix((data, indices, x.indptr), shape=x.shape)
    assert not x.has_sorted_indices
    adata = ad.AnnData(x, obs=pd.DataFrame(index=[f"c{i}" for i in range(40)]))
    adata.var_names = [f"G{i}" for i in range(30)]
    adata.write_h5ad(tmp_path / "unsorted.h5ad")
    assert not ad.read_h5ad(tmp_path / "unsorted.h5ad").X.has_sorted_indices  # written as it was
    stored = ad.io.read_zarr(anndata_to_store([tmp_path / "unsorted.h5ad"], tmp_path / "sorted.zarr"))
    assert stored.X.has_sorted_indices
    assert np.array_equal(stored.X.toarray(), expected[[int(c[1:]) for c in stored.obs_names]])
