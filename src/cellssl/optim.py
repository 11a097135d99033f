"""Optimisers and learning-rate schedules torch lacks.

- :class:`LARS` (You et al. 2017), the optimiser of Barlow Twins: SGD with momentum whose update of each weight matrix
  is scaled by the trust ratio ``eta · ‖w‖ / ‖g + wd · w‖``; biases and norm parameters (1-d) get neither weight
  decay nor the scaling, as in Zbontar et al. (2021). Its ``lr`` is the rate for a batch of ``reference_batch_size``
  cells and is scaled linearly to the global batch (``lr × batch / 256``, as Barlow Twins prescribes).
- Schedules (``model/scheduler``): :class:`ConstantLR` (``none``), :class:`StepDecay` (``step``: Richter et al.'s
  ``StepLR(step_size=2, gamma=0.9)`` stepped per epoch) and :class:`WarmupCosine` (``cosine``: linear warm-up, then
  cosine decay to ``final_ratio`` × the peak, per step; Barlow Twins' schedule with 10 warm-up epochs and 0.001).
  Each builds a torch scheduler once the run's length is known (:meth:`LRSchedule.build`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, StepLR


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling over SGD with momentum.

    ``lr`` is the rate for a batch of ``reference_batch_size`` cells; given ``batch_size`` (the global batch: cells
    per step over all ranks, passed by :meth:`~cellssl.methods.base.PretrainingModule.configure_optimizers`) the
    rate used is ``lr × batch_size / reference_batch_size``. ``reference_batch_size=None`` uses ``lr`` as given.
    Biases and norm parameters step at ``bias_lr_scale`` × the rate (0.024 = 0.0048 / 0.2, Barlow Twins' rates for
    biases and weights).

    Examples:
        >>> import torch
        >>> LARS(torch.nn.Linear(4, 2).parameters(), lr=0.2, batch_size=8192).defaults["lr"]
        6.4
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 0.2,
        momentum: float = 0.9,
        weight_decay: float = 1.5e-6,
        eta: float = 0.001,
        reference_batch_size: int | None = 256,
        batch_size: int | None = None,
        bias_lr_scale: float = 0.024,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if reference_batch_size is not None and batch_size is not None:
            lr = lr * batch_size / reference_batch_size
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta}
        super().__init__(params, {**defaults, "bias_lr_scale": bias_lr_scale})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    weight_norm, update_norm = torch.linalg.norm(p), torch.linalg.norm(update)
                    trust = torch.where(
                        (weight_norm > 0) & (update_norm > 0), group["eta"] * weight_norm / update_norm, 1.0
                    )
                    update = update * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(update).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                scale = 1.0 if p.ndim > 1 else group["bias_lr_scale"]
                p.add_(state["momentum_buffer"], alpha=-group["lr"] * scale)
        return loss


class LRSchedule:
    """A learning-rate schedule chosen in the config, built when training starts.

    ``interval``: ``"step"`` or ``"epoch"``, how often Lightning steps the scheduler.
    """

    interval = "step"
    needs_lengths = False

    def build(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int) -> LRScheduler | None:
        """The torch scheduler for ``optimizer`` (None: a constant learning rate)."""
        raise NotImplementedError

    def lightning_config(
        self, optimizer: torch.optim.Optimizer, lengths: Callable[[], tuple[int, int]]
    ) -> dict[str, Any] | None:
        """The ``lr_scheduler`` entry of ``configure_optimizers`` (None without a scheduler). ``lengths`` gives the
        run's steps per epoch and total steps; it is called only by schedules that depend on them."""
        scheduler = self.build(optimizer, *lengths()) if self.needs_lengths else self.build(optimizer, 0, 0)
        if scheduler is None:
            return None
        return {"scheduler": scheduler, "interval": self.interval, "frequency": 1}


class ConstantLR(LRSchedule):
    """The optimiser's learning rate throughout (``model/scheduler=none``)."""

    def build(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int) -> None:
        return None


class StepDecay(LRSchedule):
    """The rate × ``gamma`` every ``step_size`` epochs: Richter et al.'s ``StepLR(step_size=2, gamma=0.9)``."""

    interval = "epoch"

    def __init__(self, step_size: int = 2, gamma: float = 0.9) -> None:
        if step_size < 1 or not 0 < gamma <= 1:
            raise ValueError(f"StepDecay needs step_size >= 1 and 0 < gamma <= 1, got {step_size}, {gamma}")
        self.step_size, self.gamma = step_size, gamma

    def build(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int) -> StepLR:
        return StepLR(optimizer, step_size=self.step_size, gamma=self.gamma)


class WarmupCosine(LRSchedule):
    """Linear warm-up from 0 over ``warmup_epochs``, then cosine decay to ``final_ratio`` × the peak at the last
    step, updated every step (Barlow Twins: 10 warm-up epochs, ``final_ratio`` 0.001; Zbontar et al. 2021).

    The warm-up is cut to a tenth of the run when the run is shorter than the warm-up (a short debug run still
    decays).
    """

    needs_lengths = True

    def __init__(self, warmup_epochs: float = 10, final_ratio: float = 0.001) -> None:
        if warmup_epochs < 0 or not 0 <= final_ratio <= 1:
            raise ValueError(f"WarmupCosine needs warmup_epochs >= 0 and 0 <= final_ratio <= 1, got {final_ratio}")
        self.warmup_epochs, self.final_ratio = warmup_epochs, final_ratio

    def factor(self, step: int, warmup_steps: int, total_steps: int) -> float:
        """The multiple of the peak rate at optimiser step ``step`` (0-based), as the paper's code computes it for
        its 1-based step count: ``s / warmup`` while warming up, then a cosine from 1 to ``final_ratio``."""
        s = step + 1
        if s < warmup_steps:
            return s / warmup_steps
        progress = min(1.0, (s - warmup_steps) / max(1, total_steps - warmup_steps))
        q = 0.5 * (1 + math.cos(math.pi * progress))
        return q + self.final_ratio * (1 - q)

    def build(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int) -> LambdaLR:
        warmup = round(self.warmup_epochs * steps_per_epoch)
        if warmup >= total_steps:
            warmup = total_steps // 10
        return LambdaLR(optimizer, lambda step: self.factor(step, warmup, total_steps))
