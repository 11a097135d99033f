"""Metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import explained_variance_score

from cellssl.evaluation.classification import score_classification
from cellssl.evaluation.knn import knn_predict
from cellssl.evaluation.reconstruction import masked_explained_variance


def test_macro_f1_by_hand():
    true = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    # class 0: P=1/2 R=1/2 F=1/2; class 1: P=2/3 R=1 F=4/5; class 2: P=1 R=1/2 F=2/3
    scores = score_classification(true, pred, ["a", "b", "c"]).metrics
    assert scores["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)


def test_macro_f1_leaves_out_classes_absent_from_truth_and_prediction():
    true, pred = np.array([0, 0, 1, 1, -1]), np.array([0, 1, 1, 1, 3])  # class 2 occurs nowhere; -1 is unlabelled
    # class 0: F=2/3; class 1: P=2/3 R=1 F=4/5; the unlabelled cell is ignored
    scores = score_classification(true, pred, ["a", "b", "c", "d"]).metrics
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_knn_transfers_labels_of_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]])
    labels = np.repeat([0, 1, 2], 30)
    reference = centres[labels] + rng.normal(size=(90, 2))
    query = centres[labels] + rng.normal(size=(90, 2))
    names = ["a", "b", "c"]

    def f1(reference_labels):
        predicted = knn_predict(reference, reference_labels, query, k=5)
        return score_classification(labels, predicted, names).metrics["macro_f1"]

    assert f1(labels) == 1.0
    assert f1(rng.permutation(labels)) < 0.6


def test_masked_explained_variance_equals_sklearn_on_full_mask():
    rng = np.random.default_rng(1)
    true = rng.normal(size=(200, 12)) * rng.uniform(0.1, 3, size=12)
    predicted = true + rng.normal(scale=0.5, size=true.shape)
    full = np.ones_like(true, dtype=bool)
    for ours, theirs in (("variance_weighted", "variance_weighted"), ("uniform", "uniform_average")):
        assert masked_explained_variance(true, predicted, full, ours) == pytest.approx(
            explained_variance_score(true, predicted, multioutput=theirs)
        )


def test_masked_explained_variance_ignores_unmasked_entries():
    rng = np.random.default_rng(2)
    true = rng.normal(size=(300, 5))
    mask = rng.random(true.shape) < 0.5
    predicted = np.where(mask, true, 1e6)  # perfect where masked, absurd elsewhere
    assert masked_explained_variance(true, predicted, mask) == pytest.approx(1.0)
