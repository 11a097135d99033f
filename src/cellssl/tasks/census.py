"""``cellssl-census``: the CELLxGENE census (or a census-shaped SOMA collection) → a cell store.

Example (offline, a local SOMA collection): ``cellssl-census census_uri=/data/census output=/data/census.zarr
filters.min_cells_per_cell_type=100``. Without ``census_uri`` the public census is opened (needs network).
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig, OmegaConf

from cellssl.store.census import CensusFilters, census_to_store
from cellssl.tasks import config_dir
from cellssl.tasks.common import exit_on_input_error


@exit_on_input_error
def census(cfg: DictConfig) -> dict:
    options = OmegaConf.to_container(cfg, resolve=True)
    for key in ("task_name", "paths"):
        options.pop(key, None)
    filters = CensusFilters(**options.pop("filters"))
    summary = census_to_store(filters=filters, **options)
    print(json.dumps(summary, indent=2, default=str))
    return summary


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="census")
def main(cfg: DictConfig) -> None:
    census(cfg)


if __name__ == "__main__":
    main()
