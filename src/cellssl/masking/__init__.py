"""Masking strategies: small objects that turn a batch of expression into (masked input, loss mask)."""

from cellssl.masking.random import MaskingStrategy, RandomMasking

__all__ = ["MaskingStrategy", "RandomMasking"]
