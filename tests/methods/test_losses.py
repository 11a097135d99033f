"""Joint-embedding objectives and LARS, against hand-computed values and their defining properties."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cellssl.methods.losses import barlow_twins_loss, byol_loss, nt_xent_loss, vicreg_loss
from cellssl.optim import LARS


def _z(n: int = 64, d: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_nt_xent_matches_a_hand_written_loop():
    z1, z2, t = _z(6, 4, 0), _z(6, 4, 1), 0.5
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for i in range(12):
        partner = (i + 6) % 12
        others = [j for j in range(12) if j != i]
        logits = torch.stack([z[i] @ z[j] / t for j in others])
        total += -(z[i] @ z[partner] / t - torch.logsumexp(logits, 0))
    assert torch.isclose(nt_xent_loss(z1, z2, t), total / 12, atol=1e-5)
    assert nt_xent_loss(z1, z1, 0.1) < nt_xent_loss(z1, z2, 0.1)


def test_barlow_twins_zero_for_identical_decorrelated_views():
    z = torch.linalg.qr(_z(64, 8))[0] * 8  # orthogonal columns
    z = z - z.mean(0)
    assert barlow_twins_loss(z, z).item() < 0.05
    assert barlow_twins_loss(z, _z(64, 8, 1)).item() > 5.0
    collapsed = torch.ones(64, 8) + 1e-3 * _z(64, 8, 2)[:, :1]  # every dimension the same signal
    assert barlow_twins_loss(collapsed, collapsed, 1.0) > 40  # redundancy is penalised


def test_vicreg_penalises_collapse_and_disagreement():
    z = _z(256, 8) * 2
    cov = torch.cov(z.T)
    off_diagonal = (cov**2).sum() - (torch.diagonal(cov) ** 2).sum()
    # views agree, every std > 1: only the covariance term is left, for both branches
    assert torch.isclose(vicreg_loss(z, z), 2 * off_diagonal / 8, rtol=1e-4)
    collapsed = torch.zeros(256, 8)
    assert math.isclose(vicreg_loss(collapsed, collapsed).item(), 25 * (1 - math.sqrt(1e-4)), rel_tol=1e-4)
    assert vicreg_loss(z, _z(256, 8, 1) * 2) > 100


def test_byol_loss_range_and_no_gradient_to_target():
    p, t = _z().requires_grad_(), _z(seed=1).requires_grad_()
    assert byol_loss(p, p.detach()).item() < 1e-6
    assert math.isclose(byol_loss(p, -p.detach()).item(), 4.0, rel_tol=1e-6)
    byol_loss(p, t).backward()
    assert p.grad is not None and t.grad is None


def test_lars_scales_weight_updates_by_trust_ratio_and_leaves_biases_plain():
    weight = torch.nn.Parameter(torch.full((2, 2), 3.0))
    bias = torch.nn.Parameter(torch.zeros(2))
    weight.grad, bias.grad = torch.ones(2, 2), torch.ones(2)
    LARS([weight, bias], lr=0.1, momentum=0.0, weight_decay=0.0, eta=0.001).step()
    trust = 0.001 * 6.0 / 2.0  # eta * ||w|| / ||g||
    assert torch.allclose(weight, torch.full((2, 2), 3.0 - 0.1 * trust))
    assert torch.allclose(bias, torch.full((2,), -0.1 * 0.024))  # biases at 0.0048 / 0.2 of the weights' rate
