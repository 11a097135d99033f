"""Ontology-aware cell-type scoring: a prediction that is the true type or one of its descendants counts as correct.

Cell types are terms of the Cell Ontology (CL). The default ontology is the one CELLxGENE uses, shipped offline
inside the ``cellxgene-ontology-guide`` package (``pip install cellssl[ontology]``); a user may pass another
ontology file instead: an ``.obo`` file (read with ``obonet``) or a JSON file (optionally ``.zst``-compressed) in
the guide's format, ``{"CL:0000236": {"label": "B cell", "ancestors": {"CL:0000945": 1, ...}}, ...}``.

Labels given by name are matched to term ids by exact label, then case-insensitively by label or exact synonym;
``label_map`` supplies ids (or ontology labels) for names the ontology does not know (e.g. ``CD19+ B: CL:0000236``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cellssl.store.validation import InputError

_TERM_ID = re.compile(r"^[A-Za-z]+[:_]\d+$")


@dataclass
class Ontology:
    """Term labels, exact synonyms and the transitive ancestors of every term (``is_a`` and ``part_of`` as the
    source defines them)."""

    labels: dict[str, str]
    ancestors: dict[str, set[str]]
    synonyms: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def load(cls, source: str = "cellxgene", name: str = "CL") -> Ontology:
        """``cellxgene`` (the Cell Ontology of the installed ``cellxgene-ontology-guide``) or a file path."""
        if source == "cellxgene":
            return cls.from_cellxgene(name)
        path = Path(source)
        if not path.is_file():
            raise InputError(source, "ontology", "no such ontology file", "pass ontology.source=cellxgene or a path")
        if path.suffix == ".obo":
            return cls.from_obo(path)
        return cls.from_json(path)

    @classmethod
    def from_cellxgene(cls, name: str = "CL") -> Ontology:
        try:
            from cellxgene_ontology_guide.ontology_parser import OntologyParser
        except ImportError as err:
            raise InputError(
                "cellxgene",
                "ontology.source",
                "cellxgene-ontology-guide is not installed",
                "pip install cellssl[ontology]",
            ) from err
        return cls.from_terms(OntologyParser().cxg_schema.ontology(name), source=f"cellxgene-ontology-guide {name}")

    @classmethod
    def from_terms(cls, terms: Mapping[str, Mapping], source: str = "") -> Ontology:
        """From the guide's JSON layout: term id → ``{"label", "ancestors": {id: distance}, "synonyms"?}``."""
        labels = {tid: str(t.get("label", tid)) for tid, t in terms.items()}
        ancestors = {tid: set(t.get("ancestors") or ()) for tid, t in terms.items()}
        synonyms = {tid: list(t.get("synonyms") or ()) for tid, t in terms.items() if t.get("synonyms")}
        return cls(labels, ancestors, synonyms, source)

    @classmethod
    def from_json(cls, path: str | Path) -> Ontology:
        path = Path(path)
        raw = path.read_bytes()
        if path.suffix == ".zst":
            import zstandard

            raw = zstandard.ZstdDecompressor().stream_reader(raw).read()
        try:
            terms = json.loads(raw)
        except ValueError as err:
            raise InputError(
                str(path), "ontology", f"not JSON ({err})", "pass an .obo file or the guide's JSON"
            ) from err
        if not isinstance(terms, dict) or not all(isinstance(t, dict) for t in terms.values()):
            raise InputError(str(path), "ontology", "expected {term id: {label, ancestors}}", "pass an .obo file")
        return cls.from_terms(terms, source=str(path))

    @classmethod
    def from_obo(cls, path: str | Path) -> Ontology:
        """An OBO file; ancestors follow ``is_a`` and ``part_of`` edges (as CELLxGENE's ontology does)."""
        try:
            import networkx as nx
            import obonet
        except ImportError as err:
            raise InputError(
                str(path), "ontology", "reading .obo needs obonet", "pip install cellssl[ontology]"
            ) from err
        graph = obonet.read_obo(str(path))  # edges point child → parent
        kept = nx.MultiDiGraph()
        kept.add_nodes_from(graph.nodes)
        kept.add_edges_from((u, v) for u, v, kind in graph.edges(keys=True) if kind in ("is_a", "part_of"))
        labels = {n: str(d.get("name", n)) for n, d in graph.nodes(data=True)}
        synonyms = {
            n: [s.split('"')[1] for s in d.get("synonym", []) if "EXACT" in s and s.count('"') >= 2]
            for n, d in graph.nodes(data=True)
        }
        ancestors = {n: set(nx.descendants(kept, n)) for n in kept.nodes}  # descendants along child → parent edges
        return cls(labels, ancestors, {k: v for k, v in synonyms.items() if v}, str(path))

    def term_id(self, name: str) -> str | None:
        """The term id of a label, an id, or an exact synonym (case-insensitive); ``None`` if unknown."""
        name = str(name).strip()
        if name in self.labels:
            return name
        if _TERM_ID.match(name) and name.replace("_", ":") in self.labels:
            return name.replace("_", ":")
        return self._lookup.get(name.casefold())

    @property
    def _lookup(self) -> dict[str, str]:
        if not hasattr(self, "_cached_lookup"):
            lookup: dict[str, str] = {}
            for tid, synonyms in self.synonyms.items():
                for synonym in synonyms:
                    lookup.setdefault(synonym.casefold(), tid)
            lookup.update({label.casefold(): tid for tid, label in self.labels.items()})  # labels win
            self._cached_lookup = lookup
        return self._cached_lookup

    def is_same_or_descendant(self, term: str, of: str) -> bool:
        """Whether ``term`` is ``of`` or lies below it (``of`` is among its ancestors)."""
        return term == of or of in self.ancestors.get(term, ())


def match_cell_types(names: Sequence[str], ontology: Ontology, label_map: Mapping[str, str] | None = None) -> list[str]:
    """Term ids of cell-type names (via ``label_map`` first); refuses names that match nothing."""
    label_map = dict(label_map or {})
    ids, unknown = [], []
    for name in names:
        mapped = label_map.get(str(name), str(name))
        tid = ontology.term_id(mapped)
        if tid is None:
            unknown.append(str(name))
        ids.append(tid)
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5])
        raise InputError(
            ontology.source,
            "ontology.label_map",
            f"{len(unknown)} cell type(s) match no ontology term: {shown}",
            "map each to a CL id, e.g. ontology.label_map={'CD19+ B': 'CL:0000236'}",
        )
    return ids


def ontology_corrected(
    true: np.ndarray, predicted: np.ndarray, term_ids: Sequence[str], ontology: Ontology
) -> np.ndarray:
    """Predictions in which a class that is the true class or a descendant of it is replaced by the true class.

    Scoring these with ordinary metrics counts a more specific correct prediction (true "T cell", predicted
    "CD8-positive, alpha-beta T cell") as correct, and a less specific or unrelated one as wrong.
    """
    n = len(term_ids)
    below = np.array([[ontology.is_same_or_descendant(term_ids[p], term_ids[t]) for t in range(n)] for p in range(n)])
    true, predicted = np.asarray(true), np.asarray(predicted)
    valid = (true >= 0) & (predicted >= 0)
    corrected = predicted.copy()
    hit = np.zeros_like(valid)
    hit[valid] = below[predicted[valid], true[valid]]
    corrected[hit] = true[hit]
    return corrected
