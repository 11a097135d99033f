"""Objectives of the joint-embedding methods, on two batches of projections ``(cells, dims)`` of the same cells.

All are per-device: in DDP each rank scores its own batch (no all-gather of negatives or statistics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """BYOL's ``2 - 2 cos(prediction, target)``, averaged over cells (Grill et al. 2020); no gradient to target."""
    return (2.0 - 2.0 * F.cosine_similarity(prediction, target.detach(), dim=1)).mean()


def _off_diagonal(matrix: Tensor) -> Tensor:
    n = matrix.shape[0]
    return matrix.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def barlow_twins_loss(z1: Tensor, z2: Tensor, redundancy_weight: float = 0.0051, eps: float = 1e-5) -> Tensor:
    """Barlow Twins (Zbontar et al. 2021): push the cross-correlation of standardised projections to identity."""
    n = z1.shape[0]
    z1 = (z1 - z1.mean(0)) / (z1.std(0, unbiased=False) + eps)
    z2 = (z2 - z2.mean(0)) / (z2.std(0, unbiased=False) + eps)
    correlation = z1.T @ z2 / n
    on_diagonal = (torch.diagonal(correlation) - 1.0).pow(2).sum()
    return on_diagonal + redundancy_weight * _off_diagonal(correlation).pow(2).sum()


def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    eps: float = 1e-4,
) -> Tensor:
    """VICReg (Bardes et al. 2022): invariance (MSE) + variance hinge at std 1 + covariance decorrelation."""
    invariance = F.mse_loss(z1, z2)
    variance = covariance = z1.new_zeros(())
    for z in (z1, z2):
        z = z - z.mean(0)
        variance = variance + F.relu(1.0 - torch.sqrt(z.var(0) + eps)).mean() / 2
        cov = z.T @ z / max(z.shape[0] - 1, 1)
        covariance = covariance + _off_diagonal(cov).pow(2).sum() / z.shape[1]
    return invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """SimCLR's normalised-temperature cross entropy (Chen et al. 2020): each view must pick its partner out of
    the other ``2N - 2`` cells of the batch by cosine similarity."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarity = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    partner = torch.arange(2 * n, device=z.device).roll(n)  # cell i's partner is i + n, and back
    return F.cross_entropy(similarity, partner)
