"""Per-cell normalisation on the model's device: counts → 10,000 per cell → log1p (scTab's recipe)."""

from __future__ import annotations

import warnings

import torch

# torch marks sparse CSR as beta on every construction; the subset used here (build, to_dense) is stable.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def densify(batch: dict[str, torch.Tensor], n_genes: int) -> torch.Tensor:
    """Dense float32 counts ``(cells, genes)`` from a batch's CSR arrays, built where the batch lives."""
    indptr, indices, values = batch["indptr"], batch["indices"], batch["values"]
    n_cells = indptr.numel() - 1
    csr = torch.sparse_csr_tensor(indptr, indices, values.float(), size=(n_cells, n_genes), check_invariants=False)
    return csr.to_dense()


def log_normalize(counts: torch.Tensor, target_sum: float = 1e4) -> torch.Tensor:
    """``log1p(counts / total * target_sum)`` per cell; empty cells stay zero."""
    totals = counts.sum(dim=1, keepdim=True).clamp_min(1.0)
    return torch.log1p(counts * (target_sum / totals))
