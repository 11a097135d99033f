"""From store to model: sharded, block-shuffled sparse minibatches and on-device normalisation."""

from cellssl.data.datamodule import CellDataModule
from cellssl.data.normalize import densify, log_normalize

__all__ = ["CellDataModule", "densify", "log_normalize"]
