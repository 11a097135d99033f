"""Synthetic single-cell counts at any scale, streamed into a cell store in bounded memory.

Each cell has a cell type (imbalanced frequencies), a donor (its batch) and a log-normal library size.
Its expression profile is a softmax of gene baselines + cell-type effects (a few percent of genes change
strongly) + donor effects (small shifts on every gene), Gamma-perturbed per (type, donor) pair; counts are
the cell's library drawn multinomially over that profile. Multinomial draws of a Gamma-mixed profile give
negative-binomial-like overdispersion, and drawing only the library's reads (not every cell × gene entry)
makes a 20,000-gene cell cost ~its library size (draws are tallied with a bincount per block of cells,
not sorted), so a million cells take minutes on one core.
Donors are dealt to splits (donor-wise 70/15/15); cells are drawn independently, so rows are already
shuffled within each split.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from cellssl.store.splits import SPLITS
from cellssl.store.writer import StoreWriter

log = logging.getLogger(__name__)


class SyntheticAtlas:
    """The generative model: gene baselines, cell-type and donor effects, library sizes."""

    def __init__(
        self,
        n_genes: int = 20_000,
        n_cell_types: int = 20,
        n_donors: int = 60,
        library_log_mean: float = 7.6,
        library_log_sd: float = 0.5,
        type_effect_fraction: float = 0.05,
        type_effect_sd: float = 2.0,
        donor_effect_sd: float = 0.3,
        dispersion: float = 5.0,
        seed: int = 0,
    ) -> None:
        rng = np.random.default_rng([seed, 1])
        self.n_genes, self.n_cell_types, self.n_donors = n_genes, n_cell_types, n_donors
        self.library_log_mean, self.library_log_sd, self.dispersion = library_log_mean, library_log_sd, dispersion
        self.baseline = rng.normal(0.0, 1.8, n_genes)
        changed = rng.random((n_cell_types, n_genes)) < type_effect_fraction
        self.type_effect = np.where(changed, rng.normal(0.0, type_effect_sd, (n_cell_types, n_genes)), 0.0)
        self.donor_effect = rng.normal(0.0, donor_effect_sd, (n_donors, n_genes))
        frequencies = rng.dirichlet(np.full(n_cell_types, 0.7))  # imbalanced, as in real atlases
        self.type_frequencies = np.sort(frequencies)[::-1]
        self.gene_names = [f"GENE{i:05d}" for i in range(n_genes)]
        self.type_names = [f"type_{i:02d}" for i in range(n_cell_types)]
        self.donor_names = [f"donor_{i:03d}" for i in range(n_donors)]
        self._cdf_cache: dict[tuple[int, int], np.ndarray] = {}
        self._seed = seed

    def _cdf(self, cell_type: int, donor: int) -> np.ndarray:
        key = (cell_type, donor)
        if key not in self._cdf_cache:
            rng = np.random.default_rng([self._seed, 2, cell_type, donor])
            logits = self.baseline + self.type_effect[cell_type] + self.donor_effect[donor]
            weights = np.exp(logits - logits.max()) * rng.gamma(self.dispersion, 1 / self.dispersion, self.n_genes)
            cdf = np.cumsum(weights)
            self._cdf_cache[key] = (cdf / cdf[-1]).astype(np.float32)  # all profiles: ~80 kB each
        return self._cdf_cache[key]

    def sample(self, n_cells: int, donors: np.ndarray, rng: np.random.Generator) -> tuple[sp.csr_matrix, pd.DataFrame]:
        """``n_cells`` cells with donors drawn from ``donors``: CSR counts (uint16) and obs."""
        cell_type = rng.choice(self.n_cell_types, size=n_cells, p=self.type_frequencies)
        donor = rng.choice(donors, size=n_cells)
        library = np.clip(np.exp(rng.normal(self.library_log_mean, self.library_log_sd, n_cells)), 50, 60_000)
        library = library.astype(np.int64)
        group = cell_type * self.n_donors + donor
        order = np.argsort(group, kind="stable")  # cells of one profile next to each other
        genes = np.empty(int(library.sum()), dtype=np.int64)
        groups, first_cell = np.unique(group[order], return_index=True)
        draw_bounds = np.append(np.concatenate([[0], np.cumsum(library[order])])[first_cell], len(genes))
        for g, lo, hi in zip(groups, draw_bounds[:-1], draw_bounds[1:], strict=True):
            cdf = self._cdf(int(g) // self.n_donors, int(g) % self.n_donors)
            genes[lo:hi] = np.searchsorted(cdf, rng.random(hi - lo, dtype=np.float32))
        np.minimum(genes, self.n_genes - 1, out=genes)
        matrix = self._count_draws(genes, library[order], n_cells)[np.argsort(order)]  # back to cell order
        obs = pd.DataFrame(
            {
                "cell_type": np.asarray(self.type_names)[cell_type],
                "donor_id": np.asarray(self.donor_names)[donor],
            }
        )
        return matrix, obs

    def _count_draws(self, genes: np.ndarray, library: np.ndarray, n_cells: int, block: int = 256) -> sp.csr_matrix:
        """CSR counts from per-draw genes, grouped cell by cell (``library[k]`` draws for row ``k``).

        Counted with a ``bincount`` over ``block`` cells × genes at a time: linear in the draws, where
        sorting all (cell, gene) keys with ``np.unique`` took half of the generator's time.
        """
        draw_start = np.concatenate([[0], np.cumsum(library)])
        rows, cols, values = [], [], []
        for first in range(0, n_cells, block):
            last = min(first + block, n_cells)
            lo, hi = draw_start[first], draw_start[last]
            cell = np.repeat(np.arange(last - first), library[first:last])
            tally = np.bincount(cell * self.n_genes + genes[lo:hi], minlength=(last - first) * self.n_genes)
            nonzero = np.flatnonzero(tally)
            row, col = np.divmod(nonzero, self.n_genes)
            rows.append(row + first)
            cols.append(col)
            values.append(np.minimum(tally[nonzero], np.iinfo(np.uint16).max).astype(np.uint16))
        indptr = np.zeros(n_cells + 1, dtype=np.int64)
        np.cumsum(np.bincount(np.concatenate(rows), minlength=n_cells), out=indptr[1:])
        return sp.csr_matrix(
            (np.concatenate(values), np.concatenate(cols).astype(np.int32), indptr), shape=(n_cells, self.n_genes)
        )


@dataclass(frozen=True)
class ChunkTask:
    """One chunk of generated cells: which generator (a class built from ``options``, JSON keyword arguments;
    cached per process), which random stream (``rng_key`` + split + chunk index: the same cells for any number
    of processes), how many cells and from which donors."""

    generator: type
    options: str
    rng_key: tuple[int, ...]
    split_index: int
    chunk_index: int
    n_cells: int
    donors: np.ndarray


_GENERATORS: dict[tuple, Any] = {}


def cached_generator(generator: type, options: dict[str, Any] | str) -> Any:
    """``generator(**options)``, built once per process (the last one asked for is kept)."""
    options = options if isinstance(options, str) else json.dumps(options, sort_keys=True)
    key = (generator, options)
    if key not in _GENERATORS:
        _GENERATORS.clear()
        _GENERATORS[key] = generator(**json.loads(options))
    return _GENERATORS[key]


def _sample_chunk(task: ChunkTask) -> tuple[sp.csr_matrix, pd.DataFrame]:
    """One chunk of cells; runs in worker processes (the generator is built once per process)."""
    rng = np.random.default_rng([*task.rng_key, task.split_index, task.chunk_index])
    return cached_generator(task.generator, task.options).sample(task.n_cells, task.donors, rng)


def donors_of_splits(n_donors: int, split_fractions: Sequence[float], rng: np.random.Generator) -> list[np.ndarray]:
    """Donor indices dealt to train, val and test in the split fractions (each donor in one split)."""
    order = rng.permutation(n_donors)
    cut = np.round(np.cumsum(split_fractions)[:-1] * n_donors).astype(int)
    return np.split(order, cut)


def chunk_tasks(
    generator: type,
    options: dict[str, Any],
    rng_key: Sequence[int],
    n_cells: int,
    donors_of_split: Sequence[np.ndarray],
    split_fractions: Sequence[float],
    chunk_cells: int,
) -> list[ChunkTask]:
    """The chunks of ``n_cells`` cells, split by the split fractions, each split's cells from its donors."""
    cells_of_split = np.round(np.asarray(split_fractions) * n_cells).astype(int)
    cells_of_split[0] = n_cells - cells_of_split[1:].sum()
    frozen = json.dumps(options, sort_keys=True)
    tasks = []
    for split_index, (split, n_split) in enumerate(zip(SPLITS, cells_of_split, strict=True)):
        if n_split and len(donors_of_split[split_index]) == 0:
            raise ValueError(f"no donor falls into split {split!r}: raise n_donors")
        for chunk_index, start in enumerate(range(0, n_split, chunk_cells)):
            n = min(chunk_cells, n_split - start)
            donors = donors_of_split[split_index]
            tasks.append(ChunkTask(generator, frozen, tuple(rng_key), split_index, chunk_index, n, donors))
    return tasks


