"""Explained variance of reconstructions, restricted to the entries the model had to predict.

scikit-learn's and torchmetrics' explained variance take full matrices; masked reconstruction is
scored only where entries were hidden, so this computes the same per-gene statistic over a mask
(checked against scikit-learn for an all-true mask in the tests).
"""

from __future__ import annotations

import numpy as np


def masked_explained_variance(
    true: np.ndarray, predicted: np.ndarray, mask: np.ndarray, weighting: str = "variance_weighted"
) -> float:
    """Per-gene ``1 - Var(true - pred) / Var(true)`` over masked cells, averaged over genes.

    ``variance_weighted`` weights genes by the variance of their true values (scikit-learn's
    ``multioutput='variance_weighted'``), ``uniform`` averages genes with non-zero variance equally.
    """
    mask = mask.astype(bool)
    n = mask.sum(axis=0).astype(np.float64)
    valid = n > 1

    def variance(values: np.ndarray) -> np.ndarray:
        values = np.where(mask, values, 0.0).astype(np.float64)
        mean = values.sum(axis=0) / np.maximum(n, 1)
        centred = np.where(mask, values - mean, 0.0)
        return (centred**2).sum(axis=0) / np.maximum(n, 1)

    var_true = variance(true)
    var_error = variance(true - predicted)
    valid &= var_true > 0
    if not valid.any():
        return float("nan")
    ratio = 1.0 - var_error[valid] / var_true[valid]
    if weighting == "uniform":
        return float(ratio.mean())
    if weighting != "variance_weighted":
        raise ValueError(f"unknown weighting {weighting!r}")
    weights = var_true[valid]
    return float((ratio * weights).sum() / weights.sum())


def reconstruction_metrics(
    true: np.ndarray, predicted: np.ndarray, mask: np.ndarray, genes: np.ndarray | None = None
) -> dict[str, float]:
    """Variance-weighted and uniform explained variance and the MSE of the masked entries.

    ``genes`` restricts scoring to those columns (in transfer: the vocabulary genes the data has, since
    zero-filled genes carry no signal). ``mse`` averages over masked entries; ``uniform_mse`` first per gene.
    """
    if genes is not None:
        true, predicted, mask = true[:, genes], predicted[:, genes], mask[:, genes]
    mask = mask.astype(bool)
    squared = np.where(mask, (true - predicted) ** 2, 0.0)
    per_gene = mask.sum(axis=0)
    observed = per_gene > 0
    return {
        "weighted_ev": masked_explained_variance(true, predicted, mask),
        "uniform_ev": masked_explained_variance(true, predicted, mask, weighting="uniform"),
        "mse": float(squared.sum() / max(mask.sum(), 1)),
        "uniform_mse": float((squared.sum(axis=0)[observed] / per_gene[observed]).mean()) if observed.any() else 0.0,
    }
