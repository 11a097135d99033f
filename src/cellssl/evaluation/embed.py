"""Apply a network to cells block by block, on the network's device: the one batched forward pass behind
``CellSSLModel.embed`` / ``predict`` and every evaluation.

Each block of counts is aligned to the network's gene vocabulary (zeros for genes the data lacks), then
log-normalised to ``target_sum`` counts per cell over the vocabulary's genes — as the pretraining data was — on
the device; values already normalised are used as they are. Memory is bounded by the block size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from cellssl.data.dataset import batch_from_csr
from cellssl.data.normalize import densify, log_normalize
from cellssl.evaluation.transfer import GeneAlignment


def normalized_blocks(
    blocks: Iterable[sp.csr_matrix],
    device: torch.device,
    target_sum: float = 1e4,
    alignment: GeneAlignment | None = None,
    normalised: bool = False,
) -> Iterator[Tensor]:
    """Dense float32 log-normalised blocks in the vocabulary's genes, built on ``device``."""
    for block in blocks:
        if alignment is not None:
            block = alignment.apply_csr(block)
        batch = batch_from_csr(sp.csr_matrix(block), np.arange(block.shape[0]))
        x = densify({k: v.to(device) for k, v in batch.items()})
        yield x if normalised else log_normalize(x, target_sum)


@torch.no_grad()
def apply_network(
    network: nn.Module,
    forward: Callable[[Tensor], Tensor],
    blocks: Iterable[sp.csr_matrix],
    target_sum: float = 1e4,
    alignment: GeneAlignment | None = None,
    normalised: bool = False,
) -> np.ndarray:
    """``forward(x)`` for every block (``network`` in evaluation mode: no dropout), stacked as float32."""
    was_training = network.training
    network.eval()
    device = next(network.parameters()).device
    try:
        parts = [
            forward(x).float().cpu().numpy()
            for x in normalized_blocks(blocks, device, target_sum, alignment, normalised)
        ]
    finally:
        network.train(was_training)
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def csr_blocks(counts: sp.csr_matrix, batch_size: int) -> Iterator[sp.csr_matrix]:
    """Row blocks of an in-memory CSR matrix."""
    for start in range(0, counts.shape[0], batch_size):
        yield counts[start : start + batch_size]


def log_normalized(
    counts: sp.csr_matrix, batch_size: int = 4096, target_sum: float = 1e4, alignment: GeneAlignment | None = None
) -> np.ndarray:
    """Dense log-normalised expression on the CPU (PCA and log-normalised baselines, reconstruction targets)."""
    blocks = normalized_blocks(csr_blocks(counts, batch_size), torch.device("cpu"), target_sum, alignment)
    parts = [x.numpy() for x in blocks]
    return np.concatenate(parts) if parts else np.zeros((0, counts.shape[1]), dtype=np.float32)
