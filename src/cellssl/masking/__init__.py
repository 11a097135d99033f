"""Masking strategies: small objects that turn a batch of expression into (masked input, loss mask)."""

from cellssl.masking.programmes import (
    GeneProgrammeMasking,
    IsolatedMasking,
    ProgrammeToProgrammeMasking,
    ProgrammeToTFMasking,
    membership_matrix,
)
from cellssl.masking.random import FixedMasking, MaskingStrategy, RandomMasking, common_evaluation_mask

__all__ = [
    "FixedMasking",
    "GeneProgrammeMasking",
    "IsolatedMasking",
    "MaskingStrategy",
    "ProgrammeToProgrammeMasking",
    "ProgrammeToTFMasking",
    "RandomMasking",
    "common_evaluation_mask",
    "membership_matrix",
]
