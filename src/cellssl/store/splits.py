"""Train/val/test assignment: donor-wise when a donor column is given (no donor in two splits), else per cell."""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def assign_splits(
    obs: pd.DataFrame, fractions: tuple[float, float, float], seed: int, donor_column: str | None = None
) -> np.ndarray:
    """Return one of ``train``/``val``/``test`` per cell, seeded.

    Donor-wise: donors are shuffled and dealt to splits until each holds its fraction of *cells*,
    as in scTab's 70/15/15 split. Without donors, cells are shuffled and cut at the fractions.
    """
    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    n = len(obs)
    if donor_column is None:
        order = rng.permutation(n)
        bounds = np.round(np.cumsum(fractions)[:-1] * n).astype(int)
        assignment = np.empty(n, dtype=object)
        for name, idx in zip(SPLITS, np.split(order, bounds), strict=True):
            assignment[idx] = name
        return assignment.astype(str)
    donors = obs[donor_column].astype(str).to_numpy()
    inverse, unique = pd.factorize(donors, sort=True)  # np.unique's result, by hashing rather than sorting strings
    sizes = np.bincount(inverse, minlength=len(unique))
    order = rng.permutation(len(unique))
    cumulative = np.cumsum(sizes[order]) / n
    # A donor goes to the first split whose cumulative cell fraction its midpoint falls under.
    midpoints = cumulative - sizes[order] / (2 * n)
    donor_split = np.searchsorted(np.cumsum(fractions)[:-1], midpoints, side="right")
    split_of_donor = np.empty(len(unique), dtype=int)
    split_of_donor[order] = donor_split
    return np.asarray(SPLITS)[split_of_donor[inverse]]
