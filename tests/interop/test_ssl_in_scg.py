"""Checkpoints of the paper's released code (ssl_in_scg) imported into cellssl: their own modules are built, saved
in their layout by a real Lightning Trainer (or Barlow Twins' own ``save_model``), imported, and cellssl's
embeddings, reconstructions and class probabilities on the same raw counts must equal theirs (their input: the
counts normalised by scanpy to 10,000 per cell, then log1p, as in the scTab store they trained on)."""

from __future__ import annotations

import anndata as ad
import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import cellssl
from cellssl.data.normalize import log_normalize
from cellssl.store.sources import load_pbmc68k
from cellssl.tasks import config_dir
from cellssl.tasks.embed import embed_file
from cellssl.tasks.evaluate import evaluate
from cellssl.tasks.import_checkpoint import import_checkpoint
from helpers.apps import evaluate_config
from helpers.reference import reference_module

N_GENES, UNITS = 50, [32, 24, 16]
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def theirs():
    return reference_module("models.lightning_modules.cellnet_autoencoder")


def _cells(n_genes: int = N_GENES, n_cells: int = 64, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    counts = rng.negative_binomial(2, 0.3, size=(n_cells, n_genes)).astype(np.float32)
    adata = ad.AnnData(counts)
    adata.var_names = [f"GENE{i}" for i in range(n_genes)]
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    return adata


def _their_input(adata: ad.AnnData) -> torch.Tensor:
    normalised = adata.copy()
    sc.pp.normalize_total(normalised, target_sum=1e4)
    sc.pp.log1p(normalised)
    values = normalised.X.toarray() if sp.issparse(normalised.X) else normalised.X
    return torch.from_numpy(np.asarray(values, dtype=np.float32))


def _save_lightning(module: pl.LightningModule, path) -> None:
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)


def _var(tmp_path, adata: ad.AnnData):
    path = tmp_path / "var.parquet"
    pd.DataFrame({"feature_name": adata.var_names}).to_parquet(path)
    return path


def _config(name: str, tmp_path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            name,
            overrides=[f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / name}", *overrides],
        )
    GlobalHydra.instance().clear()
    return cfg


def _imported(tmp_path, checkpoint, genes, *overrides: str):
    output = tmp_path / f"{checkpoint.stem}.cellssl.ckpt"
    import_checkpoint(
        _config("import", tmp_path, f"checkpoint={checkpoint}", f"genes={genes}", f"output={output}", *overrides)
    )
    return cellssl.load(output)


