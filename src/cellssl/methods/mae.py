"""Masked autoencoder: reconstruct hidden genes from the visible ones, with any masking strategy."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import NegativeBinomial

from cellssl.masking import MaskingStrategy, RandomMasking
from cellssl.methods.base import PretrainingModule, bind_context
from cellssl.nets import MLPEncoder, mirrored_decoder
from cellssl.optim import LRSchedule

RECONSTRUCTION_LOSSES = ("mse", "nb", "nb_log1p")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the entries where ``mask`` is true; unlike ``values[mask]`` it never waits for the
    device to count the entries."""
    return (values * mask).sum() / mask.sum().clamp_min(1)


class MaskedAutoencoder(PretrainingModule):
    """Encoder + mirrored decoder trained on the entries the masking strategy selects for the loss.

    ``masking`` is any :class:`~cellssl.masking.MaskingStrategy`; one configured ``_partial_: true`` that
    takes ``gene_names`` (gene programmes, TF regulons) is bound to the store's vocabulary here.
    ``reconstruction_loss``: ``mse`` on log-normalised values, or ``nb``, the negative-binomial likelihood of
    the counts with mean ``softmax(decoder) × library size`` and a learnt dispersion per gene (as in scVI), or
    ``nb_log1p``, the negative-binomial likelihood of the log-normalised values with mean ``softplus(decoder)``
    and a learnt dispersion per gene (``MLPNegBin`` of the paper's released code, ``ssl_in_scg``).
    The decoder mirrors the encoder unless ``decoder_hidden_dims`` is given (``[]``: one linear layer, the released
    code's default); ``decoder_output_activation`` follows its output layer (``Sigmoid`` in the released MSE
    autoencoder; ``nb_log1p`` defaults to ``Softplus``).
    ``encoder`` is a factory taking ``n_genes`` (a Hydra ``_partial_``), ``optimizer`` one taking the parameters.
    """

    def __init__(
        self,
        n_genes: int,
        gene_names: Sequence[str] | None = None,
        encoder: Callable[..., nn.Module] = MLPEncoder,
        masking: MaskingStrategy | Callable[..., MaskingStrategy] | None = None,
        reconstruction_loss: str = "mse",
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
        target_sum: float = 1e4,
        compile: bool = False,
        scheduler: LRSchedule | None = None,
        decoder_hidden_dims: Sequence[int] | None = None,
        decoder_output_activation: str | None = None,
    ) -> None:
        super().__init__(n_genes, target_sum, compile, optimizer, scheduler)
        if reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(f"unknown reconstruction_loss {reconstruction_loss!r}: choose {RECONSTRUCTION_LOSSES}")
        if reconstruction_loss == "nb_log1p" and decoder_output_activation is None:
            decoder_output_activation = "Softplus"  # the mean must be positive
        self.encoder = encoder(n_genes=n_genes)
        self.decoder = mirrored_decoder(self.encoder, decoder_hidden_dims, decoder_output_activation)
        self.masking = bind_context(masking, gene_names=gene_names) if masking is not None else RandomMasking()
        self.reconstruction_loss = reconstruction_loss
        if reconstruction_loss in ("nb", "nb_log1p"):
            self.log_dispersion = nn.Parameter(torch.zeros(n_genes))

    def predict_expression(self, visible: Tensor) -> Tensor:
        """Decoder output as log-normalised expression (for ``nb``: ``log1p(softmax × target_sum)``; for
        ``nb_log1p`` the decoder's output is the mean of the log-normalised values already)."""
        out = self.decoder(self.encoder(visible))
        if self.reconstruction_loss == "nb":
            return torch.log1p(torch.softmax(out, dim=1) * self.target_sum)
        return out

    def reconstruct(
        self, x: Tensor, generator: torch.Generator | None = None, masking: MaskingStrategy | None = None
    ) -> tuple[Tensor, Tensor]:
        """Mask log-normalised ``x`` (with the model's own masking, or ``masking``), reconstruct it; return
        (log-normalised reconstruction, loss mask)."""
        visible, mask = (masking or self.masking)(x, generator)
        return self.predict_expression(visible), mask

    def loss(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        x = self.normalized(batch)
        visible, mask = self.masking(x)
        out = self.decoder(self.encoder(visible))
        if self.reconstruction_loss == "mse":
            return masked_mean((out - x).square(), mask)
        if self.reconstruction_loss == "nb_log1p":  # the likelihood of the log-normalised values, as ssl_in_scg
            return -masked_mean(self._negative_binomial(out.float().clamp_min(1e-8).log()).log_prob(x), mask)
        counts = self.counts(batch)
        log_mean = torch.log_softmax(out.float(), dim=1) + counts.sum(dim=1, keepdim=True).clamp_min(1.0).log()
        return -masked_mean(self._negative_binomial(log_mean).log_prob(counts), mask)

    def _negative_binomial(self, log_mean: Tensor) -> NegativeBinomial:
        """NB(mean μ, inverse dispersion θ) is torch's NegativeBinomial(total_count=θ, logits=log μ − log θ)."""
        log_dispersion = self.log_dispersion.expand_as(log_mean)
        return NegativeBinomial(total_count=log_dispersion.exp(), logits=log_mean - log_dispersion, validate_args=False)
