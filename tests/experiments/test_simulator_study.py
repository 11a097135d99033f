"""The simulator study (scripts/experiments/simulator.py, docs/science.md): kNN under a label budget uses only the
labelled donors' cells, and the CI-sized study shows the positive control (an auxiliary atlas of the target's
world) beating the null (an unrelated one), with the study's lanes run two at a time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from sklearn.decomposition import PCA

from cellssl.data.subset import donor_subset_rows
from cellssl.evaluation.classification import score_classification
from cellssl.evaluation.embed import log_normalized
from cellssl.evaluation.knn import knn_predict
from cellssl.store import CellStore
from cellssl.store.virtual_atlas import virtual_atlas_to_store
from cellssl.tasks import config_dir
from cellssl.tasks.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "experiments"))
from simulator_tables import load_runs  # noqa: E402

SMALL_WORLD = {"n_genes": 600, "n_programmes": 25, "n_regulons": 5, "chunk_cells": 500, "progress": False}


def test_knn_under_a_label_budget_uses_only_the_labelled_donors(tmp_path):
    store_path = tmp_path / "target.zarr"
    virtual_atlas_to_store(store_path, role="target", target={"n_cells": 1500, "n_donors": 40}, **SMALL_WORLD)
    overrides = ["experiment=simulator_readout", f"data.store_path={store_path}", "pretrained=null", "seed=3",
                 "data.donor_fraction=0.1", "evaluation.baselines=[pca]", "evaluation.reconstruction=false",
                 "logger=csv", f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'out'}"]  # fmt: skip
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides)
    GlobalHydra.instance().clear()
    metrics = evaluate(cfg)

    store = CellStore(store_path)
    labelled = donor_subset_rows(store, "train", "donor_id", 0.1, seed=3)  # the donors cellssl-finetune would use
    assert metrics["eval/n_labelled_reference"] == len(labelled) < metrics["eval/n_reference"] / 5
    # PCA is fitted on every training cell; kNN votes with the labelled ones only
    reference, reference_rows = store.read_split("train")
    query, query_rows = store.read_split("test")
    pca = PCA(n_components=64, random_state=3).fit(log_normalized(reference, 4096))
    embedded_reference = pca.transform(log_normalized(reference, 4096))
    codes, names = store.labels("true_cell_type")
    predicted = knn_predict(embedded_reference[labelled], codes[reference_rows][labelled],
                            pca.transform(log_normalized(query, 4096)), 5)  # fmt: skip
    expected = score_classification(codes[query_rows], predicted, names).metrics["macro_f1"]
    assert metrics["knn/pca/macro_f1"] == pytest.approx(expected, abs=1e-6)
    rows = json.loads((tmp_path / "out" / "metrics.json").read_text())["report_rows"]
    assert rows[0]["dataset"] == "target, 0.1 of donors labelled"


def test_the_positive_control_beats_the_null(tmp_path):
    """The CI preset end to end through the apps: MAE pretrained on a structured atlas gives the target's cell types
    a better kNN than MAE pretrained on the unrelated null, for every seed (the gap measured here: ~0.1 macro F1)."""
    script = ROOT / "scripts" / "experiments" / "simulator.py"
    command = [sys.executable, str(script), "--preset", "ci", "--out", str(tmp_path), "--jobs", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)  # two lanes at once, as the study
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    runs = load_runs(tmp_path / "report" / "readout")
    knn = runs[runs["mode"] == "knn"].pivot_table(index="seed", columns="atlas", values="macro_f1")
    assert list(knn.index) == [0, 1] and {"structured", "null", "none"} <= set(knn.columns)
    assert (knn["structured"] > knn["null"] + 0.03).all(), knn
    assert json.loads((tmp_path / "wall.json").read_text())["jobs"] == 2
    doc = (tmp_path / "science.md").read_text()
    assert "## Structured minus null (paired by seed)" in doc and "| MAE random 50% | knn" in doc