def _fixed(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():  # nonzero biases and per-gene dispersions, so a dropped or misplaced tensor shows
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return module.eval()


def _autoencoder_kwargs(**kwargs):
    return {"gene_dim": N_GENES, "units_encoder": UNITS, "train_set_size": 64, "val_set_size": 64, **kwargs}


@pytest.mark.parametrize("name", ["MLPAutoEncoder", "MLPNegBin"])
def test_autoencoders_embed_and_reconstruct_as_theirs(theirs, name, tmp_path):
    adata = _cells()
    their = _fixed(getattr(theirs, name)(**_autoencoder_kwargs(batch_size=32, units_decoder=[24, 32])))
    _save_lightning(their, tmp_path / "their.ckpt")
    model = _imported(tmp_path, tmp_path / "their.ckpt", _var(tmp_path, adata))

    x = _their_input(adata)
    with torch.no_grad():
        their_out = their(x)
        ours = model.module.predict_expression(log_normalize(torch.from_numpy(adata.X)))
    np.testing.assert_allclose(model.embed(adata), their_out[0].numpy(), **TOLERANCE)
    np.testing.assert_allclose(ours.numpy(), their_out[1].numpy(), **TOLERANCE)  # reconstruction / NB mean
    expected = "nb_log1p" if name == "MLPNegBin" else "mse"
    assert model.module.reconstruction_loss == expected and model.module.target_sum == 1e4
    assert model.module.model_config["encoder"]["activation"] == "SELU"


def test_classifier_embeds_and_predicts_as_theirs(theirs, tmp_path):
    adata = _cells()
    n_types = 4
    their = theirs.MLPClassifier(
        gene_dim=N_GENES,
        type_dim=n_types,
        class_weights=np.arange(1, n_types + 1, dtype=np.float32),
        child_matrix=np.eye(n_types),
        units=UNITS,
        train_set_size=64,
        val_set_size=64,
        batch_size=32,
        dropout=0.1,
    )
    _fixed(their)
    _save_lightning(their, tmp_path / "clf.ckpt")
    (tmp_path / "classes.txt").write_text("".join(f"type {i}\n" for i in range(n_types)))
    model = _imported(tmp_path, tmp_path / "clf.ckpt", _var(tmp_path, adata), f"classes={tmp_path / 'classes.txt'}")

    x = _their_input(adata)
    with torch.no_grad():
        logits, embedding = their(x), their.forward_embedding(x)
    np.testing.assert_allclose(model.embed(adata), embedding.numpy(), **TOLERANCE)
    proba = model.predict_proba(adata)
    np.testing.assert_allclose(proba.to_numpy(), torch.softmax(logits, 1).numpy(), **TOLERANCE)
    assert list(proba.columns) == [f"type {i}" for i in range(n_types)]
    assert model.module.class_weights.tolist() == [1.0, 2.0, 3.0, 4.0]  # their class weights kept


def test_byol_embeds_projects_and_predicts_as_theirs(theirs, tmp_path):
    adata = _cells()
    their = theirs.MLPBYOL(**_autoencoder_kwargs(batch_size=8, use_momentum=True))
    _fixed(their)
    _save_lightning(their, tmp_path / "byol.ckpt")
    model = _imported(tmp_path, tmp_path / "byol.ckpt", _var(tmp_path, adata))

    x = _their_input(adata)
    with torch.no_grad():
        projection, representation = their.byol.online_encoder(x)
        prediction = their.byol.online_predictor(projection)
        target = their.byol.target_encoder(x, return_projection=False)
        byol = model.module  # the same input as theirs: the networks alone are compared (the embedding: all)
        ours_projection = byol.projector(byol.encoder(x))
        ours_prediction, ours_target = byol.predictor(ours_projection), byol.target_encoder(x)
    embedding = model.embed(adata)
    np.testing.assert_allclose(embedding, representation.numpy(), **TOLERANCE)
    assert embedding.shape == (adata.n_obs, UNITS[-2])  # BYOL reads their encoder's last hidden layer
    np.testing.assert_allclose(ours_projection.numpy(), projection.numpy(), **TOLERANCE)
    np.testing.assert_allclose(ours_prediction.numpy(), prediction.numpy(), **TOLERANCE)
    np.testing.assert_allclose(ours_target.numpy(), target.numpy(), **TOLERANCE)
    their_target = their.byol.target_encoder.projector[3].weight
    assert torch.equal(byol.target_projector[4].weight, their_target)


def test_barlow_twins_as_theirs_from_either_file(theirs, tmp_path):
    adata = _cells()
    kwargs = _autoencoder_kwargs(batch_size=32, CHECKPOINT_PATH=str(tmp_path))
    their = theirs.MLPBarlowTwins(**{**kwargs, "units_encoder": [32, 64]})  # their projector takes 64 inputs
    _fixed(their)
    _save_lightning(their, tmp_path / "bt.ckpt")  # hyper_parameters pickle nn.SELU and torch.optim.AdamW
    their.barlow_twins.save_model(str(tmp_path / "last_checkpoint.ckpt"))  # their own, bare state dict
    genes = _var(tmp_path, adata)

    x = _their_input(adata)
    with torch.no_grad():
        embedding = their.barlow_twins.backbone(x)
        projection = their.barlow_twins.projector(embedding)
    for file in ("bt.ckpt", "last_checkpoint.ckpt"):
        model = _imported(tmp_path, tmp_path / file, genes)
        np.testing.assert_allclose(model.embed(adata), embedding.numpy(), **TOLERANCE)
        with torch.no_grad():
            ours = model.module.projector(torch.from_numpy(model.embed(adata)))
        np.testing.assert_allclose(ours.numpy(), projection.numpy(), **TOLERANCE)


def test_imported_checkpoint_runs_in_embed_and_evaluate(theirs, tmp_path, pbmc_store):
    adata = load_pbmc68k()
    kwargs = {**_autoencoder_kwargs(batch_size=32, units_decoder=[]), "gene_dim": adata.n_vars}
    their = _fixed(theirs.MLPAutoEncoder(**kwargs))  # units_decoder=[]: their training script's default
    _save_lightning(their, tmp_path / "mae.ckpt")
    (tmp_path / "genes.txt").write_text("\n".join(adata.var_names) + "\n")
    model = _imported(tmp_path, tmp_path / "mae.ckpt", tmp_path / "genes.txt")
    imported = model.checkpoint
    with torch.no_grad():
        expected = their.encoder(_their_input(adata)).numpy()  # pbmc68k: sparse counts
    np.testing.assert_allclose(model.embed(adata), expected, **TOLERANCE)

    adata.write_h5ad(tmp_path / "cells.h5ad")
    embed_file(
        _config(
            "embed",
            tmp_path,
            "~logger",
            "umap.enabled=false",
            f"pretrained={imported}",
            f"input={tmp_path / 'cells.h5ad'}",
            f"output={tmp_path / 'embedded.h5ad'}",
        )
    )
    np.testing.assert_allclose(ad.read_h5ad(tmp_path / "embedded.h5ad").obsm["X_cellssl"], expected, **TOLERANCE)
    metrics = evaluate(evaluate_config(tmp_path, pbmc_store, f"pretrained={imported}", "evaluation.baselines=[]"))
    assert 0.0 <= metrics["knn/encoder/macro_f1"] <= 1.0
    assert np.isfinite(metrics["reconstruction/encoder/weighted_ev"])  # scored as a masked autoencoder


def _refused(tmp_path, capsys, *overrides: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        import_checkpoint(_config("import", tmp_path, *overrides))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error
    return error


def test_bad_input_is_one_line_and_exit_2(theirs, tmp_path, capsys):
    adata = _cells()
    their = _fixed(theirs.MLPAutoEncoder(**_autoencoder_kwargs(batch_size=32, units_decoder=[])))
    _save_lightning(their, tmp_path / "their.ckpt")
    genes = _var(tmp_path, adata)
    (tmp_path / "short.txt").write_text("\n".join(adata.var_names[:-1]))
    torch.save({"state_dict": {"weird.0.weight": torch.zeros(2, 2)}}, tmp_path / "other.ckpt")
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    (tmp_path / "existing.ckpt").write_bytes(b"keep")

    error = _refused(tmp_path, capsys, f"checkpoint={tmp_path / 'missing.ckpt'}", f"genes={genes}")
    assert "missing.ckpt" in error and "no such file" in error
    error = _refused(tmp_path, capsys, f"checkpoint={tmp_path / 'their.ckpt'}", f"genes={tmp_path / 'short.txt'}")
    assert "short.txt" in error and "49 genes" in error and "50 inputs" in error and "var.parquet" in error
    error = _refused(tmp_path, capsys, f"checkpoint={tmp_path / 'other.ckpt'}", f"genes={genes}")
    assert "other.ckpt" in error and "not a layout of ssl_in_scg" in error and "weird.0.weight" in error
    error = _refused(tmp_path, capsys, f"checkpoint={tmp_path / 'text.ckpt'}", f"genes={genes}")
    assert "text.ckpt" in error and "unreadable" in error
    classes = f"classes={tmp_path / 'short.txt'}"  # 49 names for an autoencoder: classes only fit classifiers
    error = _refused(tmp_path, capsys, f"checkpoint={tmp_path / 'their.ckpt'}", f"genes={genes}", classes)
    assert "short.txt" in error and "classes" in error and "has no classifier" in error
    output = f"output={tmp_path / 'existing.ckpt'}"
    error = _refused(tmp_path, capsys, f"checkpoint={tmp_path / 'their.ckpt'}", f"genes={genes}", output)
    assert "existing.ckpt" in error and "already exists" in error
    assert (tmp_path / "existing.ckpt").read_bytes() == b"keep"
    error = _refused(tmp_path, capsys, "source=scgpt", f"checkpoint={tmp_path / 'their.ckpt'}", f"genes={genes}")
    assert "source" in error and "'scgpt'" in error and "ssl_in_scg" in error
    assert not list(tmp_path.glob("import/checkpoints/*"))  # nothing half-written
