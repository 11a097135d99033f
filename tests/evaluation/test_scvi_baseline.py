"""The scVI baseline of the zero-shot evaluation: finite 64-d embeddings and knn/scvi, reconstruction/scvi scores on
the pbmc68k store, well above chance on cells of clearly separable types (also with a batch column, and seeded), the
same mask positions as a random-masking encoder, and a one-line refusal (exit 2) when scvi-tools is missing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hydra import compose
from omegaconf import OmegaConf

from cellssl.data.context import data_context
from cellssl.evaluation.embed import log_normalized
from cellssl.evaluation.scvi_baseline import ScviBaseline, evaluation_mask
from cellssl.evaluation.zero_shot import zero_shot_evaluation
from cellssl.methods import build_model
from cellssl.store import CellStore, prepare_store
from cellssl.tasks.evaluate import evaluate
from helpers.apps import evaluate_config
from helpers.cells import separable_cells

FEW_EPOCHS = {"max_epochs": 15, "n_samples": 5}


def _needs_scvi():
    pytest.importorskip("scvi", reason="scvi-tools is an optional extra: pip install cellssl[scvi]")


def test_scvi_embeds_and_scores_on_pbmc68k(pbmc_store):
    _needs_scvi()
    store = CellStore(pbmc_store)
    result = zero_shot_evaluation(None, store, "bulk_labels", baselines=["pca", "scvi"], scvi=FEW_EPOCHS)
    embedding = result.query_embeddings["scvi"]
    assert embedding.shape == (result.metrics["eval/n_query"], 64) and np.isfinite(embedding).all()
    assert 0 < result.metrics["knn/scvi/macro_f1"] <= 1 and 0 < result.metrics["knn/scvi/accuracy"] <= 1
    scores = {k: v for k, v in result.metrics.items() if k.startswith("reconstruction/scvi/")}
    assert set(scores) == {f"reconstruction/scvi/{k}" for k in ("weighted_ev", "uniform_ev", "mse", "uniform_mse")}
    assert all(np.isfinite(v) for v in scores.values()) and scores["reconstruction/scvi/weighted_ev"] > 0
    assert "scVI" in set(result.table["representation"])


def test_scvi_types_clearly_separable_cells_well_above_chance(tmp_path):
    _needs_scvi()
    store = CellStore(prepare_store(separable_cells(), tmp_path / "separable.zarr", label_columns=["cell_type"]))
    result = zero_shot_evaluation(None, store, "cell_type", baselines=["scvi"], scvi=FEW_EPOCHS, reconstruction=False)
    assert result.metrics["knn/scvi/macro_f1"] > 0.9  # chance: 1/3
    assert not any(k.startswith("reconstruction/") for k in result.metrics)


def test_scvi_with_a_batch_column_embeds_cells_of_unseen_batches(tmp_path):
    """The decoder takes the batch, the encoder does not: a query cell's latent is the same whatever its batch."""
    _needs_scvi()
    cells = separable_cells(n_batches=2)
    path = prepare_store(cells, tmp_path / "batches.zarr", label_columns=["cell_type", "batch"])
    store = CellStore(path)
    settings = {**FEW_EPOCHS, "batch_key": "batch"}
    result = zero_shot_evaluation(None, store, "cell_type", baselines=["scvi"], scvi=settings)
    assert result.metrics["knn/scvi/macro_f1"] > 0.9 and np.isfinite(result.metrics["reconstruction/scvi/weighted_ev"])
    counts, batches = sp.csr_matrix(cells.X[:20]), np.array(["a", "b"] * 10)
    baseline = ScviBaseline.fit(counts, cells.var_names, batches, max_epochs=2)
    seen, unseen = baseline.embed(counts, np.array(["a"] * 20)), baseline.embed(counts, np.array(["new"] * 20))
    assert np.array_equal(seen, unseen)
    again = ScviBaseline.fit(counts, cells.var_names, batches, max_epochs=2).embed(counts, batches)
    assert np.array_equal(again, baseline.embed(counts, batches))  # seeded: the same run gives the same numbers


def test_scvi_is_scored_on_a_random_masking_encoders_entries(hydra_conf, pbmc_store):
    """The scVI reconstruction's mask is the one the default masked autoencoder draws in the evaluation (same seed)."""
    store = CellStore(pbmc_store)
    config = compose("train", overrides=["model=mae"])
    module = build_model(OmegaConf.to_container(config.model, resolve=True), data_context(store, None))
    query, _ = store.read_split("test", None)
    expression = torch.from_numpy(log_normalized(query))
    _, encoder_mask = module.reconstruct(expression, torch.Generator().manual_seed(3))
    rate = config.model.masking.rate
    assert np.array_equal(evaluation_mask(tuple(expression.shape), rate, seed=3), encoder_mask.numpy())


def test_scvi_requested_without_scvi_tools_is_one_line_and_exit_2(tmp_path, pbmc_store, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "scvi", None)  # `import scvi` raises ImportError
    cfg = evaluate_config(tmp_path, pbmc_store, "evaluation.baselines=[pca,scvi]")
    with pytest.raises(SystemExit) as exit_info:
        evaluate(cfg)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error
    assert "evaluation.baselines" in error and "pip install cellssl[scvi]" in error
    assert not (tmp_path / "out" / "metrics.json").exists()
