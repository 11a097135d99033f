"""The evaluation run after pretraining: kNN cell typing of the trained encoder beside baselines, and
masked-reconstruction explained variance, on one store split as reference and another as query."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA

from cellssl.evaluation.embed import embed, log_normalized
from cellssl.evaluation.knn import knn_macro_f1
from cellssl.evaluation.reconstruction import reconstruction_metrics
from cellssl.methods.base import PretrainingModule, Reconstructs
from cellssl.store import CellStore


@torch.no_grad()
def reconstruction_scores(
    model: Reconstructs, expression: np.ndarray, seed: int, genes: np.ndarray | None = None
) -> dict[str, float]:
    """Weighted and uniform explained variance and MSE of the entries hidden by the model's own masking
    (``genes``: score only these columns)."""
    model.eval()
    x = torch.from_numpy(expression).to(model.device)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    reconstruction, mask = model.reconstruct(x, generator)
    return reconstruction_metrics(expression, reconstruction.float().cpu().numpy(), mask.cpu().numpy(), genes)


def evaluate_pretraining(
    model: PretrainingModule,
    initial_model: PretrainingModule,
    store: CellStore,
    label_key: str,
    reference_split: str = "train",
    query_split: str = "test",
    k: int = 5,
    pca_components: int = 64,
    max_cells: int | None = 20_000,
    batch_size: int = 4096,
    seed: int = 0,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Score the trained model's ``encoder`` against its own random initialisation and PCA; return metrics and a
    table. Models that reconstruct masked input (:class:`Reconstructs`) are also scored on reconstruction."""
    reference_counts, reference_ids = store.read_split(reference_split, max_cells)
    query_counts, query_ids = store.read_split(query_split, max_cells)
    codes, _ = store.labels(label_key)
    reference_labels, query_labels = codes[reference_ids], codes[query_ids]

    reference_expr, query_expr = log_normalized(reference_counts), log_normalized(query_counts)
    n_components = min(pca_components, *reference_expr.shape)
    pca = PCA(n_components=n_components, random_state=seed).fit(reference_expr)

    embeddings = {
        "trained_encoder": (
            embed(model.encoder, reference_counts, batch_size),
            embed(model.encoder, query_counts, batch_size),
        ),
        "random_encoder": (
            embed(initial_model.encoder, reference_counts, batch_size),
            embed(initial_model.encoder, query_counts, batch_size),
        ),
        "pca": (pca.transform(reference_expr), pca.transform(query_expr)),
    }
    reconstruction = {}
    if isinstance(model, Reconstructs):
        reconstruction = {
            "trained_encoder": reconstruction_scores(model, query_expr, seed),
            "random_encoder": reconstruction_scores(initial_model, query_expr, seed),
        }
    rows, metrics = [], {"eval/n_reference": len(reference_ids), "eval/n_query": len(query_ids)}
    for name, (reference, query) in embeddings.items():
        f1 = knn_macro_f1(reference, reference_labels, query, query_labels, k)
        metrics[f"knn_macro_f1/{name}"] = f1
        recon = reconstruction.get(name, {})
        for key, value in recon.items():
            metrics[f"reconstruction_{key}/{name}"] = value
        rows.append(
            {
                "representation": f"PCA ({n_components} comps)" if name == "pca" else name.replace("_", " "),
                f"kNN macro F1 ({reference_split}→{query_split}, k={k})": f1,
                "masked recon. weighted EV": recon.get("weighted_ev", np.nan),
            }
        )
    return metrics, pd.DataFrame(rows)
