"""A virtual atlas: counts from shared latent gene programmes, with known cell types, donors and batches.

The generative model (docs/simulator.md has the equations and the defaults):

- a *world* (one per ``seed``) holds real human genes and latent programmes: real gene sets of a GMT file and
  CollecTRI regulons (the TF gene loads on its own regulon), restricted to the chosen genes; gene baselines and
  programme loadings; a hierarchy of cell types (lineage → type → subtype), each node switching on a few
  programmes, a leaf's activity pattern being the sum along its path;
- a *role* draws its cells from the world: the **auxiliary** (pretraining) atlas from many donors in several data
  sets, a **target** from other donors in one new data set, on a partly different gene list. Donors shift
  programme activities and genes, data sets shift genes and library sizes;
- a cell: a data set's cell-type composition picks its type; its programme activity is the type's pattern plus
  its donor's shift plus Gaussian cell-level variation; log rates are gene baselines + loadings × activity + donor
  and data-set gene effects, normalised over the world's genes and scaled by a log-normal library size; counts are
  negative binomial (Gamma–Poisson) around those rates.

The **null** control (``variant="unrelated"``) is an auxiliary atlas that draws all of its structure (baselines,
programme memberships, loadings, hierarchy patterns) independently of the world's, on the same genes: it shares no
programme structure with the targets. Cells are streamed in chunks (:func:`cellssl.store.synthetic.write_chunks`),
identically for any number of processes. Beside the store: the programmes (GMT), the regulons (TSV) and the
cell-type ontology (JSON) it used.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellssl.resources import bundled_path, read_gmt, read_regulons
from cellssl.store.output import check_output, write_atomic
from cellssl.store.synthetic import cached_generator, chunk_tasks, donors_of_splits, write_chunks
from cellssl.store.validation import InputError
from cellssl.store.writer import StoreWriter

ROLES = ("auxiliary", "target")
VARIANTS = ("structured", "unrelated")  # unrelated: the null control (Hydra reads `null` as no value)
ROLE_DEFAULTS = {
    "auxiliary": {"n_cells": 100_000, "n_donors": 200, "n_datasets": 10},
    "target": {"n_cells": 20_000, "n_donors": 140, "missing_gene_fraction": 0.1, "n_extra_genes": 100},
}
SIDECARS = {"programmes": ".programmes.gmt", "regulons": ".regulons.tsv", "ontology": ".ontology.json"}
LABEL_COLUMNS = ["cell_type", "true_cell_type", "dataset_id"]
_SOURCE = "virtual_atlas"


def _fail(field: str, problem: str, fix: str) -> InputError:
    return InputError(_SOURCE, f"virtual_atlas.{field}", problem, fix)


def _role_options(role: str, given: Mapping[str, Any] | None) -> dict[str, Any]:
    options = dict(ROLE_DEFAULTS[role])
    unknown = sorted(set(given or {}) - set(options))
    if unknown:
        raise _fail(role, f"unknown option(s) {unknown}", f"choose from {sorted(options)}")
    return {**options, **{k: type(options[k])(v) for k, v in (given or {}).items()}}


def resolved_settings(**options: Any) -> dict[str, Any]:
    """:class:`VirtualAtlas`'s settings with the defaults and role sizes filled in, as JSON values of the
    defaults' types (equal settings look equal: they name the world, :func:`world_id`)."""
    parameters = dict(inspect.signature(VirtualAtlas.__init__).parameters)
    parameters.pop("self")
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise _fail(unknown[0], "no such setting", f"choose from {sorted(parameters)}")
    settings = {}
    for name, parameter in parameters.items():
        value, default = options.get(name, parameter.default), parameter.default
        if name in ROLES:
            value = _role_options(name, value)
        elif isinstance(default, tuple):
            value = [type(default[0])(v) for v in value]
        elif isinstance(default, float):
            value = float(value)
        settings[name] = value
    return settings


def _resource(name_or_path: str) -> Path:
    """A bundled resource by short name (``reactome_wikipathways``, ``collectri``, ...) or a file path."""
    try:
        return bundled_path(name_or_path)
    except ValueError:
        return Path(name_or_path)


@functools.cache
def _read(reader: Callable, path: Path) -> Any:
    """A resource read once per process (atlases of one world are built several times: roles, workers)."""
    return reader(path)


