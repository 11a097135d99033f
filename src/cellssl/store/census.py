"""CELLxGENE census (or any census-shaped SOMA collection) → cell store, with scTab-like filters, in bounded memory.

The steps, all driven by obs alone until the last:

1. read the obs table with a ``value_filter`` (primary data only, chosen assays, any extra condition), only the
   columns needed;
2. keep the cell types with at least ``min_cells_per_cell_type`` cells from at least
   ``min_donors_per_cell_type`` donors (scTab: 5,000 cells, 30 donors);
3. assign donor-wise train/val/test splits (:func:`~cellssl.store.splits.assign_splits`, 70/15/15);
4. decide the final order: grouped by split, a seeded permutation within each split;
5. read ``X/raw`` in storage order, ``chunk_cells`` cells (by ``soma_joinid``) at a time, map census genes to
   the target vocabulary, and scatter the rows into buckets of consecutive final rows (on disk beyond
   ``memory_mb``, :class:`~cellssl.store.buckets.RowBuckets`); then append the buckets, each placed into
   final order, to the :class:`~cellssl.store.writer.StoreWriter`.

Memory holds the filtered obs codes, one chunk of counts and one bucket, never the census matrix. Reading in
storage order matters: a chunk of cells in final (shuffled) order is scattered over the whole array and
decompresses about one storage tile per cell it wants; on a local 200k-cell experiment that took 7× as long
as reading the same cells in storage order. Opening by
``census_uri`` (a local or S3 SOMA collection) and by ``census_version`` differ only in how the collection is
opened. The target genes are all census genes, or a fixed list (e.g. protein-coding genes) matched by Ensembl
id, where list genes absent from the census become zero columns.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from cellssl.store.buckets import RowBuckets
from cellssl.store.output import check_output
from cellssl.store.plan import buckets_by_cells, final_order, write_buckets
from cellssl.store.splits import SPLITS, assign_splits
from cellssl.store.validation import InputError
from cellssl.store.vocabulary import GeneTable, read_gene_list, strip_version, unique_symbols
from cellssl.store.writer import StoreWriter

log = logging.getLogger(__name__)

# The 10x protocols scTab kept (Fischer et al. 2024; theislab/scTab docs/data.md).
SCTAB_ASSAYS = (
    "10x 5' v2",
    "10x 3' v3",
    "10x 3' v2",
    "10x 5' v1",
    "10x 3' v1",
    "10x 3' transcription profiling",
    "10x 5' transcription profiling",
)
DONOR_SCOPES = ("dataset", "global")


@dataclass
class CensusFilters:
    """Which cells to take from the census; the defaults are scTab's.

    ``assays``: keep only these ``assay`` values (empty: all). ``primary_only``: ``is_primary_data == True``
    (each cell once, however many data sets re-use it). A cell type (``cell_type_column``) is kept when it has
    at least ``min_cells_per_cell_type`` cells and at least ``min_donors_per_cell_type`` donors after the
    other filters. ``value_filter``: an extra SOMA condition ANDed with the rest, e.g.
    ``"disease == 'normal' and tissue_general in ['blood', 'lung']"``.
    """

    organism: str = "homo_sapiens"
    measurement: str = "RNA"
    x_layer: str = "raw"
    assays: Sequence[str] = SCTAB_ASSAYS
    primary_only: bool = True
    min_cells_per_cell_type: int = 5000
    min_donors_per_cell_type: int = 30
    cell_type_column: str = "cell_type"
    value_filter: str | None = None

    def soma_value_filter(self) -> str | None:
        """The obs ``value_filter`` these filters give (``None`` when they select every cell)."""
        parts = []
        if self.primary_only:
            parts.append("is_primary_data == True")
        if self.assays:
            # repr() quotes each name so that it parses: "10x 3' v2" keeps its apostrophe
            parts.append(f"assay in {[str(a) for a in self.assays]!r}")
        if self.value_filter and str(self.value_filter).strip():
            parts.append(f"({self.value_filter})")
        return " and ".join(parts) or None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["assays"] = list(self.assays)
        return out


@dataclass
class _Vocabulary:
    """The store's genes and, for every census var ``soma_joinid``, its store column (-1: not kept)."""

    symbols: list[str]
    ensembl_ids: list[str]
    column_of_var: np.ndarray
    overlap: dict[str, Any] = field(default_factory=dict)


