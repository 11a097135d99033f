"""cellssl-evaluate in-process on the real pbmc68k store: PCA baseline, ontology-aware kNN scores, scib-metrics
integration with a batch column, and the one-line error for an unknown batch column."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from cellssl.store import prepare_store
from cellssl.tasks import config_dir
from cellssl.tasks.evaluate import evaluate

pytest.importorskip("scib_metrics", reason="scib-metrics is an optional extra: pip install cellssl[integration]")
pytest.importorskip("cellxgene_ontology_guide", reason="needs the ontology extra (cellxgene-ontology-guide)")


def _config(tmp_path, store, *overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(
            "evaluate",
            overrides=[
                "data=zarr",
                f"data.store_path={store}",
                "data.label_key=bulk_labels",
                "logger=csv",
                f"paths.root_dir={tmp_path}",
                f"paths.output_dir={tmp_path / 'out'}",
                *overrides,
            ],
        )


def test_knn_with_ontology_and_integration_scores(tmp_path):
    store = prepare_store("pbmc68k", tmp_path / "pbmc.zarr", label_columns=["bulk_labels", "phase"], seed=0)
    cfg = _config(tmp_path, store, "ontology=pbmc68k", "integration.batch_key=phase", "evaluation.k=5")
    metrics = evaluate(cfg)
    out = tmp_path / "out"
    assert json.loads((out / "metrics.json").read_text())["knn/pca/macro_f1"] == metrics["knn/pca/macro_f1"]
    assert metrics["knn/pca/macro_f1"] == pytest.approx(0.617, abs=0.002)  # the README's PCA baseline
    # none of pbmc68k's 10 types lies below another in the Cell Ontology: ontology scoring changes nothing here
    assert metrics["knn/pca/ontology_macro_f1"] == metrics["knn/pca/macro_f1"]
    integration = pd.read_csv(out / "integration.csv", index_col=0)
    assert list(integration.index) == ["pca"] and 0 <= integration.loc["pca", "iLISI"] <= 1
    assert metrics["integration/pca/Total"] == pytest.approx(integration.loc["pca", "Total"])
    assert pd.read_csv(out / "knn_pca_per_class.csv")["support"].sum() == metrics["eval/n_query"]


def test_unknown_batch_column_is_one_line_and_exit_2(tmp_path, pbmc_store, capsys):
    cfg = _config(tmp_path, pbmc_store, "integration.batch_key=donor")
    with pytest.raises(SystemExit) as exit_info:
        evaluate(cfg)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "obs['donor']" in error and "\n" not in error
    assert not (tmp_path / "out" / "metrics.json").exists()
