"""Hydra entry points: the only code that reads a Hydra config.

Registers the ``${resource:NAME}`` resolver: the path of a gene-set file bundled with the package
(``hallmark``, ``reactome_wikipathways``, ``collectri``; see :mod:`cellssl.resources`).
"""

from pathlib import Path

from omegaconf import OmegaConf

from cellssl.resources import bundled_path

OmegaConf.register_new_resolver("resource", lambda name: str(bundled_path(name)), replace=True)


def config_dir() -> str:
    """The repository's ``conf/`` in a source checkout, else the copy installed inside the package."""
    here = Path(__file__).resolve()
    repo_conf = here.parents[3] / "conf"
    if (repo_conf / "train.yaml").is_file():
        return str(repo_conf)
    return str(here.parents[1] / "conf")