def _import_census() -> tuple[Any, Any]:
    try:
        import cellxgene_census
        import tiledbsoma
    except ImportError as err:
        raise ImportError(
            f"census ingestion needs the cellxgene-census and tiledbsoma packages ({err}); "
            "install them with: pip install cellssl[census]"
        ) from err
    return cellxgene_census, tiledbsoma


def _gene_list(genes: str | Path | Sequence[str]) -> tuple[GeneTable, str]:
    """A gene-list file or a list of Ensembl ids as a table with Ensembl ids, and how the summary names it."""
    if isinstance(genes, (str, Path)):
        table, mode = read_gene_list(genes), str(genes)
    else:
        ids = [str(g) for g in genes]
        table = GeneTable(symbols=np.array(ids, dtype=object), ensembl_ids=np.array(ids, dtype=object))
        mode = f"list of {len(ids)} ids"
    if table.ensembl_ids is None:
        raise InputError(
            str(genes), "genes", "the gene list has no Ensembl gene ids", "give a TSV with an ensembl_gene_id column"
        )
    return table, mode


def _target_vocabulary(var: pd.DataFrame, genes: str | Path | Sequence[str], source: str) -> _Vocabulary:
    """Map the census genes (var with soma_joinid, feature_id, feature_name) onto the target vocabulary."""
    var_keys = strip_version(var["feature_id"].astype(str))
    if pd.Index(var_keys).has_duplicates:
        raise InputError(source, "var.feature_id", "duplicated Ensembl ids in the census", "report the census version")
    census_names = var["feature_name"].astype(str).to_numpy()
    joinids = var["soma_joinid"].to_numpy()
    column_of_var = np.full(int(joinids.max()) + 1 if len(joinids) else 0, -1, dtype=np.int64)
    if isinstance(genes, str) and genes == "all":
        names, renamed = unique_symbols(census_names, var_keys)
        column_of_var[joinids] = np.arange(len(var))
        overlap = {
            "mode": "all",
            "vocabulary": len(var),
            "census_genes": len(var),
            "matched": len(var),
            "missing": 0,
            "census_genes_dropped": 0,
            "renamed_duplicates": renamed,
        }
        log.info("genes: all %d census genes", len(var))
        return _Vocabulary(list(names), [str(v) for v in var["feature_id"]], column_of_var, overlap)

    table, mode = _gene_list(genes)
    keys = pd.Index(strip_version(table.ensembl_ids))
    keep = ~keys.duplicated()
    keys = keys[keep]
    ensembl = [str(e) for e in np.asarray(table.ensembl_ids)[keep]]
    list_symbols = pd.Series(np.asarray(table.symbols, dtype=object)[keep])
    # where the list has no symbol (or only repeats the id), use the census's name, else the id
    census_name_of = dict(zip(var_keys, census_names, strict=True))
    no_symbol = list_symbols.isna() | list_symbols.astype(str).isin(["", "nan"]) | (list_symbols.astype(str) == ensembl)
    fallback = pd.Series([census_name_of.get(k, e) for k, e in zip(keys, ensembl, strict=True)])
    names, renamed = unique_symbols(np.where(no_symbol, fallback, list_symbols.astype(str)), ensembl)
    target_column = keys.get_indexer(var_keys)
    column_of_var[joinids] = target_column
    matched = int((target_column >= 0).sum())
    missing_keys = keys[~keys.isin(var_keys)]
    overlap = {
        "mode": mode,
        "vocabulary": len(keys),
        "census_genes": len(var),
        "matched": matched,
        "missing": len(missing_keys),
        "missing_examples": [str(k) for k in missing_keys[:10]],
        "census_genes_dropped": len(var) - matched,
        "vocabulary_covered": matched / max(len(keys), 1),
        "renamed_duplicates": renamed,
    }
    log.info(
        "genes: %d of the %d-gene list found in the census by Ensembl id (%.1f%%); %d list genes absent "
        "(zero columns); %d census genes dropped",
        matched,
        len(keys),
        100 * overlap["vocabulary_covered"],
        len(missing_keys),
        len(var) - matched,
    )
    return _Vocabulary(list(names), ensembl, column_of_var, overlap)


def _census_info(census: Any) -> dict[str, str]:
    """census_info/summary as {label: value} (census_schema_version, census_build_date, ...), if present."""
    try:
        summary = census["census_info"]["summary"].read().concat().to_pandas()
        return {str(k): str(v) for k, v in zip(summary["label"], summary["value"], strict=True)}
    except Exception:  # a custom SOMA collection need not have census_info
        return {}


