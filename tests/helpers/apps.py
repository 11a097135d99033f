"""Configs of the apps for in-process runs in the tests."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from cellssl.tasks import config_dir


def evaluate_config(tmp_path: Path, store: Path, *overrides: str) -> DictConfig:
    """``conf/evaluate.yaml`` on ``store`` with its bulk_labels, no logger, output in ``tmp_path / 'out'``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "evaluate",
            overrides=[
                "data=zarr",
                f"data.store_path={store}",
                "data.label_key=bulk_labels",
                "~logger",
                f"paths.root_dir={tmp_path}",
                f"paths.output_dir={tmp_path / 'out'}",
                *overrides,
            ],
        )
    GlobalHydra.instance().clear()
    return cfg


def app_config(name: str, *overrides: str, output_dir: Path | None = None) -> DictConfig:
    """``conf/<name>.yaml`` with ``overrides`` for an in-process run; ``output_dir``: its run directory (and, for
    apps with ``paths``, its parent as ``paths.root_dir``)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(name, overrides=list(overrides))
    GlobalHydra.instance().clear()
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.root_dir, cfg.paths.output_dir = str(output_dir.parent), str(output_dir)
    return cfg
