"""Embed cells with a trained (or random) encoder, in batches, on the encoder's device."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from cellssl.data.dataset import batch_from_csr
from cellssl.data.normalize import densify, log_normalize


def normalized_batches(
    counts: sp.csr_matrix, batch_size: int, device: torch.device, target_sum: float = 1e4
) -> Iterator[torch.Tensor]:
    """Log-normalised dense blocks of ``counts``, built on ``device``."""
    for start in range(0, counts.shape[0], batch_size):
        block = counts[start : start + batch_size]
        batch = batch_from_csr(block, np.arange(block.shape[0]))
        batch = {k: v.to(device) for k, v in batch.items()}
        yield log_normalize(densify(batch), target_sum)


@torch.no_grad()
def embed(encoder: nn.Module, counts: sp.csr_matrix, batch_size: int = 4096, target_sum: float = 1e4) -> np.ndarray:
    """Encoder outputs for every row of ``counts`` (evaluation mode, no dropout)."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    try:
        parts = [encoder(x).float().cpu().numpy() for x in normalized_batches(counts, batch_size, device, target_sum)]
    finally:
        encoder.train(was_training)
    return np.concatenate(parts)


def log_normalized(counts: sp.csr_matrix, batch_size: int = 4096, target_sum: float = 1e4) -> np.ndarray:
    """Dense log-normalised expression on the CPU (for PCA and reconstruction targets)."""
    cpu = torch.device("cpu")
    return np.concatenate([x.numpy() for x in normalized_batches(counts, batch_size, cpu, target_sum)])


@torch.no_grad()
def predict_classes(
    classifier: nn.Module, counts: sp.csr_matrix, batch_size: int = 4096, target_sum: float = 1e4
) -> np.ndarray:
    """Arg-max class of every row of ``counts`` under ``classifier.logits`` (evaluation mode)."""
    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    try:
        parts = [
            classifier.logits(x).argmax(dim=1).cpu().numpy()
            for x in normalized_batches(counts, batch_size, device, target_sum)
        ]
    finally:
        classifier.train(was_training)
    return np.concatenate(parts)
