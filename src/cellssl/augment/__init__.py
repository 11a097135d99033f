"""Augmentations for contrastive learning: small transforms of a batch of log-normalised expression.

Each transform is applied to every cell independently with probability ``p`` (drawn on the batch's device,
vectorised); :class:`Compose` chains them. Defaults follow the best setting of Richter et al. (2024):
negative-binomial count noise of intensity 0.2 and dropout of 10 % of the genes, each with p = 0.3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor


class Augmentation(Protocol):
    """Returns an augmented copy of a ``(cells, genes)`` batch of log-normalised expression."""

    def __call__(self, x: Tensor) -> Tensor: ...


def _chosen_cells(x: Tensor, p: float) -> Tensor:
    """A ``(cells, 1)`` boolean column: which cells this transform applies to."""
    return torch.rand((x.shape[0], 1), device=x.device) < p


def _check_probability(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augmentation probability must lie in [0, 1], got {p}")


class GaussianNoise:
    """Add N(0, std²) noise to every gene of the chosen cells (values stay ≥ 0)."""

    def __init__(self, std: float = 0.2, p: float = 0.3) -> None:
        _check_probability(p)
        self.std, self.p = std, p

    def __call__(self, x: Tensor) -> Tensor:
        noisy = (x + self.std * torch.randn_like(x)).clamp_min(0.0)
        return torch.where(_chosen_cells(x, self.p), noisy, x)

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std}, p={self.p})"


class Dropout:
    """Set a random fraction ``rate`` of the genes of the chosen cells to zero (no rescaling: like dropouts)."""

    def __init__(self, rate: float = 0.1, p: float = 0.3) -> None:
        _check_probability(p)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must lie in [0, 1), got {rate}")
        self.rate, self.p = rate, p

    def __call__(self, x: Tensor) -> Tensor:
        dropped = (torch.rand_like(x) < self.rate) & _chosen_cells(x, self.p)
        return x.masked_fill(dropped, 0.0)

    def __repr__(self) -> str:
        return f"Dropout(rate={self.rate}, p={self.p})"


class NegativeBinomialCountNoise:
    """Resample the normalised counts ``expm1(x)`` of the chosen cells from a negative binomial around them.

    The mean stays the cell's normalised count μ and the variance is ``μ + intensity · μ²`` (a Gamma–Poisson
    draw with shape ``1 / intensity``), so highly expressed genes get proportionally more noise, as in
    sequencing. The result is log1p-transformed back.
    """

    def __init__(self, intensity: float = 0.2, p: float = 0.3) -> None:
        _check_probability(p)
        if intensity <= 0:
            raise ValueError(f"count-noise intensity must be positive, got {intensity}")
        self.intensity, self.p = intensity, p

    def __call__(self, x: Tensor) -> Tensor:
        mean = torch.expm1(x)
        shape = torch.full_like(mean, 1.0 / self.intensity)
        rate = torch.distributions.Gamma(shape, shape, validate_args=False).sample() * mean  # no host sync
        noisy = torch.log1p(torch.poisson(rate))
        return torch.where(_chosen_cells(x, self.p), noisy, x)

    def __repr__(self) -> str:
        return f"NegativeBinomialCountNoise(intensity={self.intensity}, p={self.p})"


class Compose:
    """Apply ``transforms`` in order."""

    def __init__(self, transforms: Sequence[Augmentation] = ()) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Tensor) -> Tensor:
        for transform in self.transforms:
            x = transform(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


__all__ = ["Augmentation", "Compose", "Dropout", "GaussianNoise", "NegativeBinomialCountNoise"]
