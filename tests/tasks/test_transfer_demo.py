"""The evaluation apps end to end on real data: scripts/transfer_demo.sh at small size (pretrain on one half of
pbmc68k named by symbols; fully fine-tune, from the checkpoint and from scratch, two seeds, and kNN-evaluate on
the other half, named by shuffled, partial Ensembl ids; report), then cellssl-embed on the target file. The
frozen and linear-probe modes are tested in-process (tests/methods/test_finetune.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from cellssl.evaluation.report import rows_from_multirun, rows_from_wandb
from cellssl.methods import FineTuneClassifier, load_pretrained

# one xdist worker runs this module: its demo fixture (the whole transfer demo) is built once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("transfer_demo")]
ROOT = Path(__file__).resolve().parents[2]


def _env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CELLSSL_DATA_DIR": str(tmp / "data"),
        "CELLSSL_LOG_DIR": str(tmp / "logs"),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "VIRTUAL_ENV": str(Path(sys.executable).parents[1]),
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The demo's work folder after a small run: 2 epochs, seeds 0 and 1, full fine-tuning."""
    out = tmp_path_factory.mktemp("demo")
    sizes = {"EPOCHS": "2", "FT_EPOCHS": "2", "SEEDS": "0,1", "PRETRAIN_SEEDS": "0", "MODES": "full", "LOGGER": "wandb"}
    env = {**_env(out), "OUT": str(out / "run"), **sizes}
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "transfer_demo.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return out / "run"


def _jobs(demo: Path) -> dict[tuple[str, str, int], dict]:
    jobs = {}
    for path in sorted((demo / "finetune").glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        run = metrics["run"]
        jobs[("ssl" if run["pretrained"] else "scratch", run["mode"], run["seed"])] = {**metrics, "dir": path.parent}
    return jobs


def test_genes_are_aligned_across_identifier_types(demo):
    jobs = _jobs(demo)
    assert len(jobs) == 4
    ssl = jobs[("ssl", "full", 0)]
    assert ssl["transfer/match_by"] == "ensembl"  # symbols translated by the bundled table
    assert ssl["transfer/vocabulary_genes"] == 765
    assert 0.6 < ssl["transfer/vocabulary_covered"] < 0.9  # partial overlap, the rest zero-filled
    assert ssl["transfer/data_genes"] - ssl["transfer/matched_genes"] == 50  # the target's own genes
    assert jobs[("scratch", "full", 0)]["transfer/vocabulary_covered"] == 1.0  # its own genes


def test_fine_tuned_checkpoint_rebuilds_and_starts_from_the_pretrained_encoder(demo):
    pretrained = load_pretrained(demo / "pretrain" / "checkpoints" / "last.ckpt").encoder.state_dict()
    jobs = _jobs(demo)
    tuned = load_pretrained(jobs[("ssl", "full", 0)]["dir"] / "checkpoints" / "last.ckpt")
    scratch = load_pretrained(jobs[("scratch", "full", 0)]["dir"] / "checkpoints" / "last.ckpt")
    assert isinstance(tuned, FineTuneClassifier) and tuned.finetune_mode.name == "full"
    assert tuned.n_genes == 765 and scratch.n_genes == 636  # the checkpoint's vocabulary vs the target's own genes
    assert len(tuned.data_context["gene_names"]) == 765 and "gene_ids" not in tuned.data_context
    assert len(scratch.data_context["gene_ids"]) == 636
    layer = "4.weight"  # the second linear layer (512 x 512): the same shape in both
    moved = float((tuned.encoder.state_dict()[layer] - pretrained[layer]).norm())
    other = float((scratch.encoder.state_dict()[layer] - pretrained[layer]).norm())
    assert 0 < moved < 0.5 * other  # fine-tuning changed the pretrained weights, starting from them


def test_fine_tuning_learns_with_a_fixed_seed(demo):
    jobs = _jobs(demo)
    for source in ("ssl", "scratch"):
        full = jobs[(source, "full", 0)]
        assert full["train/loss_last_epoch"] < 0.95 * full["train/loss_first_epoch"]
        assert full["test/macro_f1"] > 0.3  # 10 classes: chance is about 0.1
        assert 0 < full["test/macro_f1"] <= full["test/weighted_f1"] + 0.3
    per_class = pd.read_csv(jobs[("ssl", "full", 0)]["dir"] / "test_per_class.csv")
    assert len(per_class) == 10 and per_class["support"].sum() == jobs[("ssl", "full", 0)]["test/n_cells"]
    assert (jobs[("ssl", "full", 0)]["dir"] / "test_confusion.png").stat().st_size > 10_000


def test_knn_evaluation_scores_encoder_and_pca(demo):
    metrics = json.loads((demo / "knn" / "metrics.json").read_text())
    methods = [row["method"] for row in metrics["report_rows"]]
    assert methods == ["mae", "random_encoder", "pca", "log_normalised"]
    assert {row["mode"] for row in metrics["report_rows"]} == {"knn"}
    ckpt = str((demo / "pretrain" / "checkpoints" / "last.ckpt").absolute())
    # the random encoder is named by its architecture, not by the checkpoint (one baseline for every method)
    assert [row["checkpoint"] for row in metrics["report_rows"]] == [ckpt, "", "", ""]
    assert metrics["knn/pca/macro_f1"] > 0.4
    assert metrics["reconstruction/encoder/weighted_ev"] < 1 and np.isfinite(metrics["reconstruction/encoder/mse"])
    assert (demo / "knn" / "knn_encoder_confusion.png").is_file()


def test_report_collects_the_multirun(demo):
    runs = pd.read_csv(demo / "report" / "runs.csv", keep_default_na=False)
    # fine-tuning jobs, kNN rows of the encoder and the baselines on the target, and on the source after pretraining
    assert len(runs) == 4 + 4 + 4
    assert set(runs.loc[runs["source"].str.endswith("pretrain"), "dataset"]) == {"source"}
    summary = pd.read_csv(demo / "report" / "summary.csv").set_index("label")
    scratch_full = runs[runs["label"] == "from scratch · full"]["macro_f1"]
    assert summary.loc["from scratch · full", "macro_f1_count"] == 2
    assert summary.loc["from scratch · full", "macro_f1_mean"] == pytest.approx(scratch_full.mean())
    assert summary.loc["from scratch · full", "macro_f1_std"] == pytest.approx(scratch_full.std())
    ssl = runs[runs["label"] == "MAE random 50% · full"]
    assert ssl["checkpoint"].tolist() == [str((demo / "pretrain" / "checkpoints" / "last.ckpt").absolute())] * 2
    table = (demo / "report" / "summary.md").read_text()
    assert re.search(r"\| pbmc68k_target \| MAE random 50% · full +\|", table) and "± " in table
    assert "| pbmc68k_target | MAE random 50% · kNN zero-shot" in table
    assert (demo / "report" / "summary.png").stat().st_size > 10_000


def test_report_rows_read_back_from_the_offline_wandb_runs(demo):
    from_files = pd.DataFrame(rows_from_multirun(demo / "finetune")).drop(columns="source")
    from_wandb = pd.DataFrame(rows_from_wandb(demo / "finetune")).drop(columns="source")
    assert len(from_wandb) == 4  # one W&B run per multirun job
    key = ["method", "seed"]
    pd.testing.assert_frame_equal(
        from_files.sort_values(key).reset_index(drop=True),
        from_wandb.sort_values(key).reset_index(drop=True),
        check_like=True,  # the same columns, in any order
    )


def test_embed_writes_h5ad_that_scanpy_uses(demo, tmp_path):
    target = demo / "data" / "target.h5ad"
    output = tmp_path / "out" / "embedded.h5ad"
    command = [
        str(Path(sys.executable).parent / "cellssl-embed"),
        f"pretrained={demo / 'pretrain' / 'checkpoints' / 'last.ckpt'}",
        f"input={target}",
        f"output={output}",
        "umap.label_key=bulk_labels",
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = subprocess.run(command, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    source, embedded = ad.read_h5ad(target), ad.read_h5ad(output)
    pd.testing.assert_frame_equal(source.obs, embedded.obs)
    assert embedded.obsm["X_cellssl"].shape == (source.n_obs, 64)
    transfer = embedded.uns["cellssl"]["transfer"]
    assert transfer["match_by"] == "ensembl" and 0.6 < transfer["vocabulary_covered"] < 0.9
    sc.pp.neighbors(embedded, use_rep="X_cellssl", n_neighbors=10)
    assert embedded.obsp["connectivities"].shape == (source.n_obs, source.n_obs)
    assert (tmp_path / "run" / "umap.png").stat().st_size > 10_000

    # too small an overlap: one line naming the file, the field and the fix; exit 2; no output left behind
    refused_output = tmp_path / "refused" / "embedded.h5ad"
    command[3] = f"output={refused_output}"
    refused = subprocess.run(
        [*command, "transfer.min_overlap=0.95"], env=_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert refused.returncode == 2
    error = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and str(target) in error[0] and "var" in error[0] and "transfer.min_overlap" in error[0]
    assert not refused_output.parent.exists() or not any(refused_output.parent.iterdir())
