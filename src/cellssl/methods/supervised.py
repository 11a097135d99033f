"""The supervised baseline of Richter et al. (2024): the same MLP encoder with a linear head, trained on labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassF1Score

from cellssl.methods.base import PretrainingModule
from cellssl.nets import MLPEncoder
from cellssl.optim import LRSchedule


class SupervisedClassifier(PretrainingModule):
    """Encoder + linear head with class-weighted cross-entropy; logs macro F1 on the validation split.

    ``class_counts`` (cells per class in the training split, from the store) gives the weights
    ``total / (classes × count)`` (scikit-learn's "balanced"), so rare cell types count as much as common
    ones; classes absent from training get weight 0. Cells with label ``-1`` (missing) are ignored.
    """

    def __init__(
        self,
        n_genes: int,
        n_classes: int,
        class_counts: Sequence[int] | None = None,
        class_weighted: bool = True,
        encoder: Callable[..., nn.Module] = MLPEncoder,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
        target_sum: float = 1e4,
        compile: bool = False,
        scheduler: LRSchedule | None = None,
    ) -> None:
        super().__init__(n_genes, target_sum, compile, optimizer, scheduler)
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
        self.encoder = encoder(n_genes=n_genes)
        self.head = nn.Linear(self.encoder.out_dim, n_classes)
        weights = torch.ones(n_classes)
        if class_weighted and class_counts is not None:
            counts = torch.as_tensor(list(class_counts), dtype=torch.float32)
            weights = torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp_min(1)), 0.0)
        self.register_buffer("class_weights", weights)
        self.val_macro_f1 = MulticlassF1Score(n_classes, average="macro", ignore_index=-1)

    def logits(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

    def loss(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        if "label" not in batch:
            raise ValueError("supervised training needs labels: set data.label_key")
        logits, labels = self.logits(self.normalized(batch)), batch["label"]
        if stage == "val":
            self.val_macro_f1.update(logits, labels)
            self.log("val/macro_f1", self.val_macro_f1, on_epoch=True, prog_bar=True)
        return nn.functional.cross_entropy(logits, labels, weight=self.class_weights, ignore_index=-1)
