"""Training on part of a split: the cells of a seeded random fraction of its donors (data-scaling experiments).

Richter et al. (2024) scaled pretraining data by donors (1 to 100 %). The subset is a list of the split's rows;
:class:`SubsetCellBatchDataset` plans its epochs over those rows only (:class:`~cellssl.data.plan.SubsetPlan`),
so batching, shuffling, DDP shares and mid-epoch resume are those of the full loader.
"""

from __future__ import annotations

import numpy as np

from cellssl.data.dataset import CellBatchDataset
from cellssl.store import CellStore, InputError


def donor_subset_rows(store: CellStore, split: str, donor_key: str, fraction: float, seed: int) -> np.ndarray:
    """Split-relative rows (sorted) of the cells of ``round(fraction × donors)`` (at least 1) of the split's donors.

    Donors are drawn by a permutation seeded with ``seed``; for one seed the subsets of smaller fractions are
    contained in those of larger ones.
    """
    if not 0 < fraction <= 1:
        raise InputError(str(store.path), "data.donor_fraction", f"{fraction} is not in (0, 1]", "use e.g. 0.1")
    start, stop = store.split_range(split)
    codes = store.labels(donor_key)[0][start:stop]
    donors = np.unique(codes[codes >= 0])
    if len(donors) == 0:
        raise InputError(str(store.path), f"obs['{donor_key}']", f"no donors in split {split!r}", "check donor_key")
    n_keep = max(1, round(fraction * len(donors)))
    kept = np.random.default_rng([seed, 7]).permutation(donors)[:n_keep]
    return np.flatnonzero(np.isin(codes, kept))


class SubsetCellBatchDataset(CellBatchDataset):
    """:class:`CellBatchDataset` over the given split-relative ``rows`` only."""

    def __init__(self, *args, rows: np.ndarray, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rows = np.asarray(rows, dtype=np.int64)
