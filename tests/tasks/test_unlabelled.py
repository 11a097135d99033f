"""A user's unlabelled .h5ad, end to end with no flags beyond paths: cellssl-prepare -> cellssl-train (reconstruction
metrics; kNN skipped in one line; the batch adapted to the small store) -> cellssl.load(...).embed(adata).

The file holds 200 of pbmc68k's cells: at the defaults (40 epochs, W&B offline, the full evaluation) a store this
small trains with the batch adapted to 16 cells, 9 steps an epoch: ~8 s of training against ~13 s for all 700
cells (16 steps an epoch), with the same checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import cellssl
from cellssl.resources import bundled_path
from cellssl.store.sources import load_pbmc68k

pytestmark = pytest.mark.slow


def test_unlabelled_h5ad_prepares_trains_and_embeds(run_app, tmp_path):
    adata = load_pbmc68k()
    adata = adata[np.sort(np.random.default_rng(0).choice(adata.n_obs, 200, replace=False))]
    table = pd.read_csv(bundled_path("protein_coding_genes"), sep="\t")
    ensembl = dict(zip(table["symbol"], table["ensembl_gene_id"], strict=True))
    adata = adata[:, adata.var_names.isin(list(ensembl))].copy()
    adata.var["gene_ids"] = [ensembl[s] for s in adata.var_names]  # as a 10x file: symbols and Ensembl ids
    adata.obs = adata.obs[[]]  # no labels at all
    adata.write_h5ad(tmp_path / "mine.h5ad")

    run_app("cellssl-prepare", f"source={tmp_path / 'mine.h5ad'}", f"output={tmp_path / 'mine.zarr'}")
    run = tmp_path / "run"
    result = run_app("cellssl-train", "data=zarr", f"data.store_path={tmp_path / 'mine.zarr'}", f"hydra.run.dir={run}")
    log = result.stdout + result.stderr
    assert "no labels" in log and "data.adapt_batch_size=false" in log  # said once each, not a traceback
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["reconstruction/encoder/weighted_ev"] > metrics["reconstruction/random_encoder/weighted_ev"] + 0.05
    assert not [key for key in metrics if key.startswith("knn/")]

    model = cellssl.load(run / "checkpoints" / "last.ckpt")
    embedding = model.embed(adata)
    assert embedding.shape == (adata.n_obs, 64) and np.isfinite(embedding).all()
    assert model.gene_overlap["transfer/match_by"] == "ensembl"
