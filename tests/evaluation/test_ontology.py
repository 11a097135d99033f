"""Ontology-aware scoring: a prediction at or below the true cell type counts as correct."""

from __future__ import annotations

import numpy as np
import pytest

from cellssl.evaluation.classification import score_classification
from cellssl.evaluation.ontology import Ontology, match_cell_types, ontology_corrected
from cellssl.store import InputError

# cell <- lymphocyte <- T cell <- CD4 T cell <- CD4 memory T cell; lymphocyte <- B cell
TERMS = {
    "CL:0": {"label": "cell", "ancestors": {}},
    "CL:1": {"label": "lymphocyte", "ancestors": {"CL:0": 1}},
    "CL:2": {"label": "T cell", "ancestors": {"CL:1": 1, "CL:0": 2}, "synonyms": ["T-lymphocyte"]},
    "CL:3": {"label": "CD4 T cell", "ancestors": {"CL:2": 1, "CL:1": 2, "CL:0": 3}},
    "CL:4": {"label": "CD4 memory T cell", "ancestors": {"CL:3": 1, "CL:2": 2, "CL:1": 3, "CL:0": 4}},
    "CL:5": {"label": "B cell", "ancestors": {"CL:1": 1, "CL:0": 2}},
}
OBO = """format-version: 1.2

[Term]
id: CL:1
name: lymphocyte

[Term]
id: CL:2
name: T cell
synonym: "T-lymphocyte" EXACT []
is_a: CL:1

[Term]
id: CL:3
name: CD4 T cell
is_a: CL:2

[Term]
id: CL:5
name: B cell
relationship: part_of CL:1
"""


def test_descendant_predictions_count_as_correct():
    ontology = Ontology.from_terms(TERMS)
    classes = ["T cell", "CD4 T cell", "CD4 memory T cell", "B cell"]
    ids = match_cell_types(classes, ontology)
    assert ids == ["CL:2", "CL:3", "CL:4", "CL:5"]
    true = np.array([0, 0, 1, 1, 3])
    pred = np.array([1, 2, 0, 2, 0])  # finer (right), finer (right), coarser (wrong), finer (right), unrelated
    corrected = ontology_corrected(true, pred, ids, ontology)
    np.testing.assert_array_equal(corrected, [0, 0, 0, 1, 0])
    assert score_classification(true, pred, classes).metrics["accuracy"] == 0.0
    assert score_classification(true, corrected, classes).metrics["accuracy"] == pytest.approx(3 / 5)


def test_names_match_by_synonym_case_and_label_map_and_unknown_names_are_refused():
    ontology = Ontology.from_terms(TERMS)
    assert match_cell_types(["t-LYMPHOCYTE", "CL_5", "my B"], ontology, {"my B": "B cell"}) == ["CL:2", "CL:5", "CL:5"]
    with pytest.raises(InputError, match=r"label_map.*1 cell type.*'Dendritic'"):
        match_cell_types(["T cell", "Dendritic"], ontology)


def test_obo_file_gives_the_same_ancestry(tmp_path):
    pytest.importorskip("obonet", reason="reading .obo files needs the ontology extra (obonet)")
    path = tmp_path / "mini.obo"
    path.write_text(OBO)
    ontology = Ontology.load(str(path))
    assert ontology.term_id("t-lymphocyte") == "CL:2"
    assert ontology.ancestors["CL:3"] == {"CL:2", "CL:1"}
    assert ontology.is_same_or_descendant("CL:5", "CL:1")  # part_of counts
    assert not ontology.is_same_or_descendant("CL:2", "CL:3")


def test_cell_ontology_ships_offline_in_cellxgene_ontology_guide():
    pytest.importorskip("cellxgene_ontology_guide", reason="needs the ontology extra (cellxgene-ontology-guide)")
    ontology = Ontology.load("cellxgene")
    b_cell, naive_b = ontology.term_id("B cell"), ontology.term_id("naive B cell")
    assert b_cell == "CL:0000236" and naive_b is not None
    assert ontology.is_same_or_descendant(naive_b, b_cell)
    assert not ontology.is_same_or_descendant(b_cell, naive_b)
    assert ontology.is_same_or_descendant(ontology.term_id("CD8-positive, alpha-beta cytotoxic T cell"), "CL:0000084")


def test_cellssl_evaluate_counts_a_descendant_prediction_correct_where_plain_f1_does_not(tmp_path, hydra_conf):
    """Cells of one expression state labelled at two depths, "T cell" and its child "CD4 T cell" (as atlases mixing
    annotation depths are): kNN often predicts the child for a "T cell", which the ontology counts as correct and
    plain F1 does not; a "CD4 T cell" predicted as the coarser "T cell" stays wrong under both."""
    import json

    import anndata as ad
    import scipy.sparse as sp
    from hydra import compose

    from cellssl.store import prepare_store
    from cellssl.tasks.evaluate import evaluate

    rng = np.random.default_rng(0)
    state = np.repeat([0, 1, 2], 150)
    rates = rng.gamma(2.0, 2.0, size=(3, 60))
    counts = rng.poisson(rates[state]).astype(np.float32)
    names = np.where(state == 1, "B cell", np.where(state == 2, "CD4 memory T cell", "T cell"))
    names[(state == 0) & (rng.random(450) < 0.5)] = "CD4 T cell"
    adata = ad.AnnData(sp.csr_matrix(counts), obs={"cell_type": names}, var={"gene": [f"g{i}" for i in range(60)]})
    adata.var_names = adata.var["gene"].to_numpy()
    store = prepare_store(adata, tmp_path / "mixed.zarr", label_columns=["cell_type"], seed=0)
    (tmp_path / "terms.json").write_text(json.dumps(TERMS))
    overrides = [
        *("data=zarr", f"data.store_path={store}", "data.label_key=cell_type", "logger=csv"),
        *(f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'out'}", "evaluation.baselines=[pca]"),
        *("ontology=cell_ontology", f"ontology.source={tmp_path / 'terms.json'}"),
    ]
    metrics = evaluate(compose("evaluate", overrides=overrides))
    plain, aware = metrics["knn/pca/macro_f1"], metrics["knn/pca/ontology_macro_f1"]
    assert aware > plain + 0.1, (plain, aware)  # 0.86 vs 0.73 measured
    assert metrics["knn/pca/ontology_accuracy"] > metrics["knn/pca/accuracy"] + 0.05  # 0.93 vs 0.82 measured
