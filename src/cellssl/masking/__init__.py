"""Masking strategies: small objects that turn a batch of expression into (masked input, loss mask)."""

from cellssl.masking.programmes import (
    GeneProgrammeMasking,
    IsolatedMasking,
    ProgrammeToProgrammeMasking,
    ProgrammeToTFMasking,
    membership_matrix,
)
from cellssl.masking.random import MaskingStrategy, RandomMasking

__all__ = [
    "GeneProgrammeMasking",
    "IsolatedMasking",
    "MaskingStrategy",
    "ProgrammeToProgrammeMasking",
    "ProgrammeToTFMasking",
    "RandomMasking",
    "membership_matrix",
]
