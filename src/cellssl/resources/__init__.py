"""Gene-set resources shipped with the package, and readers for any file of the same formats.

Bundled (see README, "Data and attribution"): MSigDB Hallmark and C2 Reactome/WikiPathways gene sets (GMT,
v7.5.1, human symbols), CollecTRI transcription-factor → target edges (TSV with ``source``, ``target``) and
human protein-coding genes with Ensembl ids and symbols (to translate gene identifiers when transferring models).
"""

from __future__ import annotations

import csv
from importlib.resources import files
from pathlib import Path

BUNDLED = {
    "hallmark": "h.all.v7.5.1.symbols.gmt",
    "reactome_wikipathways": "c2.cp.reactome_wikipathways.v7.5.1.symbols.gmt",
    "collectri": "collectri_tf_targets.tsv",
    "protein_coding_genes": "human_protein_coding_genes.tsv",
}


def bundled_path(name: str) -> Path:
    """Path of a bundled resource, by short name (``hallmark``, ``collectri``, ...; see ``BUNDLED``)."""
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled resource {name!r}: choose one of {sorted(BUNDLED)}")
    return Path(str(files(__name__) / BUNDLED[name]))


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """Gene sets of a GMT file: one set per line, ``name<TAB>description<TAB>gene<TAB>gene...``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GMT file")
    sets: dict[str, list[str]] = {}
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            fields = [f.strip() for f in line.rstrip("\n\r").split("\t")]
            if not any(fields):
                continue
            if len(fields) < 3:
                raise ValueError(f"{path}:{number}: a GMT line needs a name, a description and at least one gene")
            # a set named twice is merged; genes keep their first position
            sets[fields[0]] = list(dict.fromkeys([*sets.get(fields[0], []), *(g for g in fields[2:] if g)]))
    return sets


def read_regulons(path: str | Path, source: str = "source", target: str = "target") -> dict[str, list[str]]:
    """Transcription factor → target genes from a tab-separated edge table with ``source`` and ``target`` columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such TSV file")
    regulons: dict[str, list[str]] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = {source, target} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; found {reader.fieldnames}")
        for row in reader:
            targets = regulons.setdefault(row[source], [])
            if row[target] not in targets:
                targets.append(row[target])
    return regulons
