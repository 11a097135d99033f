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
