"""Gene identifiers told apart, merged vocabularies refused or resolved in one line, measured genes recorded."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellssl.evaluation.transfer import align_genes
from cellssl.store import CellStore, InputError, prepare_store
from cellssl.store.vocabulary import GeneTable, is_ensembl_id

SYMBOLS = [f"S{i}" for i in range(10)]
ENSEMBL = [f"ENSG{i:011d}" for i in range(10)]


def counts(n_cells, var, seed=0):
    x = np.random.default_rng(seed).poisson(1.0, size=(n_cells, len(var))).astype(np.float32)
    x[:, 0] += 1  # no empty cells
    obs = pd.DataFrame(index=[f"c{seed}_{i}" for i in range(n_cells)])
    return ad.AnnData(sp.csr_matrix(x), obs=obs, var=var)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["ENSG00000141510", "ENSMUSG00000059552.3", "ENSDARG00000012345"], True),
        (["GeneID:7157", "GeneID:672"], False),
        (["7157", "672"], False),
        (["ENSG00000141510", "TP53"], False),  # one value that is not an id is enough
        (["ENSG0000014151"], False),  # ten digits
        ([], False),
    ],
)
def test_ensembl_gene_ids_are_recognised_by_shape(values, expected):
    assert is_ensembl_id(values) is expected


def test_ncbi_gene_ids_are_not_taken_for_ensembl_ids(caplog):
    caplog.set_level("INFO", logger="cellssl.store.vocabulary")
    var = pd.DataFrame({"gene_ids": [f"GeneID:{i}" for i in range(10)]}, index=SYMBOLS)
    table = GeneTable.from_var(var, "ncbi.h5ad")
    assert table.ensembl_ids is None and list(table.symbols) == SYMBOLS
    assert "ncbi.h5ad: var.gene_ids holds 10 values that are not Ensembl gene ids (e.g. 'GeneID:0')" in caplog.text
    named = GeneTable.from_var(pd.DataFrame({"gene_ids": [f"{e}.2" for e in ENSEMBL]}, index=SYMBOLS))
    assert list(named.ensembl_ids) == [f"{e}.2" for e in ENSEMBL]


def test_ncbi_file_merged_with_an_ensembl_file_matches_by_symbol(tmp_path):
    """The user's case: `gene_ids` of GeneID:… once made a zero-overlap union with duplicated symbols."""
    ncbi = counts(200, pd.DataFrame({"gene_ids": [f"GeneID:{i}" for i in range(8)]}, index=SYMBOLS[:8]))
    ensembl = counts(50, pd.DataFrame({"feature_name": SYMBOLS[4:]}, index=ENSEMBL[4:]), seed=1)
    ncbi.write_h5ad(tmp_path / "ncbi.h5ad")
    ensembl.write_h5ad(tmp_path / "ens.h5ad")
    out = prepare_store([tmp_path / "ncbi.h5ad", tmp_path / "ens.h5ad"], tmp_path / "u.zarr", vocabulary="union")
    store = CellStore(out)
    assert list(store.gene_names) == SYMBOLS and store.metadata["match_by"] == "symbol"
    assert [row["matched"] for row in store.metadata["gene_overlap"]] == [8, 6]


def test_sources_sharing_no_gene_are_refused_in_one_line(tmp_path):
    ncbi = counts(20, pd.DataFrame({"gene_ids": [f"GeneID:{i}" for i in range(8)]}, index=SYMBOLS[:8]))
    ensembl_only = counts(20, pd.DataFrame(index=ENSEMBL[4:]), seed=1)
    with pytest.raises(InputError) as error:
        prepare_store([ncbi, ensembl_only], tmp_path / "u.zarr", source_name="b.h5ad")
    message = str(error.value)
    assert message.startswith("b.h5ad: var: shares no gene with the other sources, matched by symbol")
    assert "\n" not in message and "match_by=ensembl" in message
    assert not list(tmp_path.iterdir())


