"""Learning-rate schedules, LARS' batch scaling and the paper recipes' training settings: against the paper's code
(``ssl_in_scg``: Barlow Twins' LARS and ``adjust_learning_rate``) and in real Lightning runs."""

from __future__ import annotations

import csv
import types
from pathlib import Path

import pytest
import torch
from hydra import compose

from cellssl.optim import LARS, StepDecay, WarmupCosine
from cellssl.tasks import config_dir
from helpers import recipe_app
from helpers.reference import reference_module

RECIPES = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("paper_*.yaml"))


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 3))


def test_lars_at_batch_8192_matches_the_papers_lars_with_barlow_twins_rates():
    """Ours with lr 0.2 for a batch of 256, given the global batch 8,192, steps as the paper's LARS with the weights'
    rate 0.2 × 8192 / 256 and the biases' 0.0048 × 8192 / 256 (weight decay and adaptation filtered from 1-d)."""
    bt = reference_module("models.contrastive.bt")
    ours, theirs = _net(), _net()
    base = 8192 / 256
    ours_opt = LARS(ours.parameters(), lr=0.2, weight_decay=1.5e-6, batch_size=8192)
    weights = [p for p in theirs.parameters() if p.ndim > 1]
    biases = [p for p in theirs.parameters() if p.ndim == 1]
    their_opt = bt.LARS(
        [{"params": weights, "lr": 0.2 * base}, {"params": biases, "lr": 0.0048 * base}],
        lr=0,
        weight_decay=1.5e-6,
        weight_decay_filter=True,
        lars_adaptation_filter=True,
    )
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        for net, opt in ((ours, ours_opt), (theirs, their_opt)):
            opt.zero_grad()
            net(x).pow(2).sum().backward()
            opt.step()
    for mine, paper in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(mine, paper, rtol=1e-5, atol=1e-6)


def test_warmup_cosine_is_the_papers_barlow_twins_schedule():
    """Every step's rate equals the paper's ``adjust_learning_rate`` (10 warm-up epochs, cosine to 0.001×)."""
    bt = reference_module("models.contrastive.bt")
    loader_length, epochs, batch = 7, 30, 8192
    args = types.SimpleNamespace(epochs=epochs, batch_size=batch, learning_rate_weights=0.2, learning_rate_biases=0.2)
    param = torch.nn.Parameter(torch.zeros(1))
    ours = torch.optim.SGD([param], lr=0.2 * batch / 256)
    scheduler = WarmupCosine(warmup_epochs=10, final_ratio=0.001).build(ours, loader_length, epochs * loader_length)
    theirs = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(2)], lr=0.0)
    for step in range(1, epochs * loader_length + 1):  # the paper counts steps from 1
        bt.adjust_learning_rate(args, theirs, loader_length, step)
        assert ours.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"], rel=1e-9), step
        ours.step()
        scheduler.step()
    assert theirs.param_groups[0]["lr"] == pytest.approx(0.2 * batch / 256 * 0.001)


def test_step_decay_is_steplr_two_epochs_gamma_09():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    scheduler = StepDecay().build(optimizer, steps_per_epoch=5, total_steps=50)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1e-3, 1e-3, 9e-4, 9e-4, 8.1e-4, 8.1e-4])


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_paper_recipe_sets_the_papers_schedule_and_clipping(hydra_conf, recipe):
    """Masked, BYOL and supervised recipes: StepLR(2, 0.9) per epoch and gradient-norm clipping at 1.0, as the paper's
    trainers; Barlow Twins: LARS at 0.2 × batch / 256 with 10 warm-up epochs and cosine decay (its code steps LARS
    by hand and does not clip)."""
    cfg = compose(recipe_app(recipe), overrides=[f"experiment={recipe}", "data.store_path=x.zarr"])
    if recipe == "paper_barlow_twins":
        assert cfg.model.optimizer._target_ == "cellssl.optim.LARS" and cfg.model.optimizer.lr == 0.2
        assert cfg.model.scheduler == {
            "_target_": "cellssl.optim.WarmupCosine",
            "warmup_epochs": 10,
            "final_ratio": 0.001,
        }
        assert cfg.trainer.gradient_clip_val is None
    else:
        assert cfg.model.scheduler == {"_target_": "cellssl.optim.StepDecay", "step_size": 2, "gamma": 0.9}
        assert cfg.trainer.gradient_clip_val == 1.0 and cfg.trainer.gradient_clip_algorithm == "norm"


def _logged_rates(run: Path, column: str) -> list[float]:
    with open(run / "csv" / "metrics.csv") as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column)]


def test_step_schedule_in_a_real_run_decays_every_two_epochs_and_logs_each_step(train_in_process, tmp_path):
    metrics = train_in_process(
        "model/scheduler=step",
        "trainer.max_epochs=5",
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "evaluation.enabled=false",
    )
    rates = _logged_rates(tmp_path / "run", "lr-AdamW")
    assert len(rates) == metrics["trainer/global_step"] == 15  # one value per optimiser step
    expected = [1e-3 * 0.9 ** (step // 3 // 2) for step in range(15)]
    assert rates == pytest.approx(expected)


def test_lars_with_warmup_cosine_in_a_real_run_scales_to_the_batch(train_in_process, tmp_path):
    """Barlow Twins with LARS: the peak rate is 0.2 × the batch in use / 256; warm-up, then cosine to 0.001×."""
    metrics = train_in_process(
        "model=barlow_twins",
        "model/optimizer=lars",
        "model/scheduler=cosine",
        "model.scheduler.warmup_epochs=1",
        "trainer.max_epochs=3",
        "+trainer.limit_train_batches=4",
        "+trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "evaluation.enabled=false",
    )
    rates = _logged_rates(tmp_path / "run", "lr-LARS")
    total = metrics["trainer/global_step"]
    assert len(rates) == total == 12
    peak = 0.2 * metrics["data/batch_size"] / 256
    schedule = WarmupCosine(warmup_epochs=1, final_ratio=0.001)
    expected = [peak * schedule.factor(step, total // 3, total) for step in range(total)]
    assert rates == pytest.approx(expected)
    assert max(rates) == pytest.approx(peak) and rates[-1] == pytest.approx(peak * 0.001, rel=0.05)
