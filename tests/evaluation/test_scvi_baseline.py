"""The scVI baseline of the zero-shot evaluation: finite 64-d embeddings and knn/scvi, reconstruction/scvi scores on
the pbmc68k store, well above chance on cells of clearly separable types (also with a batch column, and seeded), the
same mask positions as a random-masking encoder, and a one-line refusal (exit 2) when scvi-tools is missing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse as sp

from cellssl.evaluation.scvi_baseline import ScviBaseline
from cellssl.evaluation.zero_shot import zero_shot_evaluation
from cellssl.masking import common_evaluation_mask
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
    prefix = "reconstruction_common_mask/scvi/"
    scores = {k: v for k, v in result.metrics.items() if k.startswith(prefix)}
    assert set(scores) == {f"{prefix}{k}" for k in ("weighted_ev", "uniform_ev", "mse", "uniform_mse")}
    assert all(np.isfinite(v) for v in scores.values()) and scores[f"{prefix}weighted_ev"] > 0
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
    assert result.metrics["knn/scvi/macro_f1"] > 0.9
    assert np.isfinite(result.metrics["reconstruction_common_mask/scvi/weighted_ev"])
    counts, batches = sp.csr_matrix(cells.X[:20]), np.array(["a", "b"] * 10)
    baseline = ScviBaseline.fit(counts, cells.var_names, batches, max_epochs=2)
    seen, unseen = baseline.embed(counts, np.array(["a"] * 20)), baseline.embed(counts, np.array(["new"] * 20))
    assert np.array_equal(seen, unseen)
    again = ScviBaseline.fit(counts, cells.var_names, batches, max_epochs=2).embed(counts, batches)
    assert np.array_equal(again, baseline.embed(counts, batches))  # seeded: the same run gives the same numbers


def test_scvi_is_scored_on_the_common_mask_like_every_encoder(pbmc_store, monkeypatch):
    """scVI's reconstruction is scored on exactly the entries of the common evaluation mask."""
    _needs_scvi()
    import cellssl.evaluation.scvi_baseline as scvi_baseline

    seen = {}
    original = scvi_baseline.scvi_reconstruction_scores

    def recording(baseline, counts, mask, **kwargs):
        seen["mask"] = mask
        return original(baseline, counts, mask, **kwargs)

    monkeypatch.setattr(scvi_baseline, "scvi_reconstruction_scores", recording)
    store = CellStore(pbmc_store)
    zero_shot_evaluation(None, store, "bulk_labels", baselines=["scvi"], scvi=FEW_EPOCHS, common_mask_seed=3)
    query, _ = store.read_split("test", 20_000)
    assert np.array_equal(seen["mask"], common_evaluation_mask(query.shape, 0.5, seed=3).numpy())


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
