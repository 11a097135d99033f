"""The path from store to device on the CPU (the same code a GPU runs with accelerator=gpu): batches stay sparse
until the model's step, normalisation on the device matches the dense reference, masks and augmentations are
built on the input's device, bf16 autocast trains, torch.compile is wired, the pinning stage keeps plan order."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cellssl.augment import Compose, Dropout, GaussianNoise, NegativeBinomialCountNoise
from cellssl.data import datamodule as datamodule_module
from cellssl.data.context import data_context
from cellssl.data.dataset import batch_from_csr
from cellssl.data.normalize import densify, log_normalize, normalized_dense
from cellssl.data.transfer import batch_to_device, in_background
from cellssl.masking import GeneProgrammeMasking, ProgrammeToProgrammeMasking, ProgrammeToTFMasking, RandomMasking
from cellssl.methods import build_model
from cellssl.methods.base import is_compiled
from cellssl.tasks import config_dir

ROOT = Path(__file__).resolve().parents[2]


def composed(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def model_and_data(store: Path, *overrides: str):
    cfg = composed(f"data.store_path={store}", "data.prepare=null", *overrides)
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    model = build_model(
        OmegaConf.to_container(cfg.model, resolve=True), data_context(datamodule.store, datamodule.label_key)
    )
    return cfg, model, datamodule


def fit(model, datamodule, steps: int, **trainer_options) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_options,
    )
    trainer.fit(model, datamodule=datamodule)
    return trainer


def random_counts(n_cells: int = 40, n_genes: int = 60, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.poisson(0.4, (n_cells, n_genes)) * rng.integers(1, 30, (n_cells, n_genes))
    dense[[0, 7, n_cells - 1]] = 0  # empty cells, also at the ends
    return sp.csr_matrix(dense.astype(np.uint16))


@pytest.mark.parametrize("model", ["mae", "byol"])
def test_training_batches_reach_the_device_step_sparse(pbmc_store, model):
    """With the shipped data configs the host never densifies: every batch handed to the host → device transfer
    and every batch the training step sees is sparse CSR with integer counts."""
    _, module, datamodule = model_and_data(pbmc_store, f"model={model}", "data.batch_size=64")
    assert datamodule.dense is False and composed("data=zarr", "data.store_path=x").data.get("dense", False) is False
    seen: dict[str, list] = {"transfer": [], "step": []}
    transfer, step = datamodule.transfer_batch_to_device, module.training_step

    def recording_transfer(batch, device, dataloader_idx):
        seen["transfer"].append((batch["counts"].layout, batch["counts"].dtype))
        return transfer(batch, device, dataloader_idx)

    def recording_step(batch, batch_idx):
        seen["step"].append((batch["counts"].layout, batch["counts"].dtype))
        return step(batch, batch_idx)

    datamodule.transfer_batch_to_device, module.training_step = recording_transfer, recording_step
    fit(module, datamodule, steps=3)
    assert len(seen["transfer"]) == len(seen["step"]) == 3
    assert all(layout == torch.sparse_csr and not dtype.is_floating_point for layout, dtype in seen["transfer"])
    assert seen["step"] == seen["transfer"]


def test_batch_to_device_keeps_sparse_layout_and_values():
    batch = batch_from_csr(random_counts(), np.arange(40))
    moved = batch_to_device(batch, "cpu")
    assert moved["counts"].layout == torch.sparse_csr
    assert torch.equal(densify(moved), densify(batch)) and torch.equal(moved["cell_id"], batch["cell_id"])


@pytest.mark.parametrize("target_sum", [1e4, 1e6])
def test_normalisation_on_the_non_zeros_matches_the_dense_reference(pbmc_store, target_sum):
    counts = random_counts()
    batch = batch_from_csr(counts, np.arange(counts.shape[0]))
    reference = log_normalize(torch.from_numpy(counts.toarray().astype(np.float32)), target_sum)
    ours = normalized_dense(batch, target_sum)
    assert ours.dtype == torch.float32 and ours.layout == torch.strided
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)
    assert torch.equal(ours[[0, 7, 39]], torch.zeros(3, 60))  # empty cells stay zero
    # and on real counts, against the dense path the models used before
    from cellssl.store import CellStore

    real, ids = CellStore(pbmc_store).read_split("train")
    real_batch = batch_from_csr(real[:128], ids[:128])
    torch.testing.assert_close(normalized_dense(real_batch, target_sum), log_normalize(densify(real_batch), target_sum))


def test_masks_and_augmentations_are_built_on_the_inputs_device():
    """On the meta device any tensor made on the host and combined with the batch raises; so nothing here is."""
    genes = [f"g{i}" for i in range(60)]
    programmes = {f"p{i}": genes[i * 10 : i * 10 + 12] for i in range(5)}
    counts = batch_to_device(batch_from_csr(random_counts(), np.arange(40)), "meta")
    x = normalized_dense(counts)
    assert x.device.type == "meta" and x.shape == (40, 60)
    strategies = [
        RandomMasking(0.5),
        GeneProgrammeMasking(programmes, genes, min_size=5),
        GeneProgrammeMasking(programmes, genes, min_size=5, per_cell=False, rescale=True),
        ProgrammeToTFMasking({"g0": genes[10:25], "g30": genes[40:55]}, genes, min_targets=5),
        ProgrammeToProgrammeMasking(programmes, genes, min_size=5),
    ]
    for strategy in strategies:
        visible, mask = strategy(x)
        assert visible.device.type == mask.device.type == "meta", strategy
    augment = Compose([NegativeBinomialCountNoise(0.2, p=0.3), Dropout(0.1, p=0.3), GaussianNoise(0.2, p=0.3)])
    assert augment(x).device.type == "meta"


def test_bf16_autocast_trains_on_cpu(pbmc_store):
    """precision=bf16-mixed runs the networks in bfloat16 (checked on the encoder's output) and the loss falls."""
    _, model, datamodule = model_and_data(pbmc_store, "model=mae", "data.batch_size=64")
    L.seed_everything(0)
    dtypes, losses = set(), []
    model.encoder.register_forward_hook(lambda module, args, out: dtypes.add(out.dtype))
    model.on_train_batch_end = lambda outputs, batch, batch_idx: losses.append(float(outputs["loss"]))
    fit(model, datamodule, steps=48, precision="bf16-mixed")
    assert dtypes == {torch.bfloat16}
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses


def test_compile_flag_compiles_every_network_and_keeps_checkpoints_compatible(pbmc_store):
    cfg, model, _ = model_and_data(pbmc_store, "model=byol", "model.compile=true")
    assert cfg.model.compile is True and model.compile_networks
    names = list(model.state_dict())
    model.configure_model()
    networks = ["encoder", "projector", "predictor", "target_encoder", "target_projector"]
    assert all(is_compiled(getattr(model, name)) for name in networks)
    assert list(model.state_dict()) == names  # checkpoints keep their keys
    off = model_and_data(pbmc_store, "model=byol")[1]
    off.configure_model()
    assert not any(is_compiled(getattr(off, name)) for name in networks)


def test_compiled_networks_train_and_copies_use_their_own_weights(pbmc_store):
    """One compiled training step on a tiny MAE; a deep copy of a compiled encoder runs on the copy's weights."""
    _, model, datamodule = model_and_data(
        pbmc_store, "model=mae", "model.compile=true", "model.encoder.hidden_dims=[16]", "data.batch_size=128"
    )
    fit(model, datamodule, steps=2)
    assert is_compiled(model.encoder) and is_compiled(model.decoder)
    encoder, x = model.encoder, torch.rand(5, model.n_genes)  # training mode, as compiled (no recompilation)
    twin = copy.deepcopy(encoder)
    with torch.no_grad():
        for p in twin.parameters():
            p.zero_()
    assert torch.equal(twin(x), torch.zeros(5, encoder.out_dim))
    assert not torch.equal(encoder(x), twin(x))


def test_pinning_stage_keeps_plan_order_and_runs_off_the_training_thread(pbmc_store, monkeypatch):
    """The pinning stage (pinning itself needs CUDA: here the stage's transform only records its thread)."""
    threads = set()

    def record(batch, device=None):
        threads.add(threading.current_thread().name)
        return batch

    monkeypatch.setattr(datamodule_module, "pin_batch", record)
    options = {"label_key": "bulk_labels", "batch_size": 32, "block_size": 16, "shuffle_batches": 3}
    plain = datamodule_module.CellDataModule(str(pbmc_store), **options).train_dataloader()
    pinned = datamodule_module.CellDataModule(str(pbmc_store), pin_memory=True, **options).train_dataloader()
    assert [b["cell_id"].tolist() for b in pinned] == [b["cell_id"].tolist() for b in plain]
    assert threads == {"cellssl-stage"}


def test_background_stage_order_errors_and_early_stop():
    assert list(in_background(range(20), lambda i: i * i, depth=3)) == [i * i for i in range(20)]

    def failing(i):
        if i == 5:
            raise ValueError("bad item 5")
        return i

    with pytest.raises(ValueError, match="bad item 5"):
        list(in_background(range(10), failing))
    produced = []

    def source():
        for i in range(10_000):
            produced.append(i)
            yield i

    stage = in_background(source(), lambda i: i, depth=2)
    assert [next(stage) for _ in range(3)] == [0, 1, 2]
    stage.close()
    assert not any(t.name == "cellssl-stage" for t in threading.enumerate())
    assert len(produced) < 10  # the thread stopped instead of running through the source


@pytest.mark.slow
def test_bench_train_runs_on_a_tiny_store_and_prints_its_table(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--cells", "2000", "--genes", "300"]
    command += ["--batch-size", "128", "--warmup", "1", "--steps", "2", "--repeats", "1", "--loader-batches", "3"]
    command += ["--processes", "1", "--workdir", str(tmp_path), "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| model | feed | cells/s (median) |" in result.stdout and "loader cores per GPU" in result.stdout
    report = json.loads(out.read_text())
    rows = {(r["method"], r["feed"]): r for r in report["results"]}
    assert set(rows) == {("mae", "sparse"), ("mae", "dense"), ("byol", "sparse"), ("byol", "dense")}
    assert all(r["cells_per_s"] > 0 and r["vs_host_dense"] > 0 for r in rows.values())
    assert rows["mae", "sparse"]["checks"]["host_layout"] == "torch.sparse_csr"  # the training path stays sparse
    assert rows["mae", "dense"]["checks"]["host_layout"] == "torch.strided"  # the baseline densified on the host
    assert report["loader_cost"]["read_assemble_cpu_s_per_mcells"] > 0 and not report["errors"]
