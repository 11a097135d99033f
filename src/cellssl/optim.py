"""LARS (You et al. 2017), the optimiser of Barlow Twins; torch has none. SGD with momentum whose update of each
weight matrix is scaled by the trust ratio ``eta · ‖w‖ / ‖g + wd · w‖``; biases and norm parameters (1-d) get
neither weight decay nor the scaling, as in Zbontar et al. (2021)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling over SGD with momentum."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 0.2,
        momentum: float = 0.9,
        weight_decay: float = 1.5e-6,
        eta: float = 0.001,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta})

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
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss
