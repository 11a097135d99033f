"""LightningModules: training logic composed from nets, masking strategies and augmentations."""

from cellssl.methods.base import PretrainingModule, Reconstructs, build_model, load_pretrained
from cellssl.methods.contrastive import BYOL, BarlowTwins, JointEmbeddingModule, SimCLR, VICReg
from cellssl.methods.finetune import FineTuneClassifier, FineTuneMode
from cellssl.methods.mae import MaskedAutoencoder
from cellssl.methods.supervised import SupervisedClassifier

__all__ = [
    "BYOL",
    "BarlowTwins",
    "FineTuneClassifier",
    "FineTuneMode",
    "JointEmbeddingModule",
    "MaskedAutoencoder",
    "PretrainingModule",
    "Reconstructs",
    "SimCLR",
    "SupervisedClassifier",
    "VICReg",
    "build_model",
    "load_pretrained",
]
