"""Model internals: BYOL's target network, the classifier's class weights, NB reconstruction, data context, and
the one optimiser set-up every method shares."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cellssl.data import CellDataModule
from cellssl.data.context import data_context
from cellssl.data.dataset import batch_from_csr
from cellssl.methods import BYOL, MaskedAutoencoder, PretrainingModule, SupervisedClassifier, build_model
from cellssl.nets import MLP
from cellssl.tasks import config_dir

N_GENES = 30
CONF = Path(config_dir())
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
OPTIMIZERS = sorted(p.stem for p in (CONF / "model" / "optimizer").glob("*.yaml"))


def _batch(n_cells: int = 16, seed: int = 0, labels: bool = False) -> dict[str, torch.Tensor]:
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    counts = sp.csr_matrix(rng.poisson(2.0, size=(n_cells, N_GENES)))
    return batch_from_csr(counts, np.arange(n_cells), rng.integers(0, 3, n_cells) if labels else None)


def _byol(**kwargs) -> BYOL:
    torch.manual_seed(0)
    small = dict(hidden_dims=(16,), out_dim=8, dropout=0.0)
    return BYOL(
        N_GENES,
        projector=lambda in_dim: MLP(in_dim, **small),
        predictor=lambda in_dim: MLP(in_dim, **small),
        **kwargs,
    )


def test_byol_target_changes_only_by_ema():
    model = _byol(ema_decay=0.9).train()
    optimizer = model.configure_optimizers()
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    online, target = model.online_target_pairs()
    assert not any(id(p) in optimized or p.requires_grad for p in target)  # the optimiser never sees it
    assert all(torch.equal(o, t) for o, t in zip(online, target, strict=True))  # starts as a copy
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("target_")}
    for step in range(3):
        loss = model.loss(_batch(seed=step), "train")  # forward passes through the target network...
        after_forward = {k: v for k, v in model.state_dict().items() if k.startswith("target_")}
        assert all(torch.equal(before[k], after_forward[k]) for k in before)  # ...change none of its state
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert all(t.grad is None for t in target)
        online_now = [o.detach().clone() for o in model.online_target_pairs()[0]]
        target_before = [t.clone() for t in model.online_target_pairs()[1]]
        model.on_train_batch_end(None, None, step)
        for o, t_old, t_new in zip(online_now, target_before, model.online_target_pairs()[1], strict=True):
            assert torch.allclose(t_new, 0.9 * t_old + 0.1 * o, atol=1e-6)
        before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("target_")}
    assert not all(torch.equal(o, t) for o, t in zip(*model.online_target_pairs(), strict=True))


def test_byol_cosine_schedule_reaches_one():
    model = _byol(ema_decay=0.99, ema_cosine_schedule=True)

    class _Trainer:
        estimated_stepping_batches = 100
        global_step = 0

    model._trainer = _Trainer()
    for step, expected in [(0, 0.99), (50, 0.995), (100, 1.0)]:
        _Trainer.global_step = step
        assert math.isclose(model.current_decay(), expected, abs_tol=1e-9)


def test_class_weights_balance_classes_and_ignore_missing_labels():
    model = SupervisedClassifier(N_GENES, n_classes=3, class_counts=[10, 30, 0])
    assert torch.allclose(model.class_weights, torch.tensor([40 / 30, 40 / 90, 0.0]))
    batch = _batch(labels=True)
    batch["label"][:4] = -1
    assert torch.isfinite(model.loss(batch, "train"))
    with pytest.raises(ValueError, match=r"data\.label_key"):
        model.loss(_batch(), "train")


def test_nb_reconstruction_is_a_likelihood_of_counts():
    torch.manual_seed(0)
    model = MaskedAutoencoder(N_GENES, reconstruction_loss="nb")
    loss = model.loss(_batch(), "train")
    assert torch.isfinite(loss) and loss > 0  # a negative log-likelihood of counts
    loss.backward()
    assert model.log_dispersion.grad is not None
    reconstruction, _ = model.reconstruct(torch.rand(4, N_GENES))
    # predictions are log-normalised: expm1 of each row sums to the target sum
    assert torch.allclose(torch.expm1(reconstruction).sum(dim=1), torch.full((4,), 1e4), rtol=1e-4)
    with pytest.raises(ValueError, match="reconstruction_loss"):
        MaskedAutoencoder(N_GENES, reconstruction_loss="poisson")


def test_build_model_passes_each_model_only_the_context_it_declares(tmp_path):
    genes = [f"G{i}" for i in range(N_GENES)]
    gmt = tmp_path / "p.gmt"
    gmt.write_text("".join(f"P{p}\t-\t" + "\t".join(genes[p * 5 : p * 5 + 5]) + "\n" for p in range(6)))
    context = {"n_genes": N_GENES, "gene_names": genes, "n_classes": 3, "class_counts": [1, 2, 3]}
    encoder = {"_target_": "cellssl.nets.MLPEncoder", "_partial_": True, "hidden_dims": [8], "embedding_dim": 4}
    mae = build_model(
        {
            "_target_": "cellssl.methods.MaskedAutoencoder",
            "encoder": encoder,
            "masking": {
                "_target_": "cellssl.masking.GeneProgrammeMasking",
                "_partial_": True,
                "programmes": {"_target_": "cellssl.resources.read_gmt", "path": str(gmt)},
            },
        },
        context,
    )
    assert mae.masking.n_programmes == 6 and mae.data_context == context
    classifier = build_model({"_target_": "cellssl.methods.SupervisedClassifier", "encoder": encoder}, context)
    assert classifier.head.out_features == 3
    unlabelled = {"n_genes": N_GENES, "gene_names": genes}  # a store without data.label_key
    with pytest.raises(ValueError, match=r"SupervisedClassifier needs n_classes from the data.*data\.label_key"):
        build_model({"_target_": "cellssl.methods.SupervisedClassifier", "encoder": encoder}, unlabelled)


def _subclasses(cls: type) -> list[type]:
    return [sub for child in cls.__subclasses__() for sub in (child, *_subclasses(child))]


def test_configure_optimizers_is_defined_once_in_the_base_class():
    methods = _subclasses(PretrainingModule)
    assert {"MaskedAutoencoder", "BYOL", "BarlowTwins", "SupervisedClassifier", "FineTuneClassifier"} <= {
        m.__name__ for m in methods
    }
    assert [m.__name__ for m in methods if "configure_optimizers" in vars(m)] == []


def test_optimized_parameters_is_the_hook_that_chooses_what_the_optimiser_updates():
    class HeadOnly(SupervisedClassifier):
        def optimized_parameters(self) -> list[torch.nn.Parameter]:
            return list(self.head.parameters())

    model = HeadOnly(N_GENES, n_classes=3, optimizer=_sgd)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    assert [id(p) for g in optimizer.param_groups for p in g["params"]] == [id(p) for p in model.head.parameters()]


def _sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1)


@pytest.fixture(scope="module")
def pbmc_context(pbmc_store) -> dict:
    datamodule = CellDataModule(str(pbmc_store), label_key="bulk_labels")
    datamodule.setup()
    return data_context(datamodule.store, datamodule.label_key)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("name", MODELS)
def test_every_method_optimises_exactly_its_trainable_parameters(pbmc_context, name, optimizer):
    """Each model config with each optimiser config: the optimiser is the configured one and holds every parameter
    that requires grad, once; BYOL's target network is not among them."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}", f"model/optimizer={optimizer}"])
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), pbmc_context)
    opt = model.configure_optimizers()
    assert type(opt).__name__ == cfg.model.optimizer._target_.rsplit(".", 1)[-1]  # AdamW, LARS, ...
    assert opt.defaults["lr"] == cfg.model.optimizer.lr
    optimized = [id(p) for group in opt.param_groups for p in group["params"]]
    assert sorted(optimized) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    if isinstance(model, BYOL):
        assert not {id(p) for p in model.online_target_pairs()[1]} & set(optimized)