@functools.cache
def _known_genes() -> pd.DataFrame:
    """Human protein-coding genes with a symbol: the pool genes are drawn from (with their Ensembl ids)."""
    table = pd.read_csv(bundled_path("protein_coding_genes"), sep="\t", usecols=["ensembl_gene_id", "symbol"])
    return table.dropna(subset=["symbol"]).drop_duplicates("symbol").set_index("symbol")


def choose_programmes(
    gene_sets: Mapping[str, Sequence[str]],
    known: Sequence[str],
    n_programmes: int,
    sizes: Sequence[int],
    budget: int,
    rng: np.random.Generator,
) -> tuple[list[str], list[str]]:
    """Gene sets drawn at random, each contributing a random ``sizes[0]``–``sizes[1]`` of its genes, while the
    union stays within ``budget`` genes: the chosen set names and the union (in order of choice)."""
    known, low, high = set(known), int(sizes[0]), int(sizes[1])
    union: dict[str, None] = {}
    chosen: list[str] = []
    for name in rng.permutation(list(gene_sets)):
        genes = [g for g in gene_sets[name] if g in known]
        if len(genes) < low:
            continue
        picked = rng.choice(genes, min(len(genes), int(rng.integers(low, high + 1))), replace=False)
        new = [g for g in picked if g not in union]
        if len(union) + len(new) > budget:
            continue
        union.update(dict.fromkeys(new))
        chosen.append(str(name))
        if len(chosen) == n_programmes:
            return chosen, list(union)
    raise _fail(
        "n_genes",
        f"{budget} programme genes hold only {len(chosen)} of the {n_programmes} programmes of {low}+ genes",
        "raise virtual_atlas.n_genes (or programme_gene_fraction) or lower virtual_atlas.n_programmes",
    )


def choose_regulators(
    regulons: Mapping[str, Sequence[str]], known: Sequence[str], genes: Sequence[str], n: int, min_size: int, rng
) -> list[str]:
    """``n`` transcription factors drawn among those with ``min_size`` or more targets in ``genes``."""
    known, genes = set(known), set(genes)
    qualified = [tf for tf, targets in regulons.items() if tf in known and len(genes.intersection(targets)) >= min_size]
    if len(qualified) < n:
        raise _fail(
            "n_regulons",
            f"only {len(qualified)} TFs have {min_size}+ targets among the programme genes, {n} asked for",
            "raise virtual_atlas.n_genes or lower virtual_atlas.n_regulons (or min_regulon_size)",
        )
    return [str(tf) for tf in rng.choice(qualified, n, replace=False)]


def cell_type_tree(branching: Sequence[int]) -> tuple[list[str], list[int], list[int]]:
    """Names (``T1``, ``T1.2``, ``T1.2.1``, ...; the root is ``cell``), parent index and level of every node of
    a tree with ``branching[l]`` children per node at level ``l``; leaves come last."""
    names, parents, levels, paths = ["cell"], [-1], [0], [()]
    frontier = [0]
    for level, children in enumerate(branching, start=1):
        grown = []
        for node in frontier:
            for child in range(1, int(children) + 1):
                paths.append((*paths[node], child))
                names.append("T" + ".".join(map(str, paths[-1])))
                parents.append(node)
                levels.append(level)
                grown.append(len(names) - 1)
        frontier = grown
    return names, parents, levels


