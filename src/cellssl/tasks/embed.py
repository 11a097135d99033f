"""``cellssl-embed``: add a checkpoint's embedding to an ``.h5ad`` file (or embed a cell store), and draw its UMAP.

The embedding is :meth:`cellssl.CellSSLModel.embed`'s, as in a notebook: the input is read block by block, its
genes aligned to the checkpoint's vocabulary and its counts normalised as in training. An ``.h5ad`` input is
copied with ``obsm[obsm_key]`` (and ``uns['cellssl']``) added, everything else kept as it was; a store input
gives an ``.h5ad`` of its obs and the embedding. Output and ``umap.png`` are written atomically; an existing
output is refused unless ``overwrite=true``. See ``conf/embed.yaml``.
"""

from __future__ import annotations

# isort: off
# W&B (the default logger) before torch and lightning: building wandb's pydantic models looks up their docstrings
# with inspect.getmodule, which scans every loaded module; after torch, lightning and scanpy that import takes
# ~5-10 s instead of ~1 s (cellssl-evaluate on pbmc68k: 20 s -> 11 s)
import wandb  # noqa: F401

# isort: on

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from cellssl.data.cells import open_cells
from cellssl.evaluation.identity import checkpoint_title
from cellssl.evaluation.plots import umap_figure
from cellssl.store import CellStore, InputError
from cellssl.tasks import config_dir
from cellssl.tasks.common import atomic_output, exit_on_input_error, quiet_library_noise, write_json
from cellssl.tasks.outputs import finish_loggers, instantiate_loggers, load_model, save_figure
from cellssl.tracking import log_image

log = logging.getLogger(__name__)


def output_path(cfg: DictConfig, source: Path, output_dir: Path) -> Path:
    """Where the output goes; never the input, and an existing file only with ``overwrite=true``."""
    output = Path(cfg.output) if cfg.output else output_dir / f"{source.stem}.embedded.h5ad"
    if output.resolve() == source.resolve():
        raise InputError(str(output), "output", "is the input file", "give another output path")
    if output.exists() and not cfg.overwrite:
        raise InputError(str(output), "output", "already exists", "choose another output or pass overwrite=true")
    if output.is_dir():
        raise InputError(str(output), "output", "is a folder", "give a file path ending in .h5ad")
    return output


def write_embedded(source: Path, output: Path, obsm: dict[str, np.ndarray], uns: dict[str, Any], obs=None) -> None:
    """The input ``.h5ad`` copied with ``obsm`` entries and ``uns['cellssl']`` added (a store: obs + obsm only)."""
    with atomic_output(output, overwrite=True) as tmp:  # output_path has checked it may be replaced
        if source.is_dir():  # a cell store: its obs and the embedding
            ad.AnnData(obs=obs, obsm=obsm, uns={"cellssl": uns}).write_h5ad(tmp)
            return
        shutil.copyfile(source, tmp)
        with h5py.File(tmp, "r+") as file:
            for key, value in obsm.items():
                if key in file["obsm"]:
                    del file["obsm"][key]
                ad.io.write_elem(file["obsm"], key, value)
            if "cellssl" in file["uns"]:
                del file["uns"]["cellssl"]
            ad.io.write_elem(file["uns"], "cellssl", uns)


def source_obs(source: Path) -> pd.DataFrame:
    if source.is_dir():
        return ad.io.read_elem(CellStore(source).root["obs"])
    return ad.read_h5ad(source, backed="r").obs


@exit_on_input_error
def embed_file(cfg: DictConfig) -> dict[str, Any]:
    """Embed ``cfg.input`` with ``cfg.pretrained``; returns the run's summary (also ``metrics.json``)."""
    quiet_library_noise()
    output_dir = Path(cfg.paths.output_dir)
    source = cfg.input or (cfg.data.store_path if cfg.get("data") else None)
    if source is None:
        raise InputError("config", "input", "nothing to embed", "pass input=<file.h5ad or store> or data.store_path=")
    source = Path(source)
    cells = open_cells(source, layer=cfg.counts_layer, normalised=cfg.normalised)
    cells = dataclasses.replace(cells, fix="set counts_layer= the layer with raw counts, or normalised=true")
    obs = source_obs(source)
    label_key = cfg.umap.label_key
    if label_key is not None and label_key not in obs:
        shown = ", ".join(map(str, obs.columns[:10])) or "none"
        raise InputError(str(source), f"obs['{label_key}']", "no such column", f"set umap.label_key to one of: {shown}")
    output = output_path(cfg, source, output_dir)
    model = load_model(str(cfg.pretrained), cfg.transfer, cfg.trainer.accelerator)
    embedding = model.embed(cells, batch_size=cfg.batch_size)

    loggers = instantiate_loggers(cfg)
    overlap = {k.removeprefix("transfer/"): v for k, v in model.gene_overlap.items()}
    summary: dict[str, Any] = {"embed/n_cells": cells.n_cells, "embed/dim": embedding.shape[1], **model.gene_overlap}
    obsm = {cfg.obsm_key: embedding}
    if cfg.umap.enabled:
        coordinates, fig = umap_figure(embedding, obs, label_key, cfg.umap.n_neighbors, cfg.seed)
        if cfg.umap.keep_coordinates:
            obsm[f"{cfg.obsm_key}_umap"] = coordinates
        fig.axes[0].set_title(checkpoint_title(model), fontsize=9)
        save_figure(fig, output_dir / "umap.png")
        log_image(loggers, "embed/umap", output_dir / "umap.png")
    uns = {"checkpoint": str(cfg.pretrained), "obsm_key": cfg.obsm_key, "transfer": overlap}
    write_embedded(source, output, obsm, uns, obs=obs)
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
