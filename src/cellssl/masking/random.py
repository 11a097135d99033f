"""Random masking: every gene of every cell hidden independently with probability ``rate``."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class MaskingStrategy(Protocol):
    """Returns the network input and a boolean mask of the entries the loss is computed on."""

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]: ...


class RandomMasking:
    """Hide each entry with probability ``rate`` (set to zero); the loss is on the hidden entries.

    With ``rescale`` the visible entries are multiplied by ``1 / (1 - rate)``, as inverted dropout
    does, so the input's expected magnitude does not depend on the rate. Built on ``x``'s device.
    """

    def __init__(self, rate: float = 0.5, rescale: bool = True) -> None:
        if not 0.0 < rate < 1.0:
            raise ValueError(f"mask rate must lie in (0, 1), got {rate}")
        self.rate, self.rescale = rate, rescale

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        mask = torch.rand(x.shape, device=x.device, generator=generator) < self.rate
        visible = x.masked_fill(mask, 0.0)
        if self.rescale:
            visible = visible / (1.0 - self.rate)
        return visible, mask

    def __repr__(self) -> str:
        return f"RandomMasking(rate={self.rate}, rescale={self.rescale})"


class FixedMasking:
    """Hide exactly the entries of a given boolean ``mask`` (cells × genes), e.g. the common evaluation mask every
    model is scored under; visible entries × ``1 / (1 - rate)`` with ``rescale``, ``rate`` the mask's hidden share."""

    def __init__(self, mask: Tensor, rescale: bool = True) -> None:
        self.mask, self.rescale = mask.bool(), rescale

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if x.shape != self.mask.shape:
            raise ValueError(f"the mask covers {tuple(self.mask.shape)} entries, the input has {tuple(x.shape)}")
        mask = self.mask.to(x.device)
        visible = x.masked_fill(mask, 0.0)
        if self.rescale:
            visible = visible / (1.0 - mask.float().mean()).clamp_min(1e-6)
        return visible, mask

    def __repr__(self) -> str:
        return f"FixedMasking({tuple(self.mask.shape)}, rate={self.mask.float().mean():.3f})"


def common_evaluation_mask(shape: tuple[int, int], rate: float = 0.5, seed: int = 0) -> Tensor:
    """A seeded random mask hiding each entry with probability ``rate``, drawn on the CPU so that it is the same
    on every device and for every model scored under it."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < rate
