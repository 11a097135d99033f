"""``cellssl-prepare``: an `.h5ad` file (or the built-in ``pbmc68k``) → a cell store.

Example: ``cellssl-prepare source=data/atlas.h5ad output=data/atlas.zarr label_columns=[cell_type]
donor_column=donor_id counts_layer=counts``
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from cellssl.store import prepare_store
from cellssl.tasks import config_dir
from cellssl.tasks.common import exit_on_input_error

log = logging.getLogger(__name__)


@exit_on_input_error
def prepare(cfg: DictConfig) -> str:
    path = prepare_store(
        source=str(cfg.source),
        output=cfg.output,
        counts_layer=cfg.counts_layer,
        label_columns=list(cfg.label_columns),
        donor_column=cfg.donor_column,
        split_fractions=tuple(cfg.split_fractions),
        seed=cfg.seed,
        chunk_size=cfg.chunk_size,
        normalised=cfg.normalised,
        overwrite=cfg.overwrite,
    )
    print(f"wrote {path}")
    return str(path)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="prepare")
def main(cfg: DictConfig) -> None:
    prepare(cfg)


if __name__ == "__main__":
    main()
