"""One gene vocabulary for several data sets: union, intersection or a fixed list, matched by Ensembl id or symbol."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from cellssl.store.validation import InputError

log = logging.getLogger(__name__)

ENSEMBL_COLUMNS = ("ensembl_id", "gene_ids", "gene_id", "feature_id", "ensembl_gene_id")
SYMBOL_COLUMNS = ("symbol", "feature_name", "gene_symbols", "gene_name")
# an Ensembl gene id: ENSG00000141510 (human), ENSMUSG00000059552 (mouse), ..., with or without a version suffix
ENSEMBL_GENE_ID = r"ENS[A-Z]*G\d{11}(\.\d+)?"


def _ensembl_shaped(values: Sequence[str] | np.ndarray | pd.Index) -> np.ndarray:
    return pd.Series(np.asarray(values, dtype=object)).astype(str).str.fullmatch(ENSEMBL_GENE_ID).to_numpy()


def is_ensembl_id(values: Sequence[str] | np.ndarray | pd.Index) -> bool:
    """Whether every value (and there is at least one) is an Ensembl gene id such as ``ENSG00000141510.4``.

    Every value is checked: NCBI ``GeneID:7157``, Entrez numbers, symbols or a single odd id make it ``False``.
    """
    return len(values) > 0 and bool(_ensembl_shaped(values).all())


def _ensembl_column(var: pd.DataFrame, source: str) -> np.ndarray | None:
    """The first id column of ``var`` holding Ensembl gene ids only (else the index, if it does).

    An id column holding anything else (NCBI ``GeneID:…``, Entrez numbers) is not used, with a log line.
    """
    for column in ENSEMBL_COLUMNS:
        if column not in var.columns:
            continue
        values = var[column].astype(str).to_numpy()
        shaped = _ensembl_shaped(values)
        if len(values) and shaped.all():
            return values
        odd = values[~shaped][0] if len(values) else ""
        log.info(
            "%s: var.%s holds %d values that are not Ensembl gene ids (e.g. %r): not used as Ensembl ids",
            source,
            column,
            int((~shaped).sum()),
            odd,
        )
    index = var.index.astype(str).to_numpy()
    return index if is_ensembl_id(index) else None


@dataclass(frozen=True)
class GeneTable:
    """The genes of one source: symbols and (when known) Ensembl ids, in column order.

    A store's genes also tell which were measured: ``n_sources_measured`` (per gene, how many of the store's
    ``n_sources`` sources had it; the others were zero-filled). ``None``: every gene was measured.
    """

    symbols: np.ndarray
    ensembl_ids: np.ndarray | None
    n_sources_measured: np.ndarray | None = None
    n_sources: int = 1

    @classmethod
    def from_var(cls, var: pd.DataFrame, source: str = "data") -> GeneTable:
        """Ensembl ids from the first of ``ENSEMBL_COLUMNS`` holding only Ensembl gene ids (else the index, if it
        does); symbols from the first of ``SYMBOL_COLUMNS`` present, else the index."""
        index = var.index.astype(str).to_numpy()
        ensembl = _ensembl_column(var, source)
        symbols = next((var[c].astype(str).to_numpy() for c in SYMBOL_COLUMNS if c in var.columns), None)
        return cls(symbols=symbols if symbols is not None else index, ensembl_ids=ensembl)

    @property
    def has_symbols(self) -> bool:
        """Whether the symbols are real (a table named only by Ensembl ids uses them as symbols)."""
        return not is_ensembl_id(self.symbols)

    @property
    def measured(self) -> np.ndarray:
        """Per gene: whether any source measured it (False: zero in every cell)."""
        if self.n_sources_measured is None:
            return np.ones(len(self.symbols), dtype=bool)
        return np.asarray(self.n_sources_measured) > 0

    @property
    def measured_in_all(self) -> np.ndarray:
        """Per gene: whether every source measured it (False: zero-filled in some sources' cells)."""
        if self.n_sources_measured is None:
            return np.ones(len(self.symbols), dtype=bool)
        return np.asarray(self.n_sources_measured) >= self.n_sources

    def keys(self, match_by: str) -> np.ndarray:
        if match_by == "ensembl":
            if self.ensembl_ids is None:
                raise ValueError("no Ensembl ids")
            return strip_version(self.ensembl_ids)
        return self.symbols


def strip_version(ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Ensembl ids without their version suffix (``ENSG00000141510.4`` → ``ENSG00000141510``)."""
    return np.array([str(i).split(".")[0] for i in ids], dtype=object)


def unique_symbols(symbols: Sequence[str], ensembl_ids: Sequence[str] | None) -> tuple[np.ndarray, int]:
    """Symbols made unique: a repeated symbol keeps its first use, later ones become ``SYMBOL_ENSG…``.

    Two Ensembl genes may share a symbol; the store's var names must be unique. Without Ensembl ids, later uses
    become ``SYMBOL-1``, ``SYMBOL-2``, ... (anndata's ``var_names_make_unique``). Returns the names and how many
    were renamed.
    """
    symbols = [str(s) for s in symbols]
    if not pd.Index(symbols).has_duplicates:
        return np.array(symbols, dtype=object), 0
    if ensembl_ids is None:
        names = ad.utils.make_index_unique(pd.Index(symbols)).to_numpy()
    else:
        seen: set[str] = set()
        names = []
        for name, ensembl in zip(symbols, ensembl_ids, strict=True):
            names.append(f"{name}_{ensembl}" if name in seen else name)
            seen.add(name)
    renamed = sum(a != b for a, b in zip(names, symbols, strict=True))
    return np.array(names, dtype=object), renamed


def read_gene_list(path: str | Path) -> GeneTable:
    """A gene list file: a TSV/CSV with Ensembl-id and/or symbol columns, one gene per line, or a ``.parquet``
    table of genes (scTab's / ssl_in_scg's ``var.parquet``: ``feature_id``, ``feature_name``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "genes", "gene list not found", "give a TSV with ensembl_gene_id/symbol columns")
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
        if not (set(ENSEMBL_COLUMNS) | set(SYMBOL_COLUMNS)) & set(table.columns) and table.index.dtype != object:
            columns = ", ".join(map(str, table.columns)) or "none"
            raise InputError(str(path), "columns", f"no gene column (has {columns})", "name one feature_name")
        return GeneTable.from_var(table, str(path))
    sep = "," if path.suffix == ".csv" else "\t"
    table = pd.read_csv(path, sep=sep, dtype=str)
    known = set(ENSEMBL_COLUMNS) | set(SYMBOL_COLUMNS)
    if not known & set(table.columns):  # one gene per line, no header
        table = pd.read_csv(path, sep=sep, dtype=str, header=None, names=["gene"]).set_index("gene")
        return GeneTable.from_var(table, str(path))
    return GeneTable.from_var(table.set_index(table.columns[0]), str(path))


@dataclass
class VocabularyMapping:
    """The target vocabulary and, per source, the target column of every source gene (-1: dropped)."""

    genes: GeneTable
    columns: list[np.ndarray]
    match_by: str

    def measured(self) -> np.ndarray:
        """``(sources, vocabulary genes)``: whether the source has the gene (False: its cells get zeros there)."""
        mask = np.zeros((len(self.columns), len(self.genes.symbols)), dtype=bool)
        for row, cols in zip(mask, self.columns, strict=True):
            row[cols[cols >= 0]] = True
        return mask

    def subset(self, keep: np.ndarray) -> VocabularyMapping:
        """The mapping onto vocabulary genes ``keep`` (positions, ascending), the others dropped."""
        keep = np.asarray(keep, dtype=np.int64)
        new_column = np.full(len(self.genes.symbols), -1, dtype=np.int64)
        new_column[keep] = np.arange(len(keep))
        ensembl = None if self.genes.ensembl_ids is None else self.genes.ensembl_ids[keep]
        genes = GeneTable(symbols=self.genes.symbols[keep], ensembl_ids=ensembl)
        columns = [np.where(c >= 0, new_column[np.maximum(c, 0)], -1) for c in self.columns]
        return VocabularyMapping(genes=genes, columns=columns, match_by=self.match_by)

    def overlap_report(self, names: Sequence[str]) -> list[dict]:
        n = len(self.genes.symbols)
        rows = []
        for name, cols in zip(names, self.columns, strict=True):
            measured = len(np.unique(cols[cols >= 0]))
            rows.append(
                {
                    "source": str(name),
                    "source_genes": len(cols),
                    "matched": int((cols >= 0).sum()),
                    "vocabulary": n,
                    "measured": measured,
                    "vocabulary_covered": float(measured / max(n, 1)),
                }
            )
        return rows


MATCH_BY = ("auto", "ensembl", "symbol")


def _choose_match_by(tables: Sequence[GeneTable], names: Sequence[str], match_by: str) -> str:
    """``ensembl`` when every table has real Ensembl gene ids (``auto``) or when asked (checked), else ``symbol``."""
    if match_by not in MATCH_BY:
        raise InputError(", ".join(names), "match_by", f"unknown value {match_by!r}", "use auto, ensembl or symbol")
    lacking = [name for table, name in zip(tables, names, strict=True) if table.ensembl_ids is None]
    if match_by == "ensembl" and lacking:
        raise InputError(
            lacking[0],
            "var",
            "no Ensembl gene ids to match on (ids like ENSG00000141510 in var.gene_ids/ensembl_id or as var_names)",
            "set match_by=symbol",
        )
    if match_by != "auto":
        return match_by
    if lacking and len(tables) > 1:
        log.info("matching genes by symbol: %s without Ensembl gene ids", ", ".join(lacking))
    return "symbol" if lacking else "ensembl"


def _match_keys(table: GeneTable, name: str, match_by: str) -> np.ndarray:
    """A table's keys; repeated symbols are made unique first (as ``var_names_make_unique``), with a log line."""
    if match_by == "ensembl":
        return table.keys("ensembl")
    symbols, renamed = unique_symbols(table.symbols, None)
    if renamed:
        log.info("%s: %d repeated symbols renamed SYMBOL-1, ... to match genes by symbol", name, renamed)
    return symbols


def _merged_genes(tables: Sequence[GeneTable], keys: Sequence[np.ndarray], mode: str) -> tuple[np.ndarray, GeneTable]:
    """The union (or intersection) of the sources' keys in order of first appearance, and their genes."""
    ordered = pd.Index(pd.unique(np.concatenate(keys)))
    if mode == "intersection":
        for k in keys:
            ordered = ordered[ordered.isin(k)]
    target_keys = ordered.to_numpy()
    symbol_of, ensembl_of = {}, {}
    for table, k in zip(tables, keys, strict=True):
        for i, key in enumerate(k):
            symbol_of.setdefault(key, table.symbols[i])
            if table.ensembl_ids is not None:
                ensembl_of.setdefault(key, table.ensembl_ids[i])
    symbols = np.array([symbol_of[k] for k in target_keys], dtype=object)
    known = all(k in ensembl_of for k in target_keys)
    ensembl = np.array([ensembl_of[k] for k in target_keys]) if known else None
    return target_keys, GeneTable(symbols=symbols, ensembl_ids=ensembl)


def _check_overlap(keys: Sequence[np.ndarray], target_keys: np.ndarray, names: Sequence[str], mode: str, match_by: str):
    """Refuse an empty vocabulary, a source sharing no gene with the others (union) or none with the list."""
    other = "ensembl" if match_by == "symbol" else "symbol"
    if len(target_keys) == 0:
        raise InputError(
            ", ".join(map(str, names)),
            "var",
            f"the gene vocabulary is empty: vocabulary={mode} keeps no gene, matched by {match_by}",
            f"use vocabulary=union, or check the gene ids (match_by={other})",
        )
    fixed = mode not in ("union", "intersection")
    for i, (name, k) in enumerate(zip(names, keys, strict=True)):
        if fixed:
            shared, against = pd.Index(k).isin(target_keys), f"the gene list {mode}"
        elif mode == "union" and len(keys) > 1:
            rest = np.concatenate([keys[j] for j in range(len(keys)) if j != i])
            shared, against = pd.Index(k).isin(rest), "the other sources"
        else:
            continue
        if not shared.any():
            raise InputError(
                str(name),
                "var",
                f"shares no gene with {against}, matched by {match_by} (its genes look like {list(k[:2])})",
                "name genes alike in every source (a symbol column such as feature_name, or Ensembl ids in "
                f"gene_ids), or set match_by={other}",
            )


def build_vocabulary(
    tables: Sequence[GeneTable], names: Sequence[str], mode: str = "union", match_by: str = "auto"
) -> VocabularyMapping:
    """Map every source's genes onto one vocabulary.

    ``mode`` (the ``vocabulary=`` setting): ``union``, ``intersection``, or a path to a fixed gene list.
    ``match_by``: ``ensembl``, ``symbol``, or ``auto`` (Ensembl ids when every source and the fixed list have
    real Ensembl gene ids, else symbols). Sources that share no gene, or an empty vocabulary, are refused;
    symbols shared by several Ensembl genes are made unique (``SYMBOL_ENSG…``), with a log line.
    """
    fixed = None if mode in ("union", "intersection") else read_gene_list(mode)
    candidates, candidate_names = [*tables, *([fixed] if fixed else [])], [*map(str, names), *([mode] if fixed else [])]
    match_by = _choose_match_by(candidates, candidate_names, match_by)
    keys = [_match_keys(t, name, match_by) for t, name in zip(tables, names, strict=True)]
    if match_by == "symbol":  # the (unique) symbols matched on are the symbols kept
        tables = [dataclasses.replace(t, symbols=k) for t, k in zip(tables, keys, strict=True)]
    if fixed is not None:
        target_keys, target = fixed.keys(match_by), fixed
    else:
        target_keys, target = _merged_genes(tables, keys, mode)
    if pd.Index(target_keys).has_duplicates:  # a gene repeated in the list: its first position
        keep = ~pd.Index(target_keys).duplicated()
        target = GeneTable(target.symbols[keep], None if target.ensembl_ids is None else target.ensembl_ids[keep])
        target_keys = target_keys[keep]
    _check_overlap(keys, target_keys, names, mode, match_by)
    symbols, renamed = unique_symbols(target.symbols, target.ensembl_ids)
    if renamed:
        log.info("%d genes share their symbol with an earlier gene: named SYMBOL_ENSG… (names must be unique)", renamed)
    target = GeneTable(symbols=symbols, ensembl_ids=target.ensembl_ids)
    lookup = pd.Index(target_keys)
    mapping = VocabularyMapping(genes=target, columns=[lookup.get_indexer(k) for k in keys], match_by=match_by)
    for row in mapping.overlap_report(names):
        log.info(
            "%s: %d of %d genes matched by %s; they cover %.1f%% of the %d-gene vocabulary",
            row["source"],
            row["matched"],
            row["source_genes"],
            match_by,
            100 * row["vocabulary_covered"],
            row["vocabulary"],
        )
    return mapping