def _filter_cell_types(
    obs: pd.DataFrame, column: str, donor_key: str, min_cells: int, min_donors: int
) -> tuple[np.ndarray, dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """Cells of the cell types with ≥ min_cells cells and ≥ min_donors donors; kept and dropped per type."""
    grouped = obs.groupby(column, observed=True)[donor_key]
    stats = pd.DataFrame({"cells": grouped.size(), "donors": grouped.nunique()})
    ok = (stats["cells"] >= min_cells) & (stats["donors"] >= min_donors)
    as_dict = lambda s: {str(k): {"cells": int(r.cells), "donors": int(r.donors)} for k, r in s.iterrows()}  # noqa: E731
    kept = as_dict(stats[ok].sort_values("cells", ascending=False))
    dropped = as_dict(stats[~ok].sort_values("cells", ascending=False))
    return obs[column].isin(list(kept)).to_numpy(), kept, dropped


def _donor_keys(obs: pd.DataFrame, donor_column: str, scope: str, source: str) -> pd.Categorical:
    """The donor of each cell: ``donor_id`` as is, or ``<dataset_id>:<donor_id>`` (scTab's ``tech_sample``).

    Built from category codes, so that millions of cells never become millions of Python strings.
    """
    columns = [donor_column] if scope == "global" else ["dataset_id", donor_column]
    codes, categories = [], []
    for column in columns:
        values = obs[column].astype("category")
        if values.isna().any():
            raise InputError(source, f"obs.{column}", "missing values", "exclude those cells with a value_filter")
        codes.append(values.cat.codes.to_numpy().astype(np.int64))
        categories.append(values.cat.categories.astype(str).to_numpy())
    if scope == "global":
        return pd.Categorical.from_codes(codes[0], categories=categories[0]).remove_unused_categories()
    n_donors = len(categories[1])
    unique, inverse = np.unique(codes[0] * n_donors + codes[1], return_inverse=True)
    names = [f"{categories[0][u // n_donors]}:{categories[1][u % n_donors]}" for u in unique]
    return pd.Categorical.from_codes(inverse.reshape(-1), categories=names)


def _split_by_donor(donors: pd.Categorical, fractions: Sequence[float], seed: int) -> np.ndarray:
    """assign_splits on donor names, fed zero-padded codes in name order so that millions of cells stay cheap.

    The codes sort as the names do, so the result equals ``assign_splits`` on the names themselves.
    """
    names = np.asarray(donors.categories.astype(str))
    order = np.argsort(names, kind="stable")
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    width = len(str(max(len(names) - 1, 0)))
    padded = np.array([f"{r:0{width}d}" for r in range(len(names))], dtype=object)  # one string per donor
    return assign_splits(pd.DataFrame({"donor": padded[rank[donors.codes]]}), tuple(fractions), seed, "donor")


def _read_chunk(
    experiment: Any,
    soma: Any,
    filters: CensusFilters,
    joinids: np.ndarray,
    vocab: _Vocabulary,
    var_coords: np.ndarray | None,
    source: str,
) -> sp.csr_matrix:
    """Counts of ``joinids`` (rows in that order) over the target genes, as a CSR matrix of float32 counts."""
    by_id = np.argsort(joinids, kind="stable")
    sorted_ids = joinids[by_id]
    obs_query = soma.AxisQuery(coords=(sorted_ids,))
    var_query = soma.AxisQuery(coords=(var_coords,)) if var_coords is not None else soma.AxisQuery()
    rows, cols, values = [], [], []
    with experiment.axis_query(filters.measurement, obs_query=obs_query, var_query=var_query) as query:
        for table in query.X(filters.x_layer).tables():
            dim0 = table["soma_dim_0"].to_numpy()
            dim1 = table["soma_dim_1"].to_numpy()
            data = table["soma_data"].to_numpy()
            column = vocab.column_of_var[dim1]
            keep = column >= 0
            if not keep.all():
                dim0, column, data = dim0[keep], column[keep], data[keep]
            rows.append(by_id[np.searchsorted(sorted_ids, dim0)].astype(np.int32))
            cols.append(column.astype(np.int32))
            values.append(data)
    n_genes = len(vocab.symbols)
    if not rows:
        return sp.csr_matrix((len(joinids), n_genes), dtype=np.float32)
    data = np.concatenate(values)
    bad = ~np.isfinite(data) | (data < 0) | (data != np.round(data))
    if bad.any():
        example = float(data[bad][0])
        raise InputError(
            source,
            f"X/{filters.x_layer}",
            f"{int(bad.sum())} values that are not counts (e.g. {example:g}) in cells with soma_joinid "
            f"{sorted(set(joinids[np.concatenate(rows)[bad]].tolist()))[:5]}",
            "exclude their data sets with an extra value_filter (dataset_id not in [...])",
        )
    matrix = sp.csr_matrix(
        (data, (np.concatenate(rows), np.concatenate(cols))), shape=(len(joinids), n_genes), dtype=np.float32
    )
    matrix.sum_duplicates()
    return matrix


def _check_arguments(
    output: Path, label_columns: list[str], donor_column: str, donor_scope: str, chunk_cells: int, overwrite: bool
) -> None:
    if donor_scope not in DONOR_SCOPES:
        raise ValueError(f"donor_scope must be one of {DONOR_SCOPES}, got {donor_scope!r}")
    if donor_column in label_columns or "split" in label_columns:
        raise ValueError(f"label_columns {label_columns} must not include the donor column or 'split'")
    if chunk_cells < 1:
        raise ValueError(f"chunk_cells must be positive, got {chunk_cells}")
    check_output(output, overwrite)


def _read_obs(
    experiment: Any, filters: CensusFilters, needed: list[str], source: str
) -> tuple[pd.DataFrame, str | None]:
    """Step 1: the obs rows passing the value filter (only the ``needed`` columns), by soma_joinid."""
    available = set(experiment.obs.schema.names)
    missing = [c for c in needed if c not in available]
    if missing:
        raise InputError(source, "obs", f"no columns {missing}", f"choose among {sorted(available)}")
    value_filter = filters.soma_value_filter()
    log.info("reading obs of %s/%s where %s", source, filters.organism, value_filter or "(all cells)")
    obs = (
        experiment.obs.read(value_filter=value_filter, column_names=["soma_joinid", *needed])
        .concat()
        .to_pandas()[["soma_joinid", *needed]]
    )
    if len(obs) == 0:
        raise InputError(source, "obs", f"no cell matches {value_filter}", "loosen the filters")
    return obs.sort_values("soma_joinid", kind="stable").reset_index(drop=True), value_filter


@dataclass
class _Cells:
    """The cells to write, in final order: their store obs (labels, donor key, split) and soma_joinids."""

    obs: pd.DataFrame
    joinids: np.ndarray
    donors_per_split: dict[str, int]


def _keep_cell_types(obs: pd.DataFrame, filters: CensusFilters, source: str, summary: dict[str, Any]) -> pd.DataFrame:
    """Step 2: the cells of the cell types with enough cells and donors (recorded in ``summary``)."""
    keep, kept_types, dropped_types = _filter_cell_types(
        obs, filters.cell_type_column, "_donor", filters.min_cells_per_cell_type, filters.min_donors_per_cell_type
    )
    n_kept = int(keep.sum())
    log.info(
        "%d cells match the value filter; %d cell types kept (%d cells), %d dropped (%d cells) "
        "for < %d cells or < %d donors",
        len(obs),
        len(kept_types),
        n_kept,
        len(dropped_types),
        len(obs) - n_kept,
        filters.min_cells_per_cell_type,
        filters.min_donors_per_cell_type,
    )
    if not keep.any():
        raise InputError(
            source,
            filters.cell_type_column,
            f"no cell type has ≥ {filters.min_cells_per_cell_type} cells from ≥ "
            f"{filters.min_donors_per_cell_type} donors",
            "lower min_cells_per_cell_type / min_donors_per_cell_type",
        )
    summary["cells"] = {"matched_value_filter": len(obs), "after_cell_type_filter": n_kept}
    summary["cell_types"] = {"kept": kept_types, "dropped": dropped_types}
    obs = obs[keep].reset_index(drop=True)
    obs["_donor"] = obs["_donor"].cat.remove_unused_categories()
    return obs


def _in_final_order(
    obs: pd.DataFrame, label_columns: list[str], donor_column: str, fractions: Sequence[float], seed: int
) -> _Cells:
    """Steps 3 and 4: donor-wise splits, then the final order (grouped by split, shuffled within each)."""
    split = _split_by_donor(obs["_donor"].array, fractions, seed)
    order = final_order(split, seed)
    obs = obs.iloc[order].reset_index(drop=True)
    obs["split"] = split[order]
    split_cells = {name: int((obs["split"] == name).sum()) for name in SPLITS}
    split_donors = {name: int(obs.loc[obs["split"] == name, "_donor"].nunique()) for name in SPLITS}
    log.info("splits (cells): %s; donors: %s", split_cells, split_donors)
    # the store's obs (cell ids: soma_joinids, made strings per bucket); the donor column holds the donor key
    store_obs = obs[label_columns].copy()
    store_obs[donor_column] = obs["_donor"]
    store_obs["split"] = pd.Categorical(obs["split"], categories=list(SPLITS))
    return _Cells(store_obs, obs["soma_joinid"].to_numpy(), split_donors)


def _census_genes(experiment: Any, filters: CensusFilters, genes: Any, source: str) -> _Vocabulary:
    """The census var and its mapping onto the target genes."""
    ms = experiment.ms[filters.measurement]
    var = ms.var.read(column_names=["soma_joinid", "feature_id", "feature_name"]).concat().to_pandas()
    return _target_vocabulary(var.sort_values("soma_joinid", kind="stable").reset_index(drop=True), genes, source)


def _place_counts(
    experiment: Any, soma: Any, filters: CensusFilters, vocab: _Vocabulary, joinids: np.ndarray, options: dict
) -> tuple[RowBuckets, int]:
    """Step 5: the counts read in storage order, ``chunk_cells`` at a time, filed under their final rows in
    buckets sized from the first chunk; returns the buckets and the number of cells dropped as empty."""
    kept_var = np.flatnonzero(vocab.column_of_var >= 0)
    var_coords = None if len(kept_var) == vocab.overlap["census_genes"] else kept_var
    count_dtype, chunk_cells, source = options["count_dtype"], options["chunk_cells"], options["source"]
    storage_order = np.argsort(joinids, kind="stable")  # final positions, by soma_joinid
    buckets, empty = None, 0
    try:
        with tqdm(total=len(joinids), desc="census", unit="cells", disable=options["show"]) as bar:
            for start in range(0, len(joinids), chunk_cells):
                final_rows = storage_order[start : start + chunk_cells]
                counts = _read_chunk(experiment, soma, filters, joinids[final_rows], vocab, var_coords, source)
                if buckets is None:  # sized from the first chunk's non-zeros per cell
                    per_cell, n_genes = counts.nnz / counts.shape[0], len(vocab.symbols)
                    buckets = buckets_by_cells(
                        len(joinids), per_cell, count_dtype, n_genes, options["memory_mb"], options["output"]
                    )
                top = counts.data.max() if counts.nnz else 0
                if top > np.iinfo(count_dtype).max:  # the cast would wrap it
                    problem = f"a count of {top:g} exceeds count_dtype {np.dtype(count_dtype)}"
                    raise InputError(source, f"X/{filters.x_layer}", problem, "set count_dtype=uint32")
                counts.sort_indices()
                nonempty = np.flatnonzero(np.diff(counts.indptr) > 0)  # no counts in the target genes: dropped
                empty += len(final_rows) - len(nonempty)
                starts, ends = counts.indptr[nonempty], counts.indptr[nonempty + 1]
                buckets.put(counts.data, counts.indices, starts, ends, final_rows[nonempty])
                bar.update(len(final_rows))
    except BaseException:
        if buckets is not None:
            buckets.close()
        raise
    return buckets, empty


def census_to_store(
    output: str | Path,
    *,
    census_uri: str | None = None,
    census_version: str = "stable",
    filters: CensusFilters | None = None,
    genes: str | Path | Sequence[str] = "all",
    label_columns: Sequence[str] = ("cell_type",),
    donor_column: str = "donor_id",
    donor_scope: str = "dataset",
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    chunk_cells: int = 25_000,
    memory_mb: float = 1024,
    count_dtype: Any = np.uint32,
    tiledb_config: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the census cells that pass ``filters`` as a cell store at ``output``; return a summary.

    ``census_uri``: a SOMA collection laid out like the census (local path or ``s3://``); ``None`` opens the
    public census at ``census_version`` (``"stable"``, ``"latest"`` or a release date). ``genes``: ``"all"``
    census genes, or a gene-list file (TSV with ``ensembl_gene_id``/``symbol`` columns, or one id per line),
    or a list of Ensembl ids; list genes are matched on ``feature_id`` without version suffix, and those
    absent from the census are zero columns (recorded as not measured: var ``n_sources_measured`` 0). ``donor_scope``:
    ``"dataset"`` takes a donor to be ``(dataset_id, donor_id)`` as scTab did, since donor labels are only unique
    within a data set; ``"global"`` takes ``donor_id`` alone (one label across data sets is one donor). The donor
    key is stored in the store's ``donor_column``, and drives both the min-donors filter and the donor-wise split.
    ``chunk_cells``: cells read at a time, in storage order; ``memory_mb``: the size of a shuffle bucket
    (buckets beyond one go to a temporary folder next to ``output``). Peak memory ≈ 1.5 GB (libraries, read
    buffers, the writer's shard buffers, obs) + chunk_cells × non-zeros per cell × 35 B + ``memory_mb``.

    The summary (also stored in the store's metadata under ``census``) gives the cells after each filter,
    the cells per split, the cell types kept and dropped with their cell and donor counts, and the gene overlap.
    """
    started = time.perf_counter()
    cellxgene_census, soma = _import_census()
    filters, output, label_columns = filters or CensusFilters(), Path(output), list(label_columns)
    _check_arguments(output, label_columns, donor_column, donor_scope, chunk_cells, overwrite)
    source = f"census:{census_uri}" if census_uri else f"census:{census_version}"
    where = {"uri": census_uri} if census_uri else {"census_version": census_version}
    with cellxgene_census.open_soma(**where, tiledb_config=tiledb_config) as census:
        organisms = list(census["census_data"].keys())
        if filters.organism not in organisms:
            raise InputError(source, "census_data", f"no organism {filters.organism!r}", f"choose one of {organisms}")
        experiment = census["census_data"][filters.organism]
        extra = ["dataset_id"] if donor_scope == "dataset" else []
        needed = list(dict.fromkeys([filters.cell_type_column, *label_columns, donor_column, *extra]))
        obs, value_filter = _read_obs(experiment, filters, needed, source)
        obs["_donor"] = _donor_keys(obs, donor_column, donor_scope, source)
        summary = _summary(source, census_uri, census_version, _census_info(census), filters, value_filter)
        summary.update(donor_column=donor_column, donor_scope=donor_scope, seed=int(seed))
        summary["split_fractions"] = [float(f) for f in split_fractions]
        obs = _keep_cell_types(obs, filters, source, summary)
        cells = _in_final_order(obs, label_columns, donor_column, split_fractions, seed)
        vocab = _census_genes(experiment, filters, genes, source)
        summary["genes"] = vocab.overlap
        show = None if progress else True
        options = {"count_dtype": count_dtype, "chunk_cells": chunk_cells, "source": source, "show": show}
        options.update(memory_mb=memory_mb, output=output)
        buckets, empty = _place_counts(experiment, soma, filters, vocab, cells.joinids, options)
    _write_census(output, buckets, cells, vocab, summary, empty, count_dtype, label_columns, donor_column, overwrite)
    summary["output"] = str(output)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    log.info("census → %s: %s", output, json.dumps({"cells": summary["cells"], "splits": summary["splits"]}))
    return summary


def _summary(
    source: str, uri: str | None, version: str, info: dict, filters: CensusFilters, value_filter: str | None
) -> dict[str, Any]:
    return {
        "source": source,
        "census_uri": uri,
        "census_version": None if uri else version,
        "census_info": info,
        "organism": filters.organism,
        "filters": filters.to_dict(),
        "value_filter": value_filter,
    }


def _write_census(
    output: Path,
    buckets: RowBuckets,
    cells: _Cells,
    vocab: _Vocabulary,
    summary: dict[str, Any],
    empty: int,
    count_dtype: Any,
    label_columns: list[str],
    donor_column: str,
    overwrite: bool,
) -> None:
    """Step 6: the buckets, in final order, through the StoreWriter; the summary completed into its metadata."""
    if empty:
        log.warning("dropped %d cells with no counts in the target genes", empty)
    measured = np.zeros((1, len(vocab.symbols)), dtype=bool)
    measured[0, vocab.column_of_var[vocab.column_of_var >= 0]] = True
    writer = {"gene_names": vocab.symbols, "ensembl_ids": vocab.ensembl_ids, "count_dtype": count_dtype}
    writer.update(label_columns=label_columns, donor_column=donor_column, source=summary["source"])
    writer.update(overwrite=overwrite, extra_metadata={"census": summary}, measured=measured)

    def obs_of(rows: np.ndarray) -> pd.DataFrame:
        return cells.obs.iloc[rows].set_axis(pd.Index(cells.joinids[rows].astype(str)), axis=0)

    with buckets, StoreWriter(output, **writer) as store:
        write_buckets(buckets, store, obs_of, show=True)
        # the writer keeps a reference to `summary`: these land in the store's metadata too
        summary["cells"].update(empty_dropped=empty, written=store.n_cells)
        summary["splits"] = store.split_counts
        summary["donors_per_split"] = cells.donors_per_split
