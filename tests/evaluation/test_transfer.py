"""Gene alignment for transfer: partial overlap, shuffled order, symbols vs Ensembl ids, and the refusal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from cellssl.data.normalize import log_normalize
from cellssl.evaluation.transfer import align_genes, checkpoint_vocabulary, translation_table
from cellssl.methods.finetune import FineTuneClassifier
from cellssl.store import InputError
from cellssl.store.vocabulary import GeneTable

SYMBOLS = ["CD3E", "MS4A1", "NKG7", "LYZ", "CD14", "GNLY"]
ENSEMBL = [
    "ENSG00000198851",
    "ENSG00000156738",
    "ENSG00000105374",
    "ENSG00000090382",
    "ENSG00000170458",
    "ENSG00000115523",
]


def vocabulary(with_ids: bool = True) -> GeneTable:
    return checkpoint_vocabulary({"gene_names": SYMBOLS, **({"gene_ids": ENSEMBL} if with_ids else {})})


def test_data_named_by_versioned_ensembl_ids_in_another_order_aligns_by_id():
    # the data has 4 of the 6 vocabulary genes, shuffled, Ensembl ids with version suffixes, plus 2 genes of its own
    order = [3, 0, 5, 1]
    ids = [f"{ENSEMBL[i]}.7" for i in order] + ["ENSG00000000003", "ENSG00000000005"]
    var = pd.DataFrame(index=ids)
    counts = sp.csr_matrix(np.arange(1, 13, dtype=np.float32).reshape(2, 6))
    alignment = align_genes(GeneTable.from_var(var), vocabulary(), min_overlap=0.5)
    assert alignment.match_by == "ensembl" and alignment.n_matched == 4
    assert alignment.vocabulary_covered == pytest.approx(4 / 6)
    aligned = alignment.apply_csr(counts).toarray()
    expected = np.zeros((2, 6), dtype=np.float32)
    expected[:, order] = counts.toarray()[:, :4]  # vocabulary genes 2 (NKG7) and 4 (CD14) are zero-filled
    np.testing.assert_array_equal(aligned, expected)
    dense = alignment.apply_dense(torch.from_numpy(counts.toarray()))
    np.testing.assert_array_equal(dense.numpy(), expected)
    report = alignment.report()
    assert report["transfer/matched_genes"] == 4 and report["transfer/data_genes"] == 6
    # a classifier fine-tuned on this data sees its batches in the vocabulary's genes
    model = FineTuneClassifier(n_genes=6, n_classes=2, class_counts=[1, 1])
    model.gene_alignment = alignment
    batch = {"counts": torch.from_numpy(counts.toarray()).to_sparse_csr()}
    expected_normalized = log_normalize(torch.from_numpy(expected))
    torch.testing.assert_close(model.normalized(batch), expected_normalized)
    assert model.logits(model.normalized(batch)).shape == (2, 2)


def test_symbols_against_an_ensembl_only_vocabulary_are_translated_by_the_gene_table():
    ensembl_only = GeneTable(symbols=np.array(ENSEMBL), ensembl_ids=np.array(ENSEMBL))
    data = GeneTable.from_var(pd.DataFrame(index=["GNLY", "LYZ", "CD3E", "NOT_A_GENE"]))
    table = translation_table("bundled")
    alignment = align_genes(data, ensembl_only, translation=table, min_overlap=0.3)
    assert alignment.n_matched == 3
    assert dict(zip(alignment.source_columns, alignment.target_columns, strict=True)) == {0: 5, 1: 3, 2: 0}
    with pytest.raises(InputError, match="only 0 of the 6"):
        align_genes(data, ensembl_only, translation=None, min_overlap=0.3)  # nothing to translate with


def test_too_small_an_overlap_is_refused_with_the_fix():
    data = GeneTable.from_var(pd.DataFrame(index=["CD3E", "OTHER1", "OTHER2"]))
    with pytest.raises(InputError) as error:
        align_genes(data, vocabulary(with_ids=False), match_by="symbol", min_overlap=0.5, source="query.h5ad")
    message = str(error.value)
    assert message.startswith("query.h5ad: var: only 1 of the 6 pretrained genes (16.7%)")
    assert "transfer.min_overlap" in message and "\n" not in message
    assert align_genes(data, vocabulary(with_ids=False), min_overlap=0.1).n_matched == 1


def test_genes_zero_filled_in_the_store_are_reported_and_not_counted_as_found():
    """A store's genes carry how many of its sources measured each gene; translation keeps that."""
    measured = np.array([2, 0, 1, 2, 0, 2])  # of 2 sources: MS4A1 and CD14 zero-filled everywhere, NKG7 in one
    data = GeneTable(symbols=np.array(SYMBOLS), ensembl_ids=None, n_sources_measured=measured, n_sources=2)
    ensembl_only = GeneTable(symbols=np.array(ENSEMBL), ensembl_ids=np.array(ENSEMBL))
    alignment = align_genes(data, ensembl_only, translation=translation_table("bundled"), min_overlap=0.5)
    report = alignment.report()
    assert report["transfer/matched_genes"] == 6 and report["transfer/matched_genes_unmeasured"] == 2
    assert report["transfer/matched_genes_partly_measured"] == 1
    assert report["transfer/vocabulary_covered"] == 1.0
    assert report["transfer/vocabulary_covered_measured"] == pytest.approx(4 / 6)
    with pytest.raises(InputError, match="only 4 of the 6 pretrained genes"):
        align_genes(data, ensembl_only, translation=translation_table("bundled"), min_overlap=0.8)
