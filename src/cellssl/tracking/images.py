"""Images (PNG files) to every logger that can show them: W&B (``log_image``) and TensorBoard (``add_image``).
Loggers without images (CSV) get nothing: the file itself, under the run directory, is the record."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only


@rank_zero_only
def log_image(loggers: list[Logger], key: str, path: Path, step: int | None = None) -> None:
    """Log the image file at ``path`` as ``key`` (at training step ``step`` when given) to every logger that
    takes images."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            import matplotlib.image

            pixels = matplotlib.image.imread(path)  # height × width × channels, floats in [0, 1]
            logger.experiment.add_image(key, pixels, global_step=step, dataformats="HWC")
