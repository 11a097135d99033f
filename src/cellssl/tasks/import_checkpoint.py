"""``cellssl-import``: turn a checkpoint of another code base (``source=ssl_in_scg``: the paper's released code)
into a cellssl checkpoint, written atomically and never over an existing file. See ``conf/import.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from cellssl.interop import read_class_names
from cellssl.store import InputError
from cellssl.store.vocabulary import read_gene_list
from cellssl.tasks import config_dir
from cellssl.tasks.common import atomic_output, exit_on_input_error, write_json


@exit_on_input_error
def import_checkpoint(cfg: DictConfig) -> Path:
    """Convert ``cfg.checkpoint`` with the ``source`` importer; returns the written cellssl checkpoint."""
    source = Path(str(cfg.checkpoint))
    output = Path(cfg.output) if cfg.output else Path(cfg.paths.output_dir) / "checkpoints" / source.name
    if output.exists():
        raise InputError(str(output), "output", "already exists", "choose another output path")
    classes = read_class_names(cfg.classes) if cfg.classes else None
    if cfg.source not in cfg.importers:
        known = ", ".join(cfg.importers)
        raise InputError("cellssl-import", "source", f"unknown source {cfg.source!r}", f"use one of: {known}")
    importer = instantiate(cfg.importers[cfg.source])
    genes = read_gene_list(cfg.genes)
    checkpoint: dict[str, Any] = importer(
        checkpoint=source,
        genes=genes,
        genes_source=str(cfg.genes),
        class_names=classes,
        classes_source=str(cfg.classes),
    )
    with atomic_output(output) as tmp:
        torch.save(checkpoint, tmp)
    meta = checkpoint["cellssl"]
    summary = {"output": str(output), **meta["imported_from"], "n_genes": meta["data_context"]["n_genes"]}
    write_json(Path(cfg.paths.output_dir) / "metrics.json", summary)
    print(f"\nwrote {output}: {meta['imported_from']['module']} as {meta['model_config']['_target_']}\n", flush=True)
    return output


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="import")
def main(cfg: DictConfig) -> None:
    import_checkpoint(cfg)


if __name__ == "__main__":
    main()
