"""Evaluation while pretraining (cellssl.callbacks.OnlineEvaluation) in real `cellssl-train` runs (the train task in
process, CSV logger) on a small separable store: the online scores are logged at the configured steps and equal
the zero-shot path computed by hand on the same cells; UMAPs every M evaluations (files, TensorBoard); off without
labels, on with a labelled reference store whose genes differ from the training store's; the time budget holds."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cellssl.data.cells import matrix_cells
from cellssl.evaluation.classification import score_classification
from cellssl.evaluation.knn import knn_predict
from cellssl.methods import load_pretrained
from cellssl.model import CellSSLModel
from cellssl.store import CellStore, prepare_store
from cellssl.tasks.train import train
from helpers.cells import separable_cells

# 3 types x 200 cells: train 420 cells (batch 32: 14 steps per epoch), val 90 cells (kNN 45 -> 45)
N_PER_TYPE, BATCH = 200, 32


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """A labelled and an unlabelled store of the same cells, and a labelled reference store of other cells whose
    genes are the training genes in reverse order with a fifth left out (the gene alignment has work to do)."""
    root = tmp_path_factory.mktemp("online")
    cells = separable_cells(n_per_type=N_PER_TYPE)
    reference = separable_cells(n_per_type=N_PER_TYPE, seed=1)
    reference = reference[:, reference.var_names[::-1][: int(0.8 * reference.n_vars)]].copy()
    return {
        "labelled": prepare_store(cells, root / "labelled.zarr", label_columns=["cell_type"], seed=0),
        "unlabelled": prepare_store(cells, root / "unlabelled.zarr", seed=0),
        "reference": prepare_store(reference, root / "reference.zarr", label_columns=["cell_type"], seed=0),
    }


def run_train(root: Path, store: Path, *overrides: str) -> Path:
    """`cellssl-train` in process with the CSV logger and no final evaluation; its run directory."""
    base = [
        "logger=csv",
        "data=zarr",
        f"data.batch_size={BATCH}",
        "data.block_size=32",
        "trainer.enable_progress_bar=false",
        "trainer.max_epochs=2",
        "evaluation.enabled=false",
        "model.encoder.hidden_dims=[64]",
        "model.encoder.embedding_dim=16",
        "model.optimizer.lr=0.01",
    ]
    cfg = compose("train", overrides=[*base, *overrides])
    with open_dict(cfg):
        cfg.paths.root_dir, cfg.paths.output_dir = str(root), str(root / "run")
        cfg.data.store_path = str(store)
    train(cfg)
    return root / "run"


def online_rows(run_dir: Path) -> pd.DataFrame:
    metrics = pd.read_csv(run_dir / "csv" / "metrics.csv")
    if "online/knn_macro_f1" not in metrics:
        return metrics.iloc[:0]
    return metrics.dropna(subset=["online/knn_macro_f1"]).set_index("step")


def macro_f1_by_hand(run_dir: Path, store_path: Path) -> float:
    """kNN macro F1 of the trained model's embedding (``cellssl.load(...).embed``, which aligns the store's genes to
    the model's) of the val split's cells: the first half the reference, the second half the query."""
    store = CellStore(store_path)
    counts, rows = store.read_split("val")
    codes, names = store.labels("cell_type")
    model = CellSSLModel(load_pretrained(run_dir / "checkpoints" / "last.ckpt"))
    embedding = model.embed(matrix_cells(counts, store.genes, str(store.path)))
    labels, n = codes[rows], len(rows) // 2
    predicted = knn_predict(embedding[:n], labels[:n], embedding[n:], k=5)
    return score_classification(labels[n:], predicted, names).metrics["macro_f1"]


def test_scores_at_the_configured_steps_equal_the_zero_shot_path_and_umaps_every_m(hydra_conf, stores, tmp_path):
    run_dir = run_train(
        tmp_path,
        stores["labelled"],
        "data.label_key=cell_type",
        "callbacks.online_evaluation.every_n_steps=5",
        "callbacks.online_evaluation.umap_every=3",
        "callbacks.online_evaluation.max_overhead=null",
        "+logger.tensorboard._target_=lightning.pytorch.loggers.TensorBoardLogger",
        f"+logger.tensorboard.save_dir={tmp_path / 'run'}",
        "+logger.tensorboard.name=tb",
        "+logger.tensorboard.version=''",
    )
    rows = online_rows(run_dir)
    # the start (the untrained encoder), every 5 steps and each epoch end (14 steps an epoch), each step once
    assert list(rows.index) == [0, 5, 10, 14, 15, 20, 25, 28]
    assert rows["online/eval_s"].gt(0).all() and rows["online/knn_macro_f1"].between(0, 1).all()
    ev = rows["online/reconstruction_ev"]
    assert ev.iloc[0] < 0.2 < ev.iloc[-1]  # the masked autoencoder learns to reconstruct
    # the last evaluation by hand, through the public embedding path: equal, and high on separable cell types
    assert rows["online/knn_macro_f1"].iloc[-1] == pytest.approx(macro_f1_by_hand(run_dir, stores["labelled"]))
    assert rows["online/knn_macro_f1"].iloc[-1] > 0.9
    # a UMAP at evaluations 0, 3 and 6 (steps 0, 14 and 25)
    umaps = sorted(p.name for p in (run_dir / "online_eval").glob("*.png"))
    assert umaps == ["umap_step0000000.png", "umap_step0000014.png", "umap_step0000025.png"]
    assert all((run_dir / "online_eval" / name).stat().st_size > 5_000 for name in umaps)
    # the same scores and the UMAPs in TensorBoard's event file
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert [event.step for event in events.Scalars("online/knn_macro_f1")] == list(rows.index)
    assert [event.step for event in events.Images("online/umap")] == [0, 14, 25]


def test_off_without_labels_on_with_a_labelled_reference_store(hydra_conf, stores, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cellssl.callbacks"):
        run_dir = run_train(tmp_path / "unlabelled", stores["unlabelled"], "trainer.max_epochs=1")
    assert online_rows(run_dir).empty
    assert any("online evaluation off: no labels" in r.getMessage() for r in caplog.records)
    run_dir = run_train(
        tmp_path / "reference",
        stores["unlabelled"],
        "trainer.max_epochs=1",
        f"callbacks.online_evaluation.reference_store={stores['reference']}",
        "callbacks.online_evaluation.max_overhead=null",
        "callbacks.online_evaluation.label_key=cell_type",
    )
    rows = online_rows(run_dir)
    assert list(rows.index) == [0, 14]
    assert np.isfinite(rows["online/reconstruction_ev"]).all()
    assert rows["online/knn_macro_f1"].iloc[-1] == pytest.approx(macro_f1_by_hand(run_dir, stores["reference"]))


def test_evaluations_are_skipped_to_keep_their_time_under_max_overhead(hydra_conf, stores, tmp_path):
    """An evaluation after every step of a tiny model would cost as much as the training: the budget (5 %) skips
    most of them, the time spent evaluating stays within 5 % of the training time (plus the evaluation that
    crossed it and the final one), and the trained model is evaluated at the end all the same."""
    run_dir = run_train(
        tmp_path,
        stores["labelled"],
        "data.label_key=cell_type",
        "trainer.max_epochs=1",
        "callbacks.online_evaluation.every_n_steps=1",
    )
    rows = online_rows(run_dir)
    # the start and the end always; 14 steps, 15 evaluations asked for
    assert rows.index[0] == 0 and rows.index[-1] == 14 and len(rows) < 15
    assert rows["online/skipped"].iloc[-1] >= 15 - len(rows)
    spent, train_s = rows["online/eval_s"].sum(), json.loads((run_dir / "metrics.json").read_text())["time/train_s"]
    # over by at most the evaluation that crossed the budget and the final one
    assert spent <= 0.05 * (train_s - spent) + 2 * rows["online/eval_s"].max()