def write_chunks(writer: StoreWriter, tasks: Sequence[ChunkTask], processes: int = 1, progress: bool = True) -> None:
    """Sample the chunks (in ``processes`` spawned workers when > 1) and append them to ``writer`` in order.

    Memory is bounded by 2 × ``processes`` chunks in flight; cells are named ``cell000000000``, ... in order.
    """
    executor = ProcessPoolExecutor(processes, mp_context=get_context("spawn")) if processes > 1 else None
    pending: deque = deque()
    made = 0
    total = sum(task.n_cells for task in tasks)
    try:
        with tqdm(total=total, desc="synthesise", unit="cells", disable=None if progress else True) as bar:
            for i, task in enumerate(tasks):
                pending.append((task, executor.submit(_sample_chunk, task) if executor else None))
                while pending and (len(pending) > 2 * processes or i == len(tasks) - 1):
                    task, future = pending.popleft()
                    counts, obs = future.result() if future else _sample_chunk(task)
                    obs.index = pd.Index([f"cell{made + j:09d}" for j in range(len(obs))])
                    obs["split"] = SPLITS[task.split_index]
                    writer.append(counts, obs)
                    made += len(obs)
                    bar.update(len(obs))
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)


def synthetic_to_store(
    output: str | Path,
    n_cells: int,
    *,
    n_genes: int = 20_000,
    n_cell_types: int = 20,
    n_donors: int = 60,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    chunk_cells: int = 4096,
    processes: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    **writer_options,
) -> Path:
    """Generate ``n_cells`` synthetic cells into a cell store.

    Memory is bounded by ``chunk_cells`` × (2 × ``processes``) cells in flight; ``processes`` > 1 samples
    chunks in parallel (spawned workers) and the result is identical for any number of processes.
    """
    atlas_options = {"n_genes": n_genes, "n_cell_types": n_cell_types, "n_donors": n_donors, "seed": seed}
    atlas = cached_generator(SyntheticAtlas, atlas_options)
    donors = donors_of_splits(n_donors, split_fractions, np.random.default_rng([seed, 3]))
    tasks = chunk_tasks(SyntheticAtlas, atlas_options, (seed, 4), n_cells, donors, split_fractions, chunk_cells)
    with StoreWriter(
        output,
        atlas.gene_names,
        count_dtype=np.uint16,
        label_columns=["cell_type"],
        donor_column="donor_id",
        source=f"synthetic(n_cells={n_cells}, n_genes={n_genes}, seed={seed})",
        overwrite=overwrite,
        extra_metadata={"seed": seed},
        **writer_options,
    ) as writer:
        write_chunks(writer, tasks, processes, progress)
    return Path(output)
