"""``cellssl-embed``: add a checkpoint's embedding to an AnnData file, and draw its UMAP.

Reads ``input`` (.h5ad with raw counts in X, raw.X or a layer), aligns its genes to the checkpoint's vocabulary,
embeds every cell, and writes ``output`` (the input with ``obsm[obsm_key]``, all obs kept) and ``umap.png``
atomically. See ``conf/embed.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anndata as ad
import hydra
import numpy as np
import scipy.sparse as sp
from omegaconf import DictConfig

from cellssl.evaluation.embed import embed
from cellssl.evaluation.transfer import GeneTable
from cellssl.store import InputError
from cellssl.store.validation import check_counts
from cellssl.tasks import config_dir
from cellssl.tasks.common import atomic_output, exit_on_input_error, quiet_library_noise, write_json
from cellssl.tasks.outputs import (
    align_to_model,
    finish_loggers,
    instantiate_loggers,
    load_checkpoint,
    log_image,
    save_figure,
)

log = logging.getLogger(__name__)


def read_counts(adata: ad.AnnData, counts_layer: str, name: str) -> tuple[sp.csr_matrix, GeneTable]:
    """The raw counts (X, raw.X or a layer) as CSR and the genes of their columns; refuses non-count values."""
    if counts_layer in (None, "X"):
        matrix, var, field = adata.X, adata.var, "X"
    elif counts_layer == "raw":
        if adata.raw is None:
            raise InputError(name, "raw", "the file has no .raw", "set counts_layer to X or a layer name")
        matrix, var, field = adata.raw.X, adata.raw.var, "raw.X"
    elif counts_layer in adata.layers:
        matrix, var, field = adata.layers[counts_layer], adata.var, f"layers['{counts_layer}']"
    else:
        layers = ", ".join(adata.layers.keys()) or "none"
        raise InputError(name, f"layers['{counts_layer}']", "no such layer", f"set counts_layer to X, raw or {layers}")
    counts = sp.csr_matrix(matrix)
    check_counts(counts, name, field)
    return counts, GeneTable.from_var(var)


def umap_figure(embedding: np.ndarray, obs: Any, label_key: str | None, n_neighbors: int, seed: int):
    """scanpy's neighbours graph and UMAP of the embedding; returns the coordinates and the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    view = ad.AnnData(obs=obs.copy(), obsm={"X_emb": embedding})
    sc.pp.neighbors(view, use_rep="X_emb", n_neighbors=min(n_neighbors, view.n_obs - 1), random_state=seed)
    sc.tl.umap(view, random_state=seed)
    fig = sc.pl.umap(view, color=label_key, show=False, return_fig=True, frameon=False)
    return view.obsm["X_umap"], fig


@exit_on_input_error
def embed_file(cfg: DictConfig) -> dict[str, Any]:
    """Embed ``cfg.input`` with ``cfg.pretrained``; returns the run's summary (also ``metrics.json``)."""
    quiet_library_noise()
    output_dir = Path(cfg.paths.output_dir)
    source = Path(cfg.input)
    if not source.is_file():
        raise InputError(str(source), "input", "file not found", "give the path of an existing .h5ad file")
    try:
        adata = ad.read_h5ad(source)
    except Exception as err:  # h5py/anndata raise many types for a corrupt file
        raise InputError(str(source), "file", f"not a readable .h5ad ({type(err).__name__})", "re-export it") from err
    label_key = cfg.umap.label_key
    if label_key is not None and label_key not in adata.obs:
        shown = ", ".join(map(str, adata.obs.columns[:10])) or "none"
        raise InputError(str(source), f"obs['{label_key}']", "no such column", f"set umap.label_key to one of: {shown}")
    model = load_checkpoint(str(cfg.pretrained))
    counts, genes = read_counts(adata, cfg.counts_layer, str(source))
    alignment = align_to_model(model, genes, cfg.transfer, str(source))
    embedding = embed(model.encoder, alignment.apply_csr(counts), cfg.batch_size, model.target_sum)

    adata.obsm[cfg.obsm_key] = embedding
    transfer = {k.removeprefix("transfer/"): v for k, v in alignment.report().items()}  # "/" would nest in h5ad
    adata.uns["cellssl"] = {"checkpoint": str(cfg.pretrained), "obsm_key": cfg.obsm_key, "transfer": transfer}
    loggers = instantiate_loggers(cfg)
    summary: dict[str, Any] = {"embed/n_cells": adata.n_obs, "embed/dim": embedding.shape[1], **alignment.report()}
    if cfg.umap.enabled:
        coordinates, fig = umap_figure(embedding, adata.obs, label_key, cfg.umap.n_neighbors, cfg.seed)
        if cfg.umap.keep_coordinates:
            adata.obsm[f"{cfg.obsm_key}_umap"] = coordinates
        save_figure(fig, output_dir / "umap.png")
        log_image(loggers, "embed/umap", output_dir / "umap.png")
    output = Path(cfg.output) if cfg.output else output_dir / f"{source.stem}.embedded.h5ad"
    with atomic_output(output) as tmp:
        adata.write_h5ad(tmp)
    summary["output"] = str(output)
    write_json(output_dir / "metrics.json", summary)
    for logger in loggers:
        logger.log_metrics({k: v for k, v in summary.items() if isinstance(v, int | float)}, step=0)
    finish_loggers(loggers)
    print(f"\nwrote {output}: obsm['{cfg.obsm_key}'] {embedding.shape}\n", flush=True)
    return summary


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="embed")
def main(cfg: DictConfig) -> None:
    embed_file(cfg)


if __name__ == "__main__":
    main()
