"""Experiment tracking helpers (W&B)."""
