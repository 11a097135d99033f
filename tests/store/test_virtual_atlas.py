"""The virtual atlas (docs/simulator.md): the structure it documents is in its counts, its targets are shifted as
documented, the null shares no programme structure, its files load with the project's readers, bad settings
are refused with one line."""

from __future__ import annotations

import itertools

import anndata as ad
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from cellssl.evaluation.ontology import Ontology, match_cell_types
from cellssl.masking import GeneProgrammeMasking, ProgrammeToTFMasking
from cellssl.resources import bundled_path, read_gmt, read_regulons
from cellssl.store import CellStore, InputError
from cellssl.store.virtual_atlas import VirtualAtlas, sidecar_paths, virtual_atlas_to_store
from cellssl.tasks import config_dir
from cellssl.tasks.prepare import prepare

# a small world: 600 genes, 25 gene sets + 5 regulons, 3 lineages x 2 subtypes
WORLD = {
    "n_genes": 600,
    "n_programmes": 25,
    "n_regulons": 5,
    "hierarchy": [3, 2],
    "programmes_per_level": [6, 2],
    "level_activity": [1.0, 0.7],
    "auxiliary": {"n_cells": 2000, "n_donors": 20, "n_datasets": 4},
    "target": {"n_cells": 1500, "n_donors": 20},
}


def prepare_target(output) -> None:
    """A target of ``WORLD`` through cellssl-prepare's config (conf/virtual_atlas/default.yaml) and task."""
    world = [f"virtual_atlas.{k}={v}" for k, v in WORLD.items() if not isinstance(v, dict)]
    sizes = [f"virtual_atlas.{role}.{k}={v}" for role in ("auxiliary", "target") for k, v in WORLD[role].items()]
    overrides = ["source=virtual_atlas", f"output={output}", "virtual_atlas.role=target", *world, *sizes]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("prepare", overrides=[*overrides, "virtual_atlas.chunk_cells=500"])
    GlobalHydra.instance().clear()
    prepare(cfg)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The auxiliary atlas, its null and a target of one world."""
    folder = tmp_path_factory.mktemp("virtual_atlas")
    paths = {name: folder / f"{name}.zarr" for name in ("auxiliary", "null", "target")}
    options = {**WORLD, "chunk_cells": 500, "progress": False}
    virtual_atlas_to_store(paths["auxiliary"], **options)
    virtual_atlas_to_store(paths["null"], **options, variant="unrelated")
    prepare_target(paths["target"])
    return paths


def lognormal(adata: ad.AnnData) -> np.ndarray:
    x = adata.X.toarray().astype(np.float64)
    return np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)


def mean_correlation(x: np.ndarray, genes, gene_sets) -> tuple[float, float]:
    """Mean correlation of gene pairs within the sets, and of all gene pairs."""
    corr = np.nan_to_num(np.corrcoef(x.T))
    index = {g: i for i, g in enumerate(genes)}
    within = []
    for members in gene_sets.values():
        rows = [index[g] for g in members if g in index]
        if len(rows) >= 5:
            within.append(corr[np.ix_(rows, rows)][np.triu_indices(len(rows), 1)].mean())
    return float(np.mean(within)), float(corr[np.triu_indices(len(genes), 1)].mean())


def tf_correlation(x: np.ndarray, genes, regulons) -> float:
    """Mean correlation of each measured TF with the mean of its targets."""
    index = {g: i for i, g in enumerate(genes)}
    return float(
        np.mean(
            [
                np.corrcoef(x[:, index[tf]], x[:, [index[t] for t in targets]].mean(axis=1))[0, 1]
                for tf, targets in regulons.items()
                if tf in index
            ]
        )
    )


def test_the_same_cells_for_any_number_of_processes(stores, tmp_path):
    two = virtual_atlas_to_store(tmp_path / "two.zarr", **WORLD, chunk_cells=500, processes=2, progress=False)
    one, two = ad.read_zarr(stores["auxiliary"]), ad.read_zarr(two)
    assert (one.X != two.X).nnz == 0 and one.obs.equals(two.obs) and one.var.equals(two.var)
    for kind, path in sidecar_paths(tmp_path / "two.zarr").items():
        assert path.read_text() == sidecar_paths(stores["auxiliary"])[kind].read_text()


def test_programme_genes_covary_in_the_structured_atlas_and_not_in_the_null(stores):
    """The world's programmes (its GMT) and regulons covary in the structured atlas; in the null its own programmes
    do, the world's do not."""
    world = read_gmt(sidecar_paths(stores["auxiliary"])["programmes"])
    unrelated = read_gmt(sidecar_paths(stores["null"])["programmes"])
    structured, null = ad.read_zarr(stores["auxiliary"]), ad.read_zarr(stores["null"])
    assert list(structured.var_names) == list(null.var_names)  # the same genes
    within, overall = mean_correlation(lognormal(structured), structured.var_names, world)
    assert within > overall + 0.08  # measured 0.17 against 0.03
    within, overall = mean_correlation(lognormal(null), null.var_names, world)
    assert abs(within - overall) < 0.03  # measured 0.028 against 0.028
    within, overall = mean_correlation(lognormal(null), null.var_names, unrelated)
    assert within > overall + 0.08
    # a TF is expressed with its regulon: measured 0.40 in the structured atlas, 0.08 for the same genes in the null
    regulons = read_regulons(sidecar_paths(stores["auxiliary"])["regulons"])
    with_targets = tf_correlation(lognormal(structured), structured.var_names, regulons)
    assert with_targets > 0.25 and with_targets > tf_correlation(lognormal(null), null.var_names, regulons) + 0.15


