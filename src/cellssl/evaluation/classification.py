"""Cell-type classification scores: macro/micro F1, accuracy, a per-class table and a confusion matrix.

Computed with torchmetrics on integer class codes; macro F1 averages over the classes present in the truth or
the predictions (classes absent from both are left out, as scikit-learn does), so a query without some of the
reference's cell types is not penalised for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class ClassificationScores:
    """Summary metrics, the per-class table (``cell_type``, ``f1``, ``precision``, ``recall``, ``support``) and
    the confusion matrix (rows: true class, columns: predicted class, over ``class_names``)."""

    metrics: dict[str, float]
    per_class: pd.DataFrame
    confusion: np.ndarray
    class_names: list[str]


def score_classification(
    true: np.ndarray, predicted: np.ndarray, class_names: Sequence[str], prefix: str = ""
) -> ClassificationScores:
    """Scores of integer predictions against integer truth (codes index ``class_names``; ``-1`` is ignored)."""
    true, predicted = np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    keep = true >= 0
    target, preds = torch.from_numpy(true[keep]), torch.from_numpy(predicted[keep])
    n = len(class_names)
    if n < 2:
        raise ValueError(f"scoring needs at least 2 classes, got {n}")
    common = {"preds": preds, "target": target, "num_classes": n}
    metrics = {
        f"{prefix}macro_f1": float(multiclass_f1_score(**common, average="macro")),
        f"{prefix}micro_f1": float(multiclass_f1_score(**common, average="micro")),
        f"{prefix}weighted_f1": float(multiclass_f1_score(**common, average="weighted")),
        f"{prefix}accuracy": float(multiclass_accuracy(**common, average="micro")),
        f"{prefix}balanced_accuracy": float(multiclass_accuracy(**common, average="macro")),
    }
    support = np.bincount(true[keep], minlength=n)
    per_class = pd.DataFrame(
        {
            "cell_type": list(class_names),
            "f1": multiclass_f1_score(**common, average="none").numpy(),
            "precision": multiclass_precision(**common, average="none").numpy(),
            "recall": multiclass_recall(**common, average="none").numpy(),
            "support": support,
            "predicted": np.bincount(predicted[keep], minlength=n),
        }
    )
    confusion = multiclass_confusion_matrix(**common).numpy()
    return ClassificationScores(metrics, per_class, confusion, list(class_names))


def plot_confusion(scores: ClassificationScores, title: str = "") -> Figure:
    """The row-normalised confusion matrix (fraction of each true class) of the classes that occur; each row's
    label gives the class's support, the number of its true cells (``B cell (n=23)``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    occurs = (scores.confusion.sum(axis=0) + scores.confusion.sum(axis=1)) > 0
    counts = scores.confusion[np.ix_(occurs, occurs)].astype(float)
    support = counts.sum(axis=1).astype(int)
    matrix = counts / np.maximum(support[:, None], 1)
    labels = [name for name, kept in zip(scores.class_names, occurs, strict=True) if kept]
    size = 2.5 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 2.0, size))
    display = ConfusionMatrixDisplay(matrix, display_labels=labels).plot(
        ax=ax, cmap="Blues", values_format=".2f", xticks_rotation=90, colorbar=True, im_kw={"vmin": 0, "vmax": 1}
    )
    ax.set_yticks(range(len(labels)), [f"{name} (n={n})" for name, n in zip(labels, support, strict=True)])
    ax.set_ylabel("true class (n = its number of cells)")
    ax.set_xlabel("predicted class")
    display.figure_.axes[-1].set_ylabel("fraction of the true class")
    ax.set_title(title or "confusion matrix (rows: true class)")
    fig.tight_layout()
    return fig
