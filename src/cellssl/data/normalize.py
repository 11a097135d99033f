"""Per-cell normalisation on the model's device: counts → 10,000 per cell → log1p (scTab's recipe).

Training batches arrive as sparse CSR counts; :func:`normalized_dense` normalises the non-zeros (a few percent
of the entries) and writes them into a dense matrix once, on whatever device the batch is on, so neither the
host nor the device ever makes an extra pass over the dense ``(cells, genes)`` matrix.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

# torch marks sparse CSR as beta on every construction; the subset used here (build, to_dense) is stable.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def _csr_rows(counts: Tensor) -> Tensor:
    """The row of every stored value of a CSR tensor (no host synchronisation: the output size is known)."""
    crow = counts.crow_indices()
    starts = torch.arange(counts.shape[0], device=crow.device)
    return torch.repeat_interleave(starts, crow.diff(), output_size=counts.values().numel())


def _scatter_dense(counts: Tensor, values: Tensor) -> Tensor:
    """A dense float32 matrix holding ``values`` at the stored positions of the CSR tensor ``counts``."""
    n_rows, n_cols = counts.shape
    dense = torch.zeros(n_rows, n_cols, dtype=torch.float32, device=values.device)
    flat = _csr_rows(counts) * n_cols + counts.col_indices()
    return dense.view(-1).index_put_((flat,), values).view(n_rows, n_cols)


def densify(batch: dict[str, Tensor]) -> Tensor:
    """Dense float32 counts ``(cells, genes)`` of a batch, built on the device the batch is on."""
    counts = batch["counts"]
    if counts.layout == torch.sparse_csr:
        return _scatter_dense(counts, counts.values().to(torch.float32))  # values arrive in their stored type
    return counts.float()


def log_normalize(counts: Tensor, target_sum: float = 1e4) -> Tensor:
    """``log1p(counts / total * target_sum)`` per cell of dense counts; empty cells stay zero."""
    totals = counts.sum(dim=1, keepdim=True).clamp_min(1.0)
    return torch.log1p(counts * (target_sum / totals))


def normalized_dense(batch: dict[str, Tensor], target_sum: float = 1e4) -> Tensor:
    """Dense float32 ``log_normalize(densify(batch))``, computed on the batch's non-zeros, on the batch's device.

    Per-cell totals are segment sums over the CSR rows; ``log1p(0) = 0``, so only stored values change.
    """
    counts = batch["counts"]
    if counts.layout != torch.sparse_csr:
        return log_normalize(counts.float(), target_sum)
    values = counts.values().to(torch.float32)
    totals = torch.segment_reduce(values, "sum", offsets=counts.crow_indices().long(), axis=0)
    scale = torch.repeat_interleave(
        target_sum / totals.clamp_min(1.0), counts.crow_indices().diff(), output_size=values.numel()
    )
    return _scatter_dense(counts, torch.log1p(values * scale))
