"""Hydra entry points: the only code that reads a Hydra config."""

from pathlib import Path


def config_dir() -> str:
    """The repository's ``conf/`` in a source checkout, else the copy installed inside the package."""
    here = Path(__file__).resolve()
    repo_conf = here.parents[3] / "conf"
    if (repo_conf / "train.yaml").is_file():
        return str(repo_conf)
    return str(here.parents[1] / "conf")
