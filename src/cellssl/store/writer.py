"""Write a cell store: validate, split, pre-shuffle rows within each split, write Zarr v3 atomically.

Rows are grouped by split (train, val, test) and shuffled within each split, so any contiguous block
of rows is a random sample of its split: training reads large contiguous blocks and still sees
well-mixed batches, and evaluation can take the first N rows of a split as a random subset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr

from cellssl.store.sources import load_source
from cellssl.store.splits import SPLITS, assign_splits
from cellssl.store.validation import InputError, check_columns, check_counts, check_unique_genes

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def vocabulary_hash(gene_names: Sequence[str]) -> str:
    """A short fingerprint of the ordered gene list, so models and stores can check they agree."""
    return hashlib.sha1("\n".join(map(str, gene_names)).encode()).hexdigest()[:16]


def narrowest_count_dtype(max_value: float, normalised: bool) -> np.dtype:
    """The smallest unsigned integer type holding every count (float32 for normalised data)."""
    if normalised:
        return np.dtype(np.float32)
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def write_store(
    adata: ad.AnnData,
    path: str | Path,
    *,
    label_columns: Sequence[str] = (),
    donor_column: str | None = None,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    chunk_size: int = 65_536,
    normalised: bool = False,
    source: str = "anndata",
    overwrite: bool = False,
) -> Path:
    """Validate ``adata`` (counts in ``X``) and write it as a cell store at ``path``.

    The store is written to a temporary sibling and renamed into place, so a failure leaves nothing
    at ``path``. ``chunk_size`` is the number of elements per Zarr chunk of the CSR arrays.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(str(path), "output", "a store already exists here", "remove it or pass overwrite=true")
    counts = adata.X
    if counts is None:
        raise InputError(source, "X", "the data set has no count matrix", "set counts_layer")
    counts = sp.csr_matrix(counts)
    check_counts(counts, source, "X", normalised=normalised)
    check_unique_genes(adata.var_names, source)
    columns = [*label_columns, *([donor_column] if donor_column else [])]
    check_columns(adata.obs, columns, source)

    nonempty = np.asarray(counts.sum(axis=1)).ravel() > 0
    n_empty = int((~nonempty).sum())
    if n_empty:
        log.warning("%s: dropped %d empty cells (no counts)", source, n_empty)
    if not nonempty.any():
        raise InputError(source, "X", "every cell is empty", "check that X holds counts")
    obs = adata.obs.loc[nonempty, columns].copy()
    counts = counts[nonempty]

    split = assign_splits(obs, tuple(split_fractions), seed, donor_column)
    rng = np.random.default_rng(seed + 1)
    order = np.concatenate([rng.permutation(np.flatnonzero(split == name)) for name in SPLITS])

    obs = obs.iloc[order]
    for column in columns:
        obs[column] = pd.Categorical(obs[column].astype(str))
    obs["split"] = pd.Categorical(split[order], categories=list(SPLITS))
    obs.index = pd.Index(adata.obs_names[nonempty][order].astype(str), name="cell_id")
    counts = counts[order]
    counts.sort_indices()
    dtype = narrowest_count_dtype(counts.data.max(initial=0), normalised)
    counts = sp.csr_matrix((counts.data.astype(dtype), counts.indices.astype(np.int32), counts.indptr))

    var = pd.DataFrame(index=pd.Index(adata.var_names.astype(str), name="gene"))
    for column in ("gene_ids", "gene_id", "ensembl_id", "feature_id"):
        if column in adata.var.columns:
            var["ensembl_id"] = adata.var[column].astype(str).to_numpy()
            break
    split_counts = {name: int((split == name).sum()) for name in SPLITS}
    metadata = {
        "format_version": FORMAT_VERSION,
        "source": str(source),
        "n_cells": int(counts.shape[0]),
        "n_genes": int(counts.shape[1]),
        "vocabulary_hash": vocabulary_hash(var.index),
        "split_counts": split_counts,
        "label_columns": list(label_columns),
        "donor_column": donor_column,
        "normalised": bool(normalised),
        "seed": int(seed),
        "dropped_empty_cells": n_empty,
    }
    out = ad.AnnData(X=counts, obs=obs, var=var, uns={"cellssl": {"metadata_json": json.dumps(metadata)}})

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        with ad.settings.override(auto_shard_zarr_v3=False):  # chunked, not sharded (yet)
            ad.io.write_elem(group, "/", out, dataset_kwargs={"chunks": (chunk_size,)})
        if path.exists():  # overwrite: swap in the new store, then remove the old one
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s: %d cells x %d genes, splits %s", path, *counts.shape, split_counts)
    return path


def prepare_store(
    source: str,
    output: str | Path,
    *,
    counts_layer: str | None = None,
    label_columns: Sequence[str] = (),
    donor_column: str | None = None,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    chunk_size: int = 65_536,
    normalised: bool = False,
    overwrite: bool = False,
) -> Path:
    """Read a source (an `.h5ad` path or ``pbmc68k``) and write it as a cell store at ``output``."""
    adata = load_source(source, counts_layer)
    return write_store(
        adata,
        output,
        label_columns=label_columns,
        donor_column=donor_column,
        split_fractions=split_fractions,
        seed=seed,
        chunk_size=chunk_size,
        normalised=normalised,
        source=str(source),
        overwrite=overwrite,
    )
