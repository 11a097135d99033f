"""What a store offers a model: its gene vocabulary and, with a label key, the training classes.

Stored in every checkpoint (``data_context``), so a loaded model knows its genes and class names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cellssl.store import CellStore


def data_context(store: CellStore, label_key: str | None) -> dict[str, Any]:
    """``n_genes``, ``gene_names`` (and ``gene_ids``: Ensembl ids when the store has them), ``normalised`` (the store
    holds normalised values, which the model step uses as they are); with ``label_key``,
    ``label_key``, ``n_classes``, ``class_names`` and ``class_counts`` (cells per class in the train split).

    Each model takes the keys its constructor names (:func:`cellssl.methods.build_model`).
    """
    context: dict[str, Any] = {
        "n_genes": store.n_genes,
        "gene_names": [str(g) for g in store.gene_names],
        "normalised": bool(store.metadata.get("normalised", False)),
    }
    genes = store.genes  # Ensembl ids too, when the store has them: transfer matches genes by either
    if genes.ensembl_ids is not None:
        context["gene_ids"] = [str(g) for g in genes.ensembl_ids]
    if label_key is not None:
        codes, categories = store.labels(label_key)
        start, stop = store.split_range("train")
        train_codes = codes[start:stop]
        counts = np.bincount(train_codes[train_codes >= 0], minlength=len(categories))
        context.update(
            label_key=label_key,
            n_classes=len(categories),
            class_names=list(categories),
            class_counts=[int(c) for c in counts],
        )
    return context
