"""Augmentations: applied per cell with probability p, with the noise statistics they claim."""

from __future__ import annotations

import pytest
import torch

from cellssl.augment import Compose, Dropout, GaussianNoise, NegativeBinomialCountNoise


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _x(n_cells: int = 2000, n_genes: int = 50) -> torch.Tensor:
    return torch.log1p(torch.full((n_cells, n_genes), 20.0))


@pytest.mark.parametrize("transform", [GaussianNoise(p=0.3), Dropout(0.5, p=0.3), NegativeBinomialCountNoise(p=0.3)])
def test_applied_to_a_fraction_p_of_cells(transform):
    x = _x()
    changed = (transform(x) != x).any(dim=1).float().mean().item()
    assert abs(changed - 0.3) < 0.04
    assert torch.equal(type(transform)(**{**vars(transform), "p": 0.0})(x), x)


def test_dropout_zeroes_rate_of_genes():
    y = Dropout(rate=0.1, p=1.0)(_x())
    assert abs((y == 0).float().mean().item() - 0.1) < 0.01
    assert torch.all((y == 0) | (y == _x()))


def test_negative_binomial_noise_keeps_mean_with_quadratic_variance():
    mean = 20.0
    counts = torch.expm1(NegativeBinomialCountNoise(intensity=0.2, p=1.0)(_x(4000)))
    assert abs(counts.mean().item() - mean) < 0.3
    assert abs(counts.var().item() - (mean + 0.2 * mean**2)) / (mean + 0.2 * mean**2) < 0.05
    assert torch.allclose(counts, counts.round(), atol=1e-3)  # integers: it is a count model


def test_gaussian_noise_std_and_non_negative():
    x = _x()
    y = GaussianNoise(std=0.1, p=1.0)(x)
    assert abs((y - x).std().item() - 0.1) < 0.005
    assert torch.all(GaussianNoise(std=5.0, p=1.0)(x) >= 0)


def test_compose_chains_in_order():
    y = Compose([GaussianNoise(std=0.1, p=1.0), Dropout(rate=0.5, p=1.0)])(_x())
    assert abs((y == 0).float().mean().item() - 0.5) < 0.01  # dropout last: its zeros survive


def test_invalid_arguments():
    with pytest.raises(ValueError, match="probability"):
        Dropout(p=1.5)
    with pytest.raises(ValueError, match="intensity"):
        NegativeBinomialCountNoise(intensity=0.0)
