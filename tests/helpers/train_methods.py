"""Train several model configs one after another in one process, as ``cellssl-train`` would train each:
``python -m helpers.train_methods OUTPUT_ROOT STORE MODEL [MODEL ...] -- [OVERRIDE ...]``.

Each model's config is composed from ``conf/train.yaml`` (``model=<name>`` and the overrides) and run by the train
task with its own output directory ``OUTPUT_ROOT/<name>``: a fresh data module, model, callbacks and Trainer each
time. Under ``trainer=ddp_cpu`` Lightning starts the other rank once, by running this same command
(``LOCAL_RANK`` set), and every later Trainer reuses those ranks and their process group: the methods' DDP
runs pay for the ranks' start-up (interpreters, imports, gloo) once instead of once per method.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from cellssl.tasks import config_dir
from cellssl.tasks.train import train


def main(argv: list[str]) -> None:
    separator = argv.index("--") if "--" in argv else len(argv)
    root, store, *models = argv[:separator]
    overrides = argv[separator + 1 :]
    for model in models:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=[f"model={model}", *overrides])
        GlobalHydra.instance().clear()
        with open_dict(cfg):
            cfg.paths.root_dir, cfg.paths.output_dir = root, str(Path(root) / model)
            cfg.data.store_path, cfg.data.prepare = store, None
        train(cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
