"""Masked autoencoder: reconstruct hidden genes of log-normalised expression from the visible ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from cellssl.masking import MaskingStrategy, RandomMasking
from cellssl.methods.base import PretrainingModule
from cellssl.nets import MLPEncoder, mirrored_decoder


class MaskedAutoencoder(PretrainingModule):
    """Encoder + mirrored decoder trained with MSE on the masked entries.

    Batches arrive as sparse CSR counts; densification and normalisation (10,000 counts per cell,
    log1p) happen on the model's device (:class:`PretrainingModule`). ``encoder`` is a factory taking ``n_genes``
    (a Hydra ``_partial_``), ``optimizer`` a factory taking the parameters.
    """

    def __init__(
        self,
        n_genes: int,
        encoder: Callable[..., nn.Module] = MLPEncoder,
        masking: MaskingStrategy | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
        target_sum: float = 1e4,
    ) -> None:
        super().__init__(n_genes, target_sum)
        self.encoder = encoder(n_genes=n_genes)
        self.decoder = mirrored_decoder(self.encoder)
        self.masking = masking if masking is not None else RandomMasking()
        self.optimizer_factory = optimizer

    def forward(self, x: Tensor) -> Tensor:
        """Embed log-normalised expression."""
        return self.encoder(x)

    def reconstruct(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Mask ``x``, reconstruct it; return (reconstruction, mask of hidden entries)."""
        visible, mask = self.masking(x, generator)
        return self.decoder(self.encoder(visible)), mask

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        x = self.normalized(batch)
        reconstruction, mask = self.reconstruct(x)
        loss = nn.functional.mse_loss(reconstruction[mask], x[mask])
        n = x.shape[0]
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=True,
            batch_size=n,
            sync_dist=stage != "train",
        )
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        return self.optimizer_factory(self.parameters())