def test_empty_intersection_names_the_real_config_key(tmp_path):
    a = counts(20, pd.DataFrame(index=SYMBOLS[:5]))
    b = counts(20, pd.DataFrame(index=SYMBOLS[5:]), seed=1)
    with pytest.raises(InputError, match="vocabulary is empty") as error:
        prepare_store([a, b], tmp_path / "i.zarr", vocabulary="intersection")
    assert "vocabulary=union" in str(error.value) and "mode=" not in str(error.value)


def test_a_symbol_shared_by_two_ensembl_genes_is_made_unique_with_a_log_line(tmp_path, caplog):
    caplog.set_level("INFO", logger="cellssl.store.vocabulary")
    symbols = ["A", "B", "B", "C"]
    a = counts(30, pd.DataFrame({"feature_name": symbols}, index=ENSEMBL[:4]))
    b = counts(30, pd.DataFrame({"feature_name": ["C", "D"]}, index=[ENSEMBL[3], ENSEMBL[5]]), seed=1)
    store = CellStore(prepare_store([a, b], tmp_path / "u.zarr"))
    assert list(store.gene_names) == ["A", "B", f"B_{ENSEMBL[2]}", "C", "D"]
    assert "1 genes share their symbol with an earlier gene" in caplog.text


def test_the_store_records_which_genes_each_source_measured(tmp_path):
    a = counts(30, pd.DataFrame(index=SYMBOLS[:6]))
    b = counts(20, pd.DataFrame(index=SYMBOLS[4:]), seed=1)
    store = CellStore(prepare_store([a, b], tmp_path / "u.zarr"))
    measured = store.measured_by_source()
    assert measured.shape == (2, 10)
    assert measured[0].tolist() == [True] * 6 + [False] * 4 and measured[1].tolist() == [False] * 4 + [True] * 6
    assert store.genes.n_sources_measured.tolist() == [1, 1, 1, 1, 2, 2, 1, 1, 1, 1] and store.genes.n_sources == 2
    assert store.genes.measured_in_all.tolist() == [False] * 4 + [True] * 2 + [False] * 4
    var = ad.io.read_zarr(store.path).var
    assert var["measured_in_all"].sum() == 2
    assert store.metadata["genes_measured_in_all"] == 2 and store.metadata["genes_unmeasured"] == 0
    assert [row["measured"] for row in store.metadata["gene_overlap"]] == [6, 6]


def test_transfer_report_counts_genes_zero_filled_at_prepare_time(tmp_path):
    genes = tmp_path / "genes.tsv"
    pd.DataFrame({"symbol": SYMBOLS}).to_csv(genes, sep="\t", index=False)
    a = counts(30, pd.DataFrame(index=SYMBOLS[:6]))  # genes S6-S9 of the list are zero-filled
    store = CellStore(prepare_store(a, tmp_path / "fixed.zarr", vocabulary=str(genes), match_by="symbol"))
    assert store.genes.measured.tolist() == [True] * 6 + [False] * 4 and store.metadata["genes_unmeasured"] == 4
    vocabulary = GeneTable(symbols=np.array(SYMBOLS[2:]), ensembl_ids=None)  # a model's 8 genes
    report = align_genes(store.genes, vocabulary, min_overlap=0.5).report()
    assert report["transfer/matched_genes"] == 8 and report["transfer/matched_genes_unmeasured"] == 4
    assert report["transfer/vocabulary_covered"] == 1.0 and report["transfer/vocabulary_covered_measured"] == 0.5
    with pytest.raises(InputError, match=r"only 4 of the 8 pretrained genes .* 4 of them zero-filled"):
        align_genes(store.genes, vocabulary, min_overlap=0.6)


def test_prepare_store_takes_an_anndata_a_path_or_a_list_of_both(tmp_path):
    a = counts(30, pd.DataFrame(index=SYMBOLS))
    b = counts(20, pd.DataFrame(index=SYMBOLS), seed=1)
    b.write_h5ad(tmp_path / "b.h5ad")
    one = CellStore(prepare_store(a, tmp_path / "a.zarr", label_columns=[]))
    both = CellStore(prepare_store([a, tmp_path / "b.h5ad"], tmp_path / "ab.zarr"))
    assert one.n_cells == 30 and one.metadata["source"] == "anndata" and both.n_cells == 50
