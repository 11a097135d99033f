"""Joint-embedding (contrastive) pretraining: two augmented views of each cell, an encoder and a projector,
and a loss that makes the views agree without collapse. BYOL and Barlow Twins follow Richter et al. (2024);
VICReg and SimCLR were the strongest for cell typing in scSSL-Bench (2025)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from cellssl.augment import Augmentation, Compose, Dropout, NegativeBinomialCountNoise
from cellssl.methods.base import PretrainingModule
from cellssl.methods.losses import barlow_twins_loss, byol_loss, nt_xent_loss, vicreg_loss
from cellssl.nets import MLP, MLPEncoder
from cellssl.optim import LRSchedule


def _default_augmentation() -> Augmentation:
    return Compose([NegativeBinomialCountNoise(0.2, p=0.3), Dropout(0.1, p=0.3)])


def _projector(in_dim: int, hidden_dims: tuple[int, ...] = (256,), out_dim: int = 128) -> MLP:
    return MLP(in_dim, hidden_dims, out_dim, dropout=0.0)


class JointEmbeddingModule(PretrainingModule):
    """Shared machinery: views → encoder → projector → :meth:`objective`.

    ``augmentation`` makes the first view, ``second_augmentation`` the second (default: the same pipeline,
    drawn independently). ``encoder`` is a factory taking ``n_genes``, ``projector`` one taking ``in_dim``
    (Hydra ``_partial_``), ``optimizer`` one taking the parameters.
    """

    def __init__(
        self,
        n_genes: int,
        encoder: Callable[..., nn.Module] = MLPEncoder,
        projector: Callable[..., nn.Module] = _projector,
        augmentation: Augmentation | None = None,
        second_augmentation: Augmentation | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
        target_sum: float = 1e4,
        compile: bool = False,
        scheduler: LRSchedule | None = None,
    ) -> None:
        super().__init__(n_genes, target_sum, compile, optimizer, scheduler)
        self.encoder = encoder(n_genes=n_genes)
        self.projector = projector(in_dim=self.encoder.out_dim)
        self.augmentation = augmentation if augmentation is not None else _default_augmentation()
        self.second_augmentation = second_augmentation if second_augmentation is not None else self.augmentation

    def views(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Two independently augmented copies of the batch's log-normalised expression."""
        x = self.normalized(batch)
        return self.augmentation(x), self.second_augmentation(x)

    def objective(self, z1: Tensor, z2: Tensor) -> Tensor:
        raise NotImplementedError

    def loss(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        v1, v2 = self.views(batch)
        return self.objective(self.projector(self.encoder(v1)), self.projector(self.encoder(v2)))


class SimCLR(JointEmbeddingModule):
    """SimCLR (Chen et al. 2020): NT-Xent with the other cells of the batch as negatives."""

    def __init__(self, n_genes: int, temperature: float = 0.1, **kwargs: Any) -> None:
        super().__init__(n_genes, **kwargs)
        self.temperature = temperature

    def objective(self, z1: Tensor, z2: Tensor) -> Tensor:
        return nt_xent_loss(z1, z2, self.temperature)


class BarlowTwins(JointEmbeddingModule):
    """Barlow Twins (Zbontar et al. 2021): cross-correlation of the views' projections → identity."""

    def __init__(self, n_genes: int, redundancy_weight: float = 0.0051, **kwargs: Any) -> None:
        super().__init__(n_genes, **kwargs)
        self.redundancy_weight = redundancy_weight

    def objective(self, z1: Tensor, z2: Tensor) -> Tensor:
        return barlow_twins_loss(z1, z2, self.redundancy_weight)


class VICReg(JointEmbeddingModule):
    """VICReg (Bardes et al. 2022): invariance, variance and covariance terms on the projections."""

    def __init__(
        self,
        n_genes: int,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(n_genes, **kwargs)
        self.weights = {
            "invariance_weight": invariance_weight,
            "variance_weight": variance_weight,
            "covariance_weight": covariance_weight,
        }

    def objective(self, z1: Tensor, z2: Tensor) -> Tensor:
        return vicreg_loss(z1, z2, **self.weights)


def _batch_statistics_only(module: nn.Module) -> nn.Module:
    """Make every batch norm use the statistics of the current batch and keep no running buffers, so the
    module's state is its parameters alone."""
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.track_running_stats = False
            child.running_mean = child.running_var = child.num_batches_tracked = None
    return module


class BYOL(JointEmbeddingModule):
    """BYOL (Grill et al. 2020): an online encoder + projector + predictor predicts a target network's projection
    of the other view; the target is an exponential moving average of the online network (decay ``ema_decay``,
    raised to 1 along a cosine over training with ``ema_cosine_schedule``). Symmetric loss over both views.

    The target network has no optimiser and no running statistics: it changes only by the EMA update.
    """

    def __init__(
        self,
        n_genes: int,
        predictor: Callable[..., nn.Module] = _projector,
        ema_decay: float = 0.99,
        ema_cosine_schedule: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(n_genes, **kwargs)
        if not 0.0 <= ema_decay <= 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1], got {ema_decay}")
        self.predictor = predictor(in_dim=self.projector.out_dim)
        self.target_encoder = _batch_statistics_only(copy.deepcopy(self.encoder)).requires_grad_(False)
        self.target_projector = _batch_statistics_only(copy.deepcopy(self.projector)).requires_grad_(False)
        self.ema_decay, self.ema_cosine_schedule = ema_decay, ema_cosine_schedule

    def current_decay(self) -> float:
        """The EMA decay at this step: constant, or ``1 - (1 - base)(cos(π k / K) + 1) / 2`` with the schedule."""
        if not self.ema_cosine_schedule or self._trainer is None:
            return self.ema_decay
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        progress = min(self.global_step / total, 1.0)
        return 1.0 - (1.0 - self.ema_decay) * (math.cos(math.pi * progress) + 1.0) / 2.0

    def online_target_pairs(self) -> tuple[list[Tensor], list[Tensor]]:
        """Matching parameter lists of the online network (encoder, projector) and the target network."""
        online = [*self.encoder.parameters(), *self.projector.parameters()]
        target = [*self.target_encoder.parameters(), *self.target_projector.parameters()]
        return online, target

    @torch.no_grad()
    def update_target(self, decay: float) -> None:
        """``target ← decay · target + (1 − decay) · online``."""
        online, target = self.online_target_pairs()
        torch._foreach_lerp_(target, online, 1.0 - decay)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.update_target(self.current_decay())

    def loss(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        v1, v2 = self.views(batch)
        p1 = self.predictor(self.projector(self.encoder(v1)))
        p2 = self.predictor(self.projector(self.encoder(v2)))
        with torch.no_grad():
            t1 = self.target_projector(self.target_encoder(v1))
            t2 = self.target_projector(self.target_encoder(v2))
        return (byol_loss(p1, t2) + byol_loss(p2, t1)) / 2

    def optimized_parameters(self) -> list[nn.Parameter]:
        """The online network's parameters: the target network is left out (it changes only by the EMA)."""
        target = {id(p) for p in self.online_target_pairs()[1]}
        return [p for p in super().optimized_parameters() if id(p) not in target]
