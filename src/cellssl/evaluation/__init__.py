"""Metrics and evaluation protocols: kNN cell typing, reconstruction, baselines."""
