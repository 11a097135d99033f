"""cellssl-embed in process: the output is the input with the embedding added (the API's embedding), a store is
embedded too, and an existing output, the input itself and non-count values are refused with one line."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import cellssl
from cellssl.store.sources import load_pbmc68k
from cellssl.tasks import config_dir
from cellssl.tasks.embed import embed_file


def _config(tmp_path, *overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "embed",
            overrides=[
                "~logger",
                "umap.enabled=false",
                f"paths.root_dir={tmp_path}",
                f"paths.output_dir={tmp_path / 'run'}",
                *overrides,
            ],
        )
    GlobalHydra.instance().clear()
    return cfg


def _refusal(capsys, cfg) -> str:
    with pytest.raises(SystemExit) as exit_info:
        embed_file(cfg)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error
    return error


def test_embed_adds_the_api_embedding_and_keeps_the_file(checkpoints, pbmc_store, tmp_path, capsys):
    source = tmp_path / "cells.h5ad"
    adata = load_pbmc68k()
    adata.write_h5ad(source)
    output = tmp_path / "out.h5ad"
    ckpt = checkpoints["mae"]
    embed_file(_config(tmp_path, f"pretrained={ckpt}", f"input={source}", f"output={output}"))
    embedded = ad.read_h5ad(output)
    np.testing.assert_allclose(embedded.obsm["X_cellssl"], cellssl.load(ckpt).embed(adata), rtol=1e-5, atol=1e-6)
    assert (embedded.X != adata.X).nnz == 0 and embedded.obs.equals(adata.obs)  # everything else as it was
    assert embedded.uns["cellssl"]["transfer"]["vocabulary_covered"] == 1.0

    before = output.read_bytes()
    error = _refusal(capsys, _config(tmp_path, f"pretrained={ckpt}", f"input={source}", f"output={output}"))
    assert "already exists" in error and "overwrite=true" in error and output.read_bytes() == before
    error = _refusal(capsys, _config(tmp_path, f"pretrained={ckpt}", f"input={source}", f"output={source}"))
    assert "is the input" in error

    store_output = tmp_path / "store.h5ad"
    embed_file(
        _config(tmp_path, f"pretrained={ckpt}", "data=zarr", f"data.store_path={pbmc_store}", f"output={store_output}")
    )
    assert ad.read_h5ad(store_output).obsm["X_cellssl"].shape == (700, 64)


def test_embed_refuses_normalised_values_in_its_own_words(checkpoints, tmp_path, capsys):
    adata = load_pbmc68k()
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32).log1p()
    adata.write_h5ad(tmp_path / "normalised.h5ad")
    cfg = _config(tmp_path, f"pretrained={checkpoints['mae']}", f"input={tmp_path / 'normalised.h5ad'}")
    error = _refusal(capsys, cfg)
    assert "non-integer values" in error and "counts_layer=" in error and "normalised=true" in error
    assert not list((tmp_path / "run").glob("*.h5ad"))
