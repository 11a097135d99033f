"""Classification and reconstruction scores against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from cellssl.evaluation.classification import plot_confusion, score_classification
from cellssl.evaluation.reconstruction import reconstruction_metrics

NAMES = ["B", "T", "NK", "absent"]


def test_scores_by_hand():
    true = np.array([0, 0, 1, 1, 2, 2, -1])  # the last cell has no label: ignored
    pred = np.array([0, 1, 1, 1, 2, 0, 3])
    scores = score_classification(true, pred, NAMES, prefix="test/")
    # B: P=1/2 R=1/2 F=1/2; T: P=2/3 R=1 F=4/5; NK: P=1 R=1/2 F=2/3; "absent" occurs nowhere: left out
    assert scores.metrics["test/macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3, abs=1e-6)
    assert scores.metrics["test/micro_f1"] == pytest.approx(4 / 6, abs=1e-6)
    assert scores.metrics["test/accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert scores.metrics["test/balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3, abs=1e-6)
    table = scores.per_class.set_index("cell_type")
    assert table.loc["T", "precision"] == pytest.approx(2 / 3, abs=1e-6)
    assert table.loc["NK", "recall"] == pytest.approx(1 / 2)
    assert table["support"].tolist() == [2, 2, 2, 0]
    expected = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(scores.confusion, expected)


def test_confusion_plot_shows_the_classes_that_occur_with_their_support():
    scores = score_classification(np.array([0, 0, 0, 1, 2, 2]), np.array([0, 1, 0, 2, 2, 2]), NAMES)
    fig = plot_confusion(scores)
    rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert rows == ["B (n=3)", "T (n=1)", "NK (n=2)"]  # "absent" occurs nowhere: left out
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["B", "T", "NK"]
    assert "true" in fig.axes[0].get_ylabel()


def test_reconstruction_metrics_by_hand():
    true = np.array([[1.0, 0.0, 5.0], [3.0, 2.0, 5.0], [5.0, 4.0, 5.0]])
    predicted = np.array([[2.0, 0.0, 9.0], [3.0, 3.0, 9.0], [4.0, 4.0, 9.0]])
    mask = np.array([[1, 1, 1], [1, 1, 1], [1, 0, 0]], dtype=bool)
    scores = reconstruction_metrics(true, predicted, mask)
    # gene 0: errors 1, 0, -1 -> Var 2/3; Var(true) 8/3 -> EV 3/4. gene 1 (2 cells): errors 0, 1 -> Var 1/4,
    # Var(true) 1 -> EV 3/4. gene 2: constant truth, no EV; its squared errors (16, 16) count in the MSE.
    assert scores["weighted_ev"] == pytest.approx(0.75)
    assert scores["uniform_ev"] == pytest.approx(0.75)
    assert scores["mse"] == pytest.approx((1 + 0 + 1 + 0 + 1 + 16 + 16) / 7)
    assert scores["uniform_mse"] == pytest.approx((2 / 3 + 1 / 2 + 16) / 3)
    only_first = reconstruction_metrics(true, predicted, mask, genes=np.array([0]))
    assert only_first["mse"] == pytest.approx(2 / 3)