class VirtualAtlas:
    """The world's structure and one role's donors and data sets; :meth:`sample` draws cells (one chunk)."""

    def __init__(
        self,
        *,
        role: str = "auxiliary",
        variant: str = "structured",
        seed: int = 0,
        n_genes: int = 2000,
        n_programmes: int = 80,
        programme_sizes: Sequence[int] = (10, 40),
        programme_gene_fraction: float = 0.7,
        programmes: str = "reactome_wikipathways",
        n_regulons: int = 20,
        min_regulon_size: int = 10,
        regulons: str = "collectri",
        hierarchy: Sequence[int] = (4, 3, 2),
        programmes_per_level: Sequence[int] = (8, 4, 2),
        level_activity: Sequence[float] = (1.0, 0.7, 0.5),
        activity_sd: float = 0.5,
        loading_log_sd: float = 0.3,
        baseline_sd: float = 1.0,
        type_concentration: float = 0.7,
        composition_concentration: float = 20.0,
        donor_programme_sd: float = 0.3,
        donor_gene_sd: float = 0.1,
        batch_sd: float = 0.3,
        batch_library_sd: float = 0.3,
        library_log_mean: float = 7.3,
        library_log_sd: float = 0.5,
        dispersion: float = 5.0,
        coarse_label_fraction: float = 0.1,
        auxiliary: Mapping[str, Any] | None = None,
        target: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = resolved_settings(**{k: v for k, v in locals().items() if k != "self"})
        self.role, self.variant, self.seed = role, variant, int(seed)
        self.auxiliary, self.target = self.settings["auxiliary"], self.settings["target"]
        self.activity_sd, self.library_log_mean, self.library_log_sd = activity_sd, library_log_mean, library_log_sd
        self.dispersion, self.coarse_label_fraction = float(dispersion), coarse_label_fraction
        _check(role, variant, n_genes, hierarchy, programmes_per_level, level_activity, dispersion, self.target)
        self._choose_genes(n_genes, n_programmes, programme_sizes, programme_gene_fraction, programmes)
        self._choose_regulons(n_regulons, min_regulon_size, regulons)
        self._fill_universe(n_genes + int(self.target["n_extra_genes"]))
        self._role_genes(n_genes)
        structure = np.random.default_rng([self.seed, 11, VARIANTS.index(variant)])
        if variant == "unrelated":  # the null control: the same genes, programme memberships moved to others
            self._permute_programmes(structure)
        self.baseline = structure.normal(0.0, baseline_sd, self.n_universe).astype(np.float32)
        self._draw_loadings(loading_log_sd, structure)
        self._draw_cell_types(hierarchy, programmes_per_level, level_activity, type_concentration, structure)
        self._draw_role(composition_concentration, donor_programme_sd, donor_gene_sd, batch_sd, batch_library_sd)

    # -- the world's genes and programmes ------------------------------------------------------------------------
    def _choose_genes(self, n_genes: int, n_programmes: int, sizes, fraction: float, gmt: str) -> None:
        self._known = _known_genes()
        rng = np.random.default_rng([self.seed, 10])  # the genes: shared by both variants
        self._gene_rng = rng
        budget = round(fraction * (n_genes + int(self.target["n_extra_genes"])))
        self._gene_sets = _read(read_gmt, _resource(gmt))
        self.programme_sets, self._programme_genes = choose_programmes(
            self._gene_sets, self._known.index, n_programmes, sizes, budget, rng
        )

    def _choose_regulons(self, n_regulons: int, min_size: int, tsv: str) -> None:
        self._regulons = _read(read_regulons, _resource(tsv))
        self.regulators = choose_regulators(
            self._regulons, self._known.index, self._programme_genes, n_regulons, min_size, self._gene_rng
        )

    def _fill_universe(self, n_universe: int) -> None:
        """Programme genes, the regulators, and background genes (in no programme) up to ``n_universe``."""
        genes = list(dict.fromkeys([*self._programme_genes, *self.regulators]))
        if len(genes) > n_universe:
            raise _fail("n_genes", f"{len(genes)} programme and TF genes exceed {n_universe}", "raise n_genes")
        taken = set(genes)
        pool = [g for g in self._known.index if g not in taken]
        background = self._gene_rng.choice(pool, n_universe - len(genes), replace=False)
        self.symbols = np.asarray(self._gene_rng.permutation([*genes, *background]), dtype=str)
        self.n_universe = len(self.symbols)
        index = {g: i for i, g in enumerate(self.symbols)}
        members = [sorted(index[g] for g in self._gene_sets[s] if g in index) for s in self.programme_sets]
        regulon = [sorted(index[t] for t in self._regulons[tf] if t in index and t != tf) for tf in self.regulators]
        self.programme_names = [*self.programme_sets, *(f"REGULON_{tf}" for tf in self.regulators)]
        self.members = [np.asarray(m, dtype=np.int64) for m in (*members, *regulon)]
        self.tf_gene = {len(members) + i: index[tf] for i, tf in enumerate(self.regulators)}  # programme → TF gene
        self.n_programmes = len(self.members)

    def _role_genes(self, n_genes: int) -> None:
        """Universe indices measured by this role: the auxiliary atlas ``n_genes`` of them; a target loses
        ``missing_gene_fraction`` of those and measures the remaining ``n_extra_genes``."""
        rng = np.random.default_rng([self.seed, 10, 1])
        auxiliary = np.sort(rng.choice(self.n_universe, n_genes, replace=False))
        missing = rng.choice(auxiliary, round(self.target["missing_gene_fraction"] * n_genes), replace=False)
        extra = np.setdiff1d(np.arange(self.n_universe), auxiliary)
        target = np.union1d(np.setdiff1d(auxiliary, missing), extra)
        self.genes = auxiliary if self.role == "auxiliary" else target

    def _permute_programmes(self, rng: np.random.Generator) -> None:
        moved = rng.permutation(self.n_universe)
        self.members = [np.sort(moved[m]) for m in self.members]
        self.tf_gene = {k: int(moved[g]) for k, g in self.tf_gene.items()}
        n_sets = len(self.programme_sets)
        self.programme_names = [f"NULL_PROGRAMME_{k:03d}" for k in range(n_sets)] + [
            f"NULL_REGULON_{self.symbols[g]}" for g in self.tf_gene.values()
        ]

    def _draw_loadings(self, log_sd: float, rng: np.random.Generator) -> None:
        """``loadings[k, g]``: log-normal (median 1) on programme k's genes and, for a regulon, on its TF, divided
        by the square root of the number of programmes gene g is in (a gene in many programmes varies as much as
        a gene in one)."""
        self.loadings = np.zeros((self.n_programmes, self.n_universe), dtype=np.float32)
        for k, genes in enumerate(self.members):
            genes = np.append(genes, self.tf_gene[k]) if k in self.tf_gene else genes
            self.loadings[k, genes] = np.exp(rng.normal(0.0, log_sd, len(genes)))
        self.loadings /= np.sqrt(np.maximum((self.loadings > 0).sum(axis=0), 1))

    def _draw_cell_types(self, branching, per_level, activity, concentration: float, rng) -> None:
        """Each node below the root switches on ``per_level`` programmes by ``activity`` × U(0.5, 1.5); a leaf's
        pattern is the sum along its path. Leaf frequencies: Dirichlet(``concentration``)."""
        self.node_names, self.parents, levels = cell_type_tree(branching)
        patterns = np.zeros((len(self.node_names), self.n_programmes), dtype=np.float32)
        for node in range(1, len(self.node_names)):
            level = levels[node] - 1
            chosen = rng.choice(self.n_programmes, int(per_level[level]), replace=False)
            patterns[node] = patterns[self.parents[node]]
            patterns[node, chosen] += activity[level] * rng.uniform(0.5, 1.5, len(chosen))
        self.leaves = np.flatnonzero(np.asarray(levels) == len(branching))
        self.patterns = patterns[self.leaves]
        self.type_frequencies = rng.dirichlet(np.full(len(self.leaves), concentration))

    # -- the role's donors and data sets ---------------------------------------------------------------------------
    def _draw_role(self, concentration: float, donor_programme_sd, donor_gene_sd, batch_sd, batch_library_sd) -> None:
        rng = np.random.default_rng([self.seed, 12, VARIANTS.index(self.variant), ROLES.index(self.role)])
        options = self.auxiliary if self.role == "auxiliary" else self.target
        self.n_donors = int(options["n_donors"])
        n_datasets = int(options["n_datasets"]) if self.role == "auxiliary" else 1
        if self.role == "auxiliary":
            self.donor_names = [f"donor_{i:04d}" for i in range(self.n_donors)]
            self.dataset_names = [f"dataset_{j:02d}" for j in range(n_datasets)]
        else:
            self.donor_names = [f"target_donor_{i:04d}" for i in range(self.n_donors)]
            self.dataset_names = ["target"]
        self.dataset_of_donor = rng.permutation(np.arange(self.n_donors) % n_datasets)
        self.donor_programme = rng.normal(0.0, donor_programme_sd, (self.n_donors, self.n_programmes))
        self.donor_gene = rng.normal(0.0, donor_gene_sd, (self.n_donors, self.n_universe)).astype(np.float32)
        self.batch_gene = rng.normal(0.0, batch_sd, (n_datasets, self.n_universe)).astype(np.float32)
        self.batch_library = rng.normal(0.0, batch_library_sd, n_datasets)
        alpha = np.maximum(concentration * len(self.leaves) * self.type_frequencies, 1e-3)
        self.composition = rng.dirichlet(alpha, n_datasets)

    # -- cells ---------------------------------------------------------------------------------------------------
    def cells(self, n_cells: int, donors: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, pd.DataFrame]:
        """Expected counts ``(cells, measured genes)`` of ``n_cells`` cells of ``donors``, and their obs."""
        donor = rng.choice(donors, n_cells)
        dataset = self.dataset_of_donor[donor]
        cdf = np.cumsum(self.composition, axis=1)[dataset]
        leaf = np.minimum((rng.random((n_cells, 1)) > cdf).sum(axis=1), len(self.leaves) - 1)
        coarse = rng.random(n_cells) < self.coarse_label_fraction
        log_library = rng.normal(self.library_log_mean + self.batch_library[dataset], self.library_log_sd)
        library = np.clip(np.exp(log_library), 50, 60_000).astype(np.float32)
        activity = self.patterns[leaf] + self.donor_programme[donor].astype(np.float32)
        activity += self.activity_sd * rng.standard_normal(activity.shape, dtype=np.float32)
        rates = activity @ self.loadings
        rates += self.baseline
        rates += self.donor_gene[donor]
        rates += self.batch_gene[dataset]
        rates -= rates.max(axis=1, keepdims=True)
        np.exp(rates, out=rates)
        rates *= (library / rates.sum(axis=1))[:, None]
        names = np.asarray(self.node_names)
        leaf_node = self.leaves[leaf]
        obs = pd.DataFrame(
            {
                "cell_type": np.where(coarse, names[np.asarray(self.parents)[leaf_node]], names[leaf_node]),
                "true_cell_type": names[leaf_node],
                "dataset_id": np.asarray(self.dataset_names)[dataset],
                "donor_id": np.asarray(self.donor_names)[donor],
            }
        )
        return rates[:, self.genes], obs

    def noise(self, means: np.ndarray, rng: np.random.Generator) -> sp.csr_matrix:
        """Negative-binomial counts around ``means``: Poisson(mean × Gamma(θ, 1/θ)), variance mean + mean²/θ."""
        rates = rng.standard_gamma(self.dispersion, means.shape, dtype=np.float32)
        rates *= means / self.dispersion
        counts = rng.poisson(rates)
        return sp.csr_matrix(np.minimum(counts, np.iinfo(np.uint16).max).astype(np.uint16))

    def sample(self, n_cells: int, donors: np.ndarray, rng: np.random.Generator) -> tuple[sp.csr_matrix, pd.DataFrame]:
        """``n_cells`` cells of ``donors``: CSR counts (uint16) and obs (cell types, data set, donor)."""
        means, obs = self.cells(n_cells, donors, rng)
        return self.noise(means, rng), obs

    # -- what the store's users need beside it --------------------------------------------------------------------
    @property
    def gene_names(self) -> list[str]:
        return [str(g) for g in self.symbols[self.genes]]

    @property
    def ensembl_ids(self) -> list[str]:
        return self._known.loc[self.gene_names, "ensembl_gene_id"].astype(str).tolist()

    def programmes_gmt(self) -> str:
        """The latent programmes (GMT sets and regulons) on this role's genes, as GMT text."""
        measured = set(self.genes.tolist())
        lines = []
        for name, genes in zip(self.programme_names, self.members, strict=True):
            kept = [str(self.symbols[g]) for g in genes if g in measured]
            if kept:
                lines.append("\t".join([name, f"virtual atlas ({self.variant}) programme", *kept]))
        return "\n".join(lines) + "\n"

    def regulons_tsv(self) -> str:
        """Each regulon's TF and its targets on this role's genes (``source``, ``target``, ``sign``)."""
        measured = set(self.genes.tolist())
        rows = ["source\ttarget\tsign"]
        for k, tf in self.tf_gene.items():
            rows += [f"{self.symbols[tf]}\t{self.symbols[g]}\t1" for g in self.members[k] if g in measured]
        return "\n".join(rows) + "\n"

    def ontology_json(self) -> str:
        """The cell-type hierarchy as ``{id: {label, ancestors: {id: distance}}}`` (``ontology.source=<file>``)."""
        ids = [f"SIM:{i:07d}" for i in range(len(self.node_names))]
        terms = {}
        for node, name in enumerate(self.node_names):
            ancestors, parent, distance = {}, self.parents[node], 1
            while parent >= 0:
                ancestors[ids[parent]] = distance
                parent, distance = self.parents[parent], distance + 1
            terms[ids[node]] = {"label": name, "ancestors": ancestors}
        return json.dumps(terms, indent=1) + "\n"


def _check(role, variant, n_genes, hierarchy, per_level, activity, dispersion, target) -> None:
    if role not in ROLES:
        raise _fail("role", f"{role!r} is not a role", f"choose one of {list(ROLES)}")
    if variant not in VARIANTS:
        hint = " (the null control is called unrelated: Hydra reads null as no value)" if variant is None else ""
        raise _fail("variant", f"{variant!r} is not a variant{hint}", f"choose one of {list(VARIANTS)}")
    if variant == "unrelated" and role == "target":
        raise _fail("variant", "the unrelated (null) atlas has no target of its own", "use the structured target")
    if int(n_genes) < 1:
        raise _fail("n_genes", f"{n_genes} genes", "give a positive number")
    if not hierarchy or min(hierarchy) < 1 or len(per_level) != len(hierarchy) or len(activity) != len(hierarchy):
        raise _fail(
            "hierarchy",
            f"{list(hierarchy)} with {list(per_level)} programmes and {list(activity)} activity per level",
            "give positive branching numbers and one programmes_per_level and level_activity entry per level",
        )
    if not dispersion > 0:
        raise _fail("dispersion", f"{dispersion} is not positive", "use e.g. 5 (smaller: noisier)")
    if not 0 <= target["missing_gene_fraction"] < 1:
        raise _fail("target.missing_gene_fraction", f"{target['missing_gene_fraction']}", "use a number in [0, 1)")


def sidecar_paths(output: str | Path) -> dict[str, Path]:
    """The files written beside a store ``atlas.zarr``: ``atlas.programmes.gmt``, ``.regulons.tsv``,
    ``.ontology.json``."""
    output = Path(output)
    stem = output.with_suffix("") if output.suffix == ".zarr" else output
    return {kind: stem.with_name(stem.name + suffix) for kind, suffix in SIDECARS.items()}


def world_id(options: Mapping[str, Any]) -> str:
    """12 hex digits naming the world (everything but role and variant): equal for an atlas and its targets."""
    shared = {k: v for k, v in options.items() if k not in ("role", "variant")}
    return hashlib.sha1(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:12]


def virtual_atlas_to_store(
    output: str | Path,
    *,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    processes: int = 1,
    chunk_cells: int = 4096,
    overwrite: bool = False,
    progress: bool = True,
    chunk_size: int | None = None,
    shard_size: int | None = None,
    **options: Any,
) -> Path:
    """Generate one role of a virtual atlas into a cell store, with its programmes, regulons and ontology beside
    it (:func:`sidecar_paths`). ``options``: :class:`VirtualAtlas`'s (``role``, ``variant``, the world's
    settings, ``auxiliary``/``target`` sizes). The same ``seed`` and world settings give an atlas and its targets
    one world; the output is the same for any number of ``processes``."""
    options = resolved_settings(**options, seed=int(seed))
    atlas = cached_generator(VirtualAtlas, options)
    role = atlas.auxiliary if atlas.role == "auxiliary" else atlas.target
    sidecars = sidecar_paths(output)
    for path in sidecars.values():
        check_output(path, overwrite, replaceable="file")
    key = (seed, 13, VARIANTS.index(atlas.variant), ROLES.index(atlas.role))
    donors = donors_of_splits(atlas.n_donors, split_fractions, np.random.default_rng(key))
    if any(len(d) == 0 for d in donors):
        raise _fail(f"{atlas.role}.n_donors", f"{atlas.n_donors} donors leave a split empty", "raise n_donors")
    tasks = chunk_tasks(VirtualAtlas, options, (*key, 14), int(role["n_cells"]), donors, split_fractions, chunk_cells)
    layout = {k: v for k, v in (("chunk_size", chunk_size), ("shard_size", shard_size)) if v is not None}
    metadata = {"seed": seed, "virtual_atlas": options, "world_id": world_id(options)}  # settings, defaults filled
    metadata["files"] = {kind: path.name for kind, path in sidecars.items()}
    with StoreWriter(
        output,
        atlas.gene_names,
        count_dtype=np.uint16,
        ensembl_ids=atlas.ensembl_ids,
        label_columns=LABEL_COLUMNS,
        donor_column="donor_id",
        source=f"virtual_atlas(role={atlas.role}, variant={atlas.variant}, n_cells={role['n_cells']}, seed={seed})",
        overwrite=overwrite,
        extra_metadata=metadata,
        **layout,
    ) as writer:
        write_chunks(writer, tasks, processes, progress)
    texts = {"programmes": atlas.programmes_gmt(), "regulons": atlas.regulons_tsv(), "ontology": atlas.ontology_json()}
    for kind, path in sidecars.items():
        write_atomic(path, texts[kind])
    return Path(output)
