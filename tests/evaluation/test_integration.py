"""Integration scores through scib-metrics (an optional extra; installed with the dev extras)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scib_metrics", reason="scib-metrics is an optional extra: pip install cellssl[integration]")

from cellssl.evaluation.integration import integration_scores


def test_a_batch_separated_embedding_scores_worse_on_batch_correction():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    batches = np.tile([0, 1], 60)
    expression = rng.normal(size=(120, 20)) + 4 * np.eye(20)[labels]
    mixed = 5 * np.eye(3)[labels] + rng.normal(size=(120, 3))
    separated = mixed + 10 * np.eye(3)[batches]
    table = integration_scores(expression, {"mixed": mixed, "separated": separated}, labels.astype(str), batches)
    assert table.loc["mixed", "iLISI"] > 0.8 > 0.2 > table.loc["separated", "iLISI"]
    assert table.loc["mixed", "Batch correction"] > table.loc["separated", "Batch correction"] + 0.3
    assert table.loc["mixed", "KMeans NMI"] > 0.9 and table.loc["mixed", "BRAS"] > table.loc["separated", "BRAS"]