def test_cell_types_are_separable_in_a_small_target(stores):
    target = ad.read_zarr(stores["target"])
    z = PCA(20, random_state=0).fit_transform(lognormal(target))
    train = (target.obs["split"] == "train").to_numpy()
    cell_type = target.obs["true_cell_type"].astype(str).to_numpy()
    lineage = np.array([t.split(".")[0] for t in cell_type])
    # measured: 0.68 balanced accuracy over 6 subtypes (chance 0.17), 0.95 over 3 lineages
    for y, bound in ((cell_type, 3 / len(set(cell_type))), (lineage, 0.85)):
        probe = LogisticRegression(max_iter=2000).fit(z[train], y[train])
        score = balanced_accuracy_score(y[~train], probe.predict(z[~train]))
        assert score > bound, (len(set(y)), score)


def test_counts_are_negative_binomial_around_log_normal_libraries():
    """Var(x) = mu + mu^2 / theta in every band of the means; libraries log-normal as set (a target measuring the
    whole world, so its means sum to the library)."""
    whole = {"n_genes": 700, "target": {"n_extra_genes": 0, "missing_gene_fraction": 0.0}}
    atlas = VirtualAtlas(role="target", **{**WORLD, **whole})
    rng = np.random.default_rng(1)
    means, _ = atlas.cells(2000, np.arange(atlas.n_donors), rng)
    counts = atlas.noise(means, rng).toarray()
    edges = np.quantile(means, [0.5, 0.9, 0.99, 1.0])
    for low, high in itertools.pairwise(edges):
        band = (means >= low) & (means <= high)
        mean, residual = means[band], (counts[band] - means[band]) ** 2
        assert (residual / (mean + mean**2 / atlas.dispersion)).mean() == pytest.approx(1, abs=0.05), (low, high)
        assert (residual / mean).mean() > 1 + 0.5 * mean.mean() / atlas.dispersion  # overdispersed, not Poisson
    totals = counts.sum(axis=1)
    library = np.exp(atlas.library_log_mean + atlas.batch_library[0])
    assert np.median(totals) == pytest.approx(library, rel=0.1)
    assert np.log(totals).std() == pytest.approx(atlas.library_log_sd, rel=0.15)


