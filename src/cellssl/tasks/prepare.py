"""``cellssl-prepare``: `.h5ad` file(s), the built-in ``pbmc68k``, synthetic data or the simulator → a cell store.

Examples: ``cellssl-prepare source=data/atlas.h5ad output=data/atlas.zarr label_columns=[cell_type]
donor_column=donor_id counts_layer=counts``; ``cellssl-prepare source=synthetic synthetic.n_cells=1000000``;
``cellssl-prepare source=virtual_atlas virtual_atlas.role=target output=sim/target.zarr`` (docs/simulator.md).
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from cellssl.store import prepare_store
from cellssl.store.synthetic import synthetic_to_store
from cellssl.store.virtual_atlas import virtual_atlas_to_store
from cellssl.tasks import config_dir
from cellssl.tasks.common import exit_on_input_error

log = logging.getLogger(__name__)


@exit_on_input_error
def prepare(cfg: DictConfig) -> str:
    layout = {"chunk_size": cfg.chunk_size, "shard_size": cfg.shard_size, "overwrite": cfg.overwrite}
    if cfg.source == "synthetic":
        path = synthetic_to_store(
            cfg.output, **cfg.synthetic, split_fractions=tuple(cfg.split_fractions), seed=cfg.seed, **layout
        )
    elif cfg.source == "virtual_atlas":
        options = OmegaConf.to_container(cfg.virtual_atlas, resolve=True)
        path = virtual_atlas_to_store(
            cfg.output, **options, split_fractions=tuple(cfg.split_fractions), seed=cfg.seed, **layout
        )
    else:
        source = list(cfg.source) if isinstance(cfg.source, ListConfig) else str(cfg.source)
        path = prepare_store(
            source,
            cfg.output,
            counts_layer=cfg.counts_layer,
            label_columns=list(cfg.label_columns),
            donor_column=cfg.donor_column,
            split_fractions=tuple(cfg.split_fractions),
            seed=cfg.seed,
            normalised=cfg.normalised,
            vocabulary=str(cfg.vocabulary),
            match_by=cfg.match_by,
            memory_mb=cfg.memory_mb,
            chunk_rows=cfg.chunk_rows,
            n_top_genes=cfg.genes.n_top_genes,
            flavor=cfg.genes.flavor,
            **layout,
        )
    print(f"wrote {path}")
    return str(path)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="prepare")
def main(cfg: DictConfig) -> None:
    prepare(cfg)


if __name__ == "__main__":
    main()
