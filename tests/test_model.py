"""The notebook API on real checkpoints and real pbmc68k counts: ``cellssl.load(...).embed/predict/predict_proba``
take AnnData (dense, sparse, layers, backed), .h5ad paths and stores, align genes, normalise as in training and
refuse what they cannot use with one line."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import cellssl
from cellssl.data.dataset import batch_from_csr
from cellssl.data.normalize import normalized_dense
from cellssl.store import CellStore, InputError
from cellssl.store.sources import load_pbmc68k


@pytest.fixture(scope="module")
def pbmc() -> ad.AnnData:
    """pbmc68k's raw counts (sparse, genes by symbol) and its labels."""
    return load_pbmc68k()


def _training_embedding(module, counts: sp.csr_matrix) -> np.ndarray:
    """What the encoder gives on a batch normalised by the training step's own code."""
    batch = batch_from_csr(sp.csr_matrix(counts), np.arange(counts.shape[0]))
    with torch.no_grad():
        return module.eval().encoder(normalized_dense(batch, module.target_sum)).numpy()


def test_embed_normalises_as_in_training(checkpoints, pbmc):
    model = cellssl.load(checkpoints["mae"], device="cpu")
    embedding = model.embed(pbmc, batch_size=97)  # blocks that do not divide the cells
    assert embedding.shape == (pbmc.n_obs, 64) and embedding.dtype == np.float32
    np.testing.assert_allclose(embedding, _training_embedding(model.module, pbmc.X), rtol=1e-4, atol=1e-5)
    assert model.gene_overlap["transfer/vocabulary_covered"] == 1.0
    # the raw network on unnormalised counts is not the embedding, so the model refuses them
    counts = torch.from_numpy(pbmc.X.toarray()).float()
    assert not np.allclose(model.module.encoder(counts).detach().numpy(), embedding, atol=1e-2)
    with pytest.raises(ValueError, match="not raw counts"):
        model.module(counts)


def test_every_input_form_gives_the_same_embedding(checkpoints, pbmc, pbmc_store, tmp_path):
    model = cellssl.load(checkpoints["mae"], device="cpu")
    expected = model.embed(pbmc)
    dense = ad.AnnData(X=pbmc.X.toarray(), obs=pbmc.obs, var=pbmc.var)
    layered = ad.AnnData(X=np.zeros(pbmc.shape, np.float32), obs=pbmc.obs, var=pbmc.var, layers={"counts": pbmc.X})
    pbmc.write_h5ad(tmp_path / "pbmc.h5ad")
    backed = ad.read_h5ad(tmp_path / "pbmc.h5ad", backed="r")
    for data, layer in ((dense, None), (layered, "counts"), (backed, None), (tmp_path / "pbmc.h5ad", None)):
        np.testing.assert_allclose(model.embed(data, layer=layer), expected, rtol=1e-4, atol=1e-5)
    store = CellStore(pbmc_store)
    rows = store.read_rows(0, store.n_cells)
    np.testing.assert_allclose(model.embed(pbmc_store), _training_embedding(model.module, rows), rtol=1e-4, atol=1e-5)


def test_genes_are_aligned_by_ensembl_id_in_any_order(checkpoints, pbmc):
    model = cellssl.load(checkpoints["mae"], device="cpu")
    keep = np.random.default_rng(0).permutation(pbmc.n_vars)[: int(0.8 * pbmc.n_vars)]  # 80 %, shuffled
    subset = pbmc[:, keep].copy()
    table = model.translation
    to_ensembl = dict(zip(table.symbols, table.ensembl_ids, strict=True))
    subset.var["gene_ids"] = [to_ensembl.get(s, f"ENSG{90000000000 + i:011d}") for i, s in enumerate(subset.var_names)]
    subset.var_names = subset.var["gene_ids"].to_numpy()  # named by Ensembl id only, as 10x files are
    embedding = model.embed(subset)
    assert (
        model.gene_overlap["transfer/matched_genes"] == np.isin(pbmc.var_names[keep], model.translation.symbols).sum()
    )
    zero_filled = sp.lil_matrix(pbmc.shape, dtype=np.float32)
    known = np.isin(pbmc.var_names[keep], table.symbols)
    zero_filled[:, keep[known]] = subset.X[:, known]
    np.testing.assert_allclose(embedding, model.embed(ad.AnnData(zero_filled.tocsr(), var=pbmc.var)), atol=1e-5)


def test_normalised_input_is_refused_unless_told(checkpoints, pbmc):
    model = cellssl.load(checkpoints["mae"], device="cpu")
    normalised = pbmc.copy()
    totals = np.asarray(pbmc.X.sum(axis=1)).ravel()
    normalised.X = sp.csr_matrix(sp.diags(1e4 / totals) @ pbmc.X).log1p().astype(np.float32)
    with pytest.raises(InputError, match="normalised=True"):
        model.embed(normalised)
    np.testing.assert_allclose(model.embed(normalised, normalised=True), model.embed(pbmc), rtol=1e-4, atol=1e-4)


def test_predict_and_predict_proba_name_the_training_classes(checkpoints, pbmc, pbmc_store):
    classifier = cellssl.load(checkpoints["classifier"], device="cpu")
    classes = CellStore(pbmc_store).labels("bulk_labels")[1]  # in the order of the classifier's outputs
    assert classifier.classes == classes and set(classes) == set(pbmc.obs["bulk_labels"].astype(str))
    proba = classifier.predict_proba(pbmc)
    assert list(proba.columns) == classes and list(proba.index) == list(pbmc.obs_names)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    predicted = classifier.predict(pbmc)
    assert list(predicted.categories) == classes
    assert (np.asarray(predicted) == proba.idxmax(axis=1).to_numpy()).all()
    pbmc.obs["cellssl_label"] = predicted  # as a notebook user writes it
    assert pbmc.obs["cellssl_label"].notna().all()
    with pytest.raises(TypeError, match="no classifier head"):
        cellssl.load(checkpoints["mae"]).predict(pbmc)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04 truncated zip"])
def test_unreadable_checkpoints_are_one_line_input_errors(tmp_path, content):
    path = tmp_path / "last.ckpt"
    path.write_bytes(content)
    with pytest.raises(InputError) as error:
        cellssl.load(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(InputError, match="no such file"):
        cellssl.load(tmp_path / "missing.ckpt")
