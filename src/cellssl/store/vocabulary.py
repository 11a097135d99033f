"""One gene vocabulary for several data sets: union, intersection or a fixed list, matched by Ensembl id or symbol."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cellssl.store.validation import InputError

log = logging.getLogger(__name__)

ENSEMBL_COLUMNS = ("ensembl_id", "gene_ids", "gene_id", "feature_id", "ensembl_gene_id")
SYMBOL_COLUMNS = ("symbol", "feature_name", "gene_symbols", "gene_name")


@dataclass(frozen=True)
class GeneTable:
    """The genes of one source: symbols and (when known) Ensembl ids, in column order."""

    symbols: np.ndarray
    ensembl_ids: np.ndarray | None

    @classmethod
    def from_var(cls, var: pd.DataFrame) -> GeneTable:
        index = var.index.astype(str).to_numpy()
        ensembl = next((var[c].astype(str).to_numpy() for c in ENSEMBL_COLUMNS if c in var.columns), None)
        symbols = next((var[c].astype(str).to_numpy() for c in SYMBOL_COLUMNS if c in var.columns), None)
        if ensembl is None and len(index) and all(i.startswith("ENS") for i in index[:100]):
            ensembl = index
        return cls(symbols=symbols if symbols is not None else index, ensembl_ids=ensembl)

    def keys(self, match_by: str) -> np.ndarray:
        if match_by == "ensembl":
            if self.ensembl_ids is None:
                raise ValueError("no Ensembl ids")
            return np.array([e.split(".")[0] for e in self.ensembl_ids])  # drop version suffixes
        return self.symbols


def read_gene_list(path: str | Path) -> GeneTable:
    """A gene list file: a TSV/CSV with Ensembl-id and/or symbol columns, or one gene per line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "genes", "gene list not found", "give a TSV with ensembl_gene_id/symbol columns")
    sep = "," if path.suffix == ".csv" else "\t"
    table = pd.read_csv(path, sep=sep, dtype=str)
    known = set(ENSEMBL_COLUMNS) | set(SYMBOL_COLUMNS)
    if not known & set(table.columns):  # one gene per line, no header
        table = pd.read_csv(path, sep=sep, dtype=str, header=None, names=["gene"]).set_index("gene")
        return GeneTable.from_var(table)
    return GeneTable.from_var(table.set_index(table.columns[0]))


@dataclass
class VocabularyMapping:
    """The target vocabulary and, per source, the target column of every source gene (-1: dropped)."""

    genes: GeneTable
    columns: list[np.ndarray]
    match_by: str

    def overlap_report(self, names: Sequence[str]) -> list[dict]:
        n = len(self.genes.symbols)
        return [
            {
                "source": str(name),
                "source_genes": len(cols),
                "matched": int((cols >= 0).sum()),
                "vocabulary": n,
                "vocabulary_covered": float(len(np.unique(cols[cols >= 0])) / max(n, 1)),
            }
            for name, cols in zip(names, self.columns, strict=True)
        ]


def build_vocabulary(
    tables: Sequence[GeneTable], names: Sequence[str], mode: str = "union", match_by: str = "auto"
) -> VocabularyMapping:
    """Map every source's genes onto one vocabulary.

    ``mode``: ``union``, ``intersection``, or a path to a fixed gene list. ``match_by``: ``ensembl``,
    ``symbol``, or ``auto`` (Ensembl ids when every source and the fixed list have them, else symbols).
    """
    fixed = None if mode in ("union", "intersection") else read_gene_list(mode)
    candidates = [*tables, *([fixed] if fixed else [])]
    if match_by == "auto":
        match_by = "ensembl" if all(t.ensembl_ids is not None for t in candidates) else "symbol"
    for table, name in zip(tables, names, strict=True):
        if match_by == "ensembl" and table.ensembl_ids is None:
            raise InputError(str(name), "var", "no Ensembl ids to match on", "set match_by=symbol")
    keys = [t.keys(match_by) for t in tables]
    if fixed is not None:
        target_keys, target = fixed.keys(match_by), fixed
    else:
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
        target = GeneTable(symbols=symbols, ensembl_ids=ensembl)
    if len(target_keys) == 0:
        raise InputError(
            ", ".join(map(str, names)), "var", "the gene vocabulary is empty", "use mode=union or check gene ids"
        )
    if pd.Index(target_keys).has_duplicates:
        target_keys = pd.Index(target_keys)
        keep = ~target_keys.duplicated()
        target = GeneTable(target.symbols[keep], None if target.ensembl_ids is None else target.ensembl_ids[keep])
        target_keys = target_keys[keep].to_numpy()
    lookup = pd.Index(target_keys)
    columns = [lookup.get_indexer(k) for k in keys]
    mapping = VocabularyMapping(genes=target, columns=columns, match_by=match_by)
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
