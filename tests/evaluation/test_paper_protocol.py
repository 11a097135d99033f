"""The paper's evaluation protocol and comparable reconstruction scores, on the real pbmc68k store: the kNN of
Richter et al.'s code (checked against their ``perform_knn``), ``evaluation=paper``, and reconstruction explained
variance under one common evaluation mask beside each model's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose

from cellssl.data import CellDataModule
from cellssl.data.context import data_context
from cellssl.evaluation.embed import log_normalized
from cellssl.evaluation.knn import knn_predict
from cellssl.evaluation.reconstruction import reconstruction_metrics
from cellssl.evaluation.zero_shot import zero_shot_evaluation
from cellssl.masking import FixedMasking, common_evaluation_mask
from cellssl.methods import build_model
from cellssl.model import CellSSLModel
from cellssl.store import CellStore
from helpers.reference import reference_module


def test_skip_nearest_knn_is_the_papers_perform_knn():
    pytest.importorskip("faiss", reason="the paper's kNN needs faiss (faiss-cpu, in the dev extra)")
    knn = reference_module("tester.classifier.kNN")
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=0.7, size=(4, 8))  # overlapping clusters: neighbours disagree
    labels = rng.integers(0, 4, size=300)
    reference = (centres[labels] + rng.normal(size=(300, 8))).astype(np.float32)
    query = (centres[rng.integers(0, 4, size=200)] + rng.normal(size=(200, 8))).astype(np.float32)
    theirs = knn.perform_knn(reference, labels, query, k=5, use_gpu=False)
    np.testing.assert_array_equal(knn_predict(reference, labels, query, k=5, skip_nearest=True), theirs)
    plain = knn_predict(reference, labels, query, k=5)
    assert (plain != theirs).any()  # dropping the nearest genuine neighbour changes some predictions


def test_paper_preset_uses_val_as_reference_and_the_papers_knn(hydra_conf):
    cfg = compose("evaluate", overrides=["evaluation=paper"])
    assert (cfg.evaluation.reference_split, cfg.evaluation.query_split, cfg.evaluation.k) == ("val", "test", 5)
    assert cfg.evaluation.skip_nearest is True
    assert compose("train", overrides=["evaluation=paper"]).evaluation.reference_split == "val"


def _mae(store: CellStore, context: dict, masking: dict) -> CellSSLModel:
    torch.manual_seed(0)
    config = {
        "_target_": "cellssl.methods.MaskedAutoencoder",
        "encoder": {"_target_": "cellssl.nets.MLPEncoder", "_partial_": True, "hidden_dims": [32], "embedding_dim": 8},
        "masking": masking,
    }
    return CellSSLModel(build_model(config, context))


@pytest.fixture(scope="module")
def pbmc(pbmc_store):
    datamodule = CellDataModule(str(pbmc_store), label_key="bulk_labels")
    datamodule.setup()
    return datamodule.store, data_context(datamodule.store, datamodule.label_key)


def test_common_mask_scores_every_model_on_the_same_entries_whatever_the_run_seed(pbmc):
    store, context = pbmc
    models = {
        "random 50 %": _mae(store, context, {"_target_": "cellssl.masking.RandomMasking", "rate": 0.5}),
        "random 15 %": _mae(store, context, {"_target_": "cellssl.masking.RandomMasking", "rate": 0.15}),
    }
    query, _ = store.read_split("test", None)
    expression = log_normalized(query)
    mask = common_evaluation_mask(expression.shape, 0.5, seed=0)
    assert 0.45 < mask.float().mean() < 0.55
    for name, model in models.items():
        runs = [zero_shot_evaluation(model, store, None, baselines=[], seed=seed).metrics for seed in (0, 3)]
        common = {k.rsplit("/", 1)[1]: v for k, v in runs[0].items() if k.startswith("reconstruction_common_mask/")}
        with torch.no_grad():
            predicted, hidden = model.module.reconstruct(torch.from_numpy(expression), masking=FixedMasking(mask))
        assert torch.equal(hidden, mask)
        assert common == pytest.approx(reconstruction_metrics(expression, predicted.numpy(), mask.numpy())), name
        for key in common:  # the common mask does not move with the run's seed; each model's own mask does
            assert (
                runs[1][f"reconstruction_common_mask/encoder/{key}"]
                == runs[0][f"reconstruction_common_mask/encoder/{key}"]
            )
        assert runs[1]["reconstruction/encoder/mse"] != runs[0]["reconstruction/encoder/mse"]  # each model's own does
