"""Apply a model to data whose genes differ from its pretraining vocabulary.

The data's genes are matched to the vocabulary stored in the checkpoint by Ensembl id (version suffixes dropped)
or symbol, reusing :class:`cellssl.store.vocabulary.GeneTable`; vocabulary genes the data lacks are zero-filled,
data genes outside the vocabulary dropped. Counts are aligned before normalisation, so a cell is normalised over
the vocabulary's genes, as the pretraining data was. When one side is named only by Ensembl ids and the other
only by symbols, a gene table (by default the bundled human protein-coding genes) translates between them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from cellssl.store.validation import InputError
from cellssl.store.vocabulary import GeneTable, is_ensembl_id, read_gene_list

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeneAlignment:
    """Data gene ``source_columns[i]`` goes to vocabulary position ``target_columns[i]``.

    ``n_unmeasured``: matched data genes that the data never measured (a store zero-filled them in every cell,
    e.g. genes of a fixed gene list absent from its files); ``n_partly_measured``: matched genes zero-filled for
    some of the store's sources only.
    """

    source_columns: np.ndarray
    target_columns: np.ndarray
    n_source: int
    n_target: int
    match_by: str
    n_unmeasured: int = 0
    n_partly_measured: int = 0

    @classmethod
    def identity(cls, n_genes: int) -> GeneAlignment:
        columns = np.arange(n_genes)
        return cls(columns, columns, n_genes, n_genes, "identity")

    @property
    def is_identity(self) -> bool:
        return self.n_source == self.n_target == len(self.source_columns) and bool(
            np.array_equal(self.source_columns, self.target_columns)
        )

    @property
    def n_matched(self) -> int:
        return len(self.target_columns)

    @property
    def vocabulary_covered(self) -> float:
        """Fraction of the pretraining vocabulary found in the data (the rest is zero-filled)."""
        return self.n_matched / max(self.n_target, 1)

    @property
    def vocabulary_covered_measured(self) -> float:
        """Fraction of the pretraining vocabulary found in the data and measured there (not zero-filled)."""
        return (self.n_matched - self.n_unmeasured) / max(self.n_target, 1)

    def report(self) -> dict[str, Any]:
        return {
            "transfer/match_by": self.match_by,
            "transfer/data_genes": self.n_source,
            "transfer/vocabulary_genes": self.n_target,
            "transfer/matched_genes": self.n_matched,
            "transfer/matched_genes_unmeasured": self.n_unmeasured,
            "transfer/matched_genes_partly_measured": self.n_partly_measured,
            "transfer/vocabulary_covered": self.vocabulary_covered,
            "transfer/vocabulary_covered_measured": self.vocabulary_covered_measured,
            "transfer/data_genes_used": self.n_matched / max(self.n_source, 1),
        }

    def selection_matrix(self) -> sp.csr_matrix:
        ones = np.ones(self.n_matched, dtype=np.float32)
        return sp.csr_matrix((ones, (self.source_columns, self.target_columns)), shape=(self.n_source, self.n_target))

    def apply_csr(self, counts: sp.spmatrix) -> sp.csr_matrix:
        """``(cells, data genes)`` counts → ``(cells, vocabulary genes)``, zeros for missing genes."""
        counts = sp.csr_matrix(counts)
        if self.is_identity:
            return counts
        aligned = counts.astype(np.float32) @ self.selection_matrix()
        aligned.sort_indices()
        return sp.csr_matrix(aligned)

    def apply_dense(self, counts: torch.Tensor) -> torch.Tensor:
        """The same on a dense tensor (on any device)."""
        if self.is_identity:
            return counts
        aligned = counts.new_zeros(counts.shape[0], self.n_target)
        source = torch.as_tensor(self.source_columns, device=counts.device)
        target = torch.as_tensor(self.target_columns, device=counts.device)
        aligned[:, target] = counts.index_select(1, source)
        return aligned


def complete_identifiers(table: GeneTable, translation: GeneTable | None) -> GeneTable:
    """Fill in a table's missing identifier type (Ensembl ids from symbols, or symbols from Ensembl ids)."""
    if translation is None or translation.ensembl_ids is None:
        return table
    ensembl_keys = translation.keys("ensembl")
    if table.ensembl_ids is None:
        to_ensembl = dict(zip(translation.symbols, ensembl_keys, strict=True))
        ids = np.array([to_ensembl.get(s, f"unknown:{s}") for s in table.symbols])
        return dataclasses.replace(table, ensembl_ids=ids)
    if not table.has_symbols:  # named by Ensembl ids only
        to_symbol = dict(zip(ensembl_keys, translation.symbols, strict=True))
        keys = table.keys("ensembl")
        return dataclasses.replace(table, symbols=np.array([to_symbol.get(k, k) for k in keys]))
    return table


