"""Experiment tracking helpers (W&B)."""

from cellssl.tracking.wandb_logger import ResilientWandbLogger

__all__ = ["ResilientWandbLogger"]
