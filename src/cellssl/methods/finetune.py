"""Fine-tuning a (pretrained) encoder for cell typing: a classifier head on the encoder, trained on labels.

How much of the model learns is a :class:`FineTuneMode` (full fine-tuning, frozen encoder with an MLP head,
linear probe); the encoder's weights come from a checkpoint (:func:`load_encoder_weights`) or stay at their
random initialisation, which makes the same recipe the supervised baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from cellssl.data.normalize import densify, log_normalize
from cellssl.methods.supervised import SupervisedClassifier
from cellssl.nets import MLP, MLPEncoder
from cellssl.optim import LRSchedule


@dataclass(frozen=True)
class FineTuneMode:
    """Which parameters train and what head sits on the encoder.

    ``full``: encoder and a linear head train; ``frozen``: the encoder is fixed (weights, batch-norm statistics
    and dropout off) and an MLP head with ``head_hidden_dims`` trains; ``linear_probe``: fixed encoder, linear head.
    """

    name: str = "full"
    freeze_encoder: bool = False
    head_hidden_dims: Sequence[int] = field(default_factory=tuple)
    head_dropout: float = 0.1

    def head(self, in_dim: int, n_classes: int) -> nn.Module:
        if not self.head_hidden_dims:
            return nn.Linear(in_dim, n_classes)
        return MLP(in_dim, list(self.head_hidden_dims), n_classes, dropout=self.head_dropout, norm="layer")


class FineTuneClassifier(SupervisedClassifier):
    """:class:`SupervisedClassifier` with a configurable head and an optionally frozen encoder.

    ``gene_alignment`` (set by the fine-tune task, not saved) maps the training data's genes onto the encoder's
    vocabulary before normalisation, so a model pretrained on other genes trains on this data set.
    """

    def __init__(
        self,
        n_genes: int,
        n_classes: int,
        class_counts: Sequence[int] | None = None,
        class_weighted: bool = True,
        mode: FineTuneMode | dict[str, Any] | None = None,
        encoder: Callable[..., nn.Module] = MLPEncoder,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
        target_sum: float = 1e4,
        scheduler: LRSchedule | None = None,
    ) -> None:
        super().__init__(
            n_genes, n_classes, class_counts, class_weighted, encoder, optimizer, target_sum, scheduler=scheduler
        )
        self.finetune_mode = mode if isinstance(mode, FineTuneMode) else FineTuneMode(**(mode or {}))
        self.head = self.finetune_mode.head(self.encoder.out_dim, n_classes)
        self.encoder.requires_grad_(not self.finetune_mode.freeze_encoder)
        self.gene_alignment = None

    def train(self, mode: bool = True) -> FineTuneClassifier:
        """A frozen encoder stays in evaluation mode: no dropout, no batch-norm statistics updates."""
        super().train(mode)
        if self.finetune_mode.freeze_encoder:
            self.encoder.eval()
        return self

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning restores submodules' training flags itself (after validation, at fit start) without
        # calling train(), so the frozen encoder is put back in evaluation mode before every step
        if self.finetune_mode.freeze_encoder:
            self.encoder.eval()

    def counts(self, batch: dict[str, Tensor]) -> Tensor:
        counts = densify(batch)
        return counts if self.gene_alignment is None else self.gene_alignment.apply_dense(counts)

    def normalized(self, batch: dict[str, Tensor]) -> Tensor:
        """Log-normalised expression in the encoder's genes: aligned first, so totals are over the shared genes
        (as at prediction time, which normalises the aligned counts)."""
        if self.gene_alignment is None:
            return super().normalized(batch)
        if self.data_is_normalised:
            return self.counts(batch)  # normalised values, aligned, used as they are
        return log_normalize(self.counts(batch), self.target_sum)


def load_encoder_weights(model: FineTuneClassifier, encoder: nn.Module) -> None:
    """Copy a pretrained encoder's weights (and batch-norm statistics) into the classifier's encoder."""
    model.encoder.load_state_dict(encoder.state_dict(), strict=True)
