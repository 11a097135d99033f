"""Experiment tracking helpers (W&B, images to every logger)."""

from cellssl.tracking.images import log_image
from cellssl.tracking.wandb_logger import ResilientWandbLogger

__all__ = ["ResilientWandbLogger", "log_image"]
