"""Per-cell normalisation on the model's device: counts → 10,000 per cell → log1p (scTab's recipe)."""

from __future__ import annotations

import warnings

import torch

# torch marks sparse CSR as beta on every construction; the subset used here (build, to_dense) is stable.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def densify(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Dense float32 counts ``(cells, genes)`` of a batch, built on the device the batch is on."""
    counts = batch["counts"]
    if counts.layout == torch.sparse_csr:
        return counts.to(torch.float32).to_dense()  # values arrive in their stored integer type
    return counts.float()


def log_normalize(counts: torch.Tensor, target_sum: float = 1e4) -> torch.Tensor:
    """``log1p(counts / total * target_sum)`` per cell; empty cells stay zero."""
    totals = counts.sum(dim=1, keepdim=True).clamp_min(1.0)
    return torch.log1p(counts * (target_sum / totals))