def test_a_target_has_other_donors_a_batch_shift_and_another_gene_list(stores):
    auxiliary, target = ad.read_zarr(stores["auxiliary"]), ad.read_zarr(stores["target"])
    assert not set(auxiliary.obs["donor_id"]) & set(target.obs["donor_id"])
    assert set(target.obs["dataset_id"]) == {"target"} and auxiliary.obs["dataset_id"].nunique() == 4
    shared = target.var_names.intersection(auxiliary.var_names)
    assert len(shared) == round(0.9 * 600) and target.n_vars - len(shared) == 100  # 10 % missing, 100 extra
    assert target.var["ensembl_id"].str.startswith("ENSG").all()
    # the target's batch effect shows as the log ratio of its gene means to the auxiliary atlas's
    world_target, world_auxiliary = VirtualAtlas(role="target", **WORLD), VirtualAtlas(**WORLD)
    index = {g: i for i, g in enumerate(world_target.symbols)}
    columns = [index[g] for g in shared]
    shift = world_target.batch_gene[0, columns] - world_auxiliary.batch_gene[:, columns].mean(axis=0)
    target_mean = np.asarray(target[:, shared].X.mean(axis=0)).ravel()
    ratio = np.log(target_mean + 1e-3) - np.log(np.asarray(auxiliary[:, shared].X.mean(axis=0)).ravel() + 1e-3)
    expressed = target_mean > 0.2
    assert np.corrcoef(ratio[expressed], shift[expressed])[0, 1] > 0.7  # measured 0.92
    assert CellStore(stores["target"]).metadata["world_id"] == CellStore(stores["auxiliary"]).metadata["world_id"]


def test_programmes_regulons_and_ontology_load_with_the_projects_readers(stores):
    files, genes = sidecar_paths(stores["target"]), list(ad.read_zarr(stores["auxiliary"]).var_names)
    target = ad.read_zarr(stores["target"])
    programmes = read_gmt(files["programmes"])
    reactome = read_gmt(bundled_path("reactome_wikipathways"))
    for name, members in programmes.items():  # real gene sets, restricted to the store's genes
        assert name.startswith("REGULON_") or set(members) <= set(reactome[name])
    masking = GeneProgrammeMasking(programmes, list(target.var_names), min_size=5)
    assert masking.n_programmes == sum(len(m) >= 5 for m in programmes.values()) >= 20
    regulons = read_regulons(files["regulons"])
    collectri = read_regulons(bundled_path("collectri"))
    assert all(set(targets) <= set(collectri[tf]) for tf, targets in regulons.items())
    ProgrammeToTFMasking(regulons, genes, min_targets=5)
    ontology = Ontology.load(str(files["ontology"]))
    annotated = target.obs["cell_type"].astype(str)
    match_cell_types(sorted(set(annotated) | set(target.obs["true_cell_type"])), ontology)
    coarse = annotated != target.obs["true_cell_type"].astype(str)
    assert 0.05 < coarse.mean() < 0.15  # coarse_label_fraction 0.1
    for true, label in zip(target.obs["true_cell_type"][coarse], annotated[coarse], strict=True):
        assert ontology.is_same_or_descendant(ontology.term_id(true), ontology.term_id(label))


def test_the_null_has_no_target_and_unknown_settings_are_refused():
    with pytest.raises(InputError, match=r"virtual_atlas\.variant: the unrelated"):
        VirtualAtlas(role="target", variant="unrelated", **WORLD)
    with pytest.raises(InputError, match="Hydra reads null"):
        VirtualAtlas(variant=None, **WORLD)
    with pytest.raises(InputError, match=r"virtual_atlas\.target: unknown option"):
        VirtualAtlas(**{**WORLD, "target": {"n_cell": 5}})


def test_too_few_genes_for_the_programmes_exit_2_with_one_line(run_app, tmp_path):
    out = tmp_path / "small.zarr"
    result = run_app(
        "cellssl-prepare", "source=virtual_atlas", f"output={out}", "virtual_atlas.n_genes=200", check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: virtual_atlas: virtual_atlas.n_genes: 210 programme genes hold only 14 of the 80 programmes of "
        "10+ genes; raise virtual_atlas.n_genes (or programme_gene_fraction) or lower virtual_atlas.n_programmes"
    ]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("small")) == []
