"""LightningModules: training logic composed from nets, masking strategies and augmentations."""

from cellssl.methods.base import PretrainingModule, load_pretrained
from cellssl.methods.mae import MaskedAutoencoder

__all__ = ["MaskedAutoencoder", "PretrainingModule", "load_pretrained"]