def _matched(data: GeneTable, vocabulary: GeneTable, match_by: str) -> GeneAlignment:
    """The alignment by ``match_by`` keys; the first of repeated keys is used on either side."""
    data_keys, vocab_keys = pd.Index(data.keys(match_by)), pd.Index(vocabulary.keys(match_by))
    first = ~vocab_keys.duplicated()  # a duplicated vocabulary key: its first position receives the gene
    positions = pd.Index(vocab_keys[first]).get_indexer(data_keys)
    where = np.flatnonzero(first)
    keep = (positions >= 0) & ~data_keys.duplicated()  # a duplicated data key: its first column is used
    source_columns = np.flatnonzero(keep)
    measured, in_all = data.measured[source_columns], data.measured_in_all[source_columns]
    return GeneAlignment(
        source_columns,
        where[positions[keep]],
        len(data_keys),
        len(vocab_keys),
        match_by,
        n_unmeasured=int((~measured).sum()),
        n_partly_measured=int((measured & ~in_all).sum()),
    )


def _identifiers(
    data: GeneTable, vocabulary: GeneTable, match_by: str, translation: GeneTable | None, source: str
) -> tuple[GeneTable, GeneTable, str]:
    """Both tables, completed through ``translation`` where needed, and the key type to match them by."""
    if match_by not in ("auto", "ensembl", "symbol"):
        raise InputError(source, "transfer.match_by", f"unknown value {match_by!r}", "use auto, ensembl or symbol")
    if match_by == "auto":
        if data.ensembl_ids is not None and vocabulary.ensembl_ids is not None:
            match_by = "ensembl"
        elif data.has_symbols and vocabulary.has_symbols:
            match_by = "symbol"
        else:  # one side named only by Ensembl ids, the other only by symbols: translate
            data, vocabulary = complete_identifiers(data, translation), complete_identifiers(vocabulary, translation)
            match_by = "ensembl" if data.ensembl_ids is not None and vocabulary.ensembl_ids is not None else "symbol"
    elif match_by == "ensembl" or not (data.has_symbols and vocabulary.has_symbols):
        data, vocabulary = complete_identifiers(data, translation), complete_identifiers(vocabulary, translation)
    for table, side in ((data, source), (vocabulary, "pretrained vocabulary")):
        if match_by == "ensembl" and table.ensembl_ids is None:
            raise InputError(side, "var", "no Ensembl ids to match on", "set transfer.match_by=symbol")
    return data, vocabulary, match_by


def align_genes(
    data: GeneTable,
    vocabulary: GeneTable,
    match_by: str = "auto",
    translation: GeneTable | None = None,
    min_overlap: float = 0.5,
    source: str = "data",
) -> GeneAlignment:
    """Match the data's genes to the pretraining vocabulary; refuse when less than ``min_overlap`` of the
    vocabulary is found in the data and measured there.

    ``match_by``: ``ensembl``, ``symbol`` or ``auto`` (Ensembl ids when both sides have them, else symbols).
    ``data`` may be a store's genes (:attr:`cellssl.store.CellStore.genes`): genes the store zero-filled when
    it was prepared count as matched (they keep their column) but not as found (``transfer/…_unmeasured``).
    """
    data, vocabulary, match_by = _identifiers(data, vocabulary, match_by, translation, source)
    alignment = _matched(data, vocabulary, match_by)
    unmeasured = f", {alignment.n_unmeasured} of them zero-filled when the store was prepared"
    unmeasured = unmeasured if alignment.n_unmeasured else ""
    log.info(
        "%s: %d of %d data genes matched by %s%s; the measured ones cover %.1f%% of the %d-gene pretraining "
        "vocabulary (the rest is zero-filled)",
        source,
        alignment.n_matched,
        alignment.n_source,
        match_by,
        unmeasured,
        100 * alignment.vocabulary_covered_measured,
        alignment.n_target,
    )
    if alignment.vocabulary_covered_measured < min_overlap:
        raise InputError(
            source,
            "var",
            f"only {alignment.n_matched - alignment.n_unmeasured} of the {alignment.n_target} pretrained genes "
            f"({100 * alignment.vocabulary_covered_measured:.1f}%) are in the data, matched by {match_by}"
            f"{unmeasured}; the minimum is {100 * min_overlap:.0f}%",
            "check the gene identifiers (transfer.match_by, transfer.gene_table) or lower transfer.min_overlap",
        )
    return alignment


def checkpoint_vocabulary(data_context: dict[str, Any]) -> GeneTable:
    """The pretraining genes a checkpoint stored (symbols, and Ensembl ids when the store had them)."""
    names = data_context.get("gene_names")
    if names is None:
        raise InputError("checkpoint", "data_context.gene_names", "no gene vocabulary stored", "retrain with cellssl")
    ids = data_context.get("gene_ids")
    names = np.asarray([str(n) for n in names])
    table = GeneTable(symbols=names, ensembl_ids=None if ids is None else np.asarray([str(i) for i in ids]))
    if table.ensembl_ids is None and is_ensembl_id(names):
        table = GeneTable(symbols=names, ensembl_ids=names)
    return table


def translation_table(path: str | Path | None) -> GeneTable | None:
    """A gene list with both Ensembl ids and symbols (``bundled`` → the human protein-coding genes)."""
    if path in (None, "", "none"):
        return None
    if path == "bundled":
        from cellssl.resources import bundled_path

        path = bundled_path("protein_coding_genes")
    table = read_gene_list(path)
    if table.ensembl_ids is None:
        raise InputError(str(path), "columns", "needs Ensembl ids and symbols", "give ensembl_gene_id and symbol")
    return table
