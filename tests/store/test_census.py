"""Census → cell store, against a local census-shaped SOMA collection of real counts (soma_fixture.py).

Every expectation is recomputed with pandas from the AnnData the fixture wrote (row ``i`` has soma_joinid
``i``), never taken from the code under test.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from soma_fixture import ASSAY_EXCLUDED, ASSAY_INCLUDED, census_like_anndata, write_census_fixture

from cellssl.store import CellStore
from cellssl.store.census import SCTAB_ASSAYS, CensusFilters, census_to_store
from cellssl.store.splits import SPLITS, assign_splits
from cellssl.store.validation import InputError

ROOT = Path(__file__).resolve().parents[2]
ASSAYS = [ASSAY_INCLUDED, "10x 3' v3"]
# chosen so that the cell-type filter drops types for too few cells and for too few donors (see test below)
FILTERS = dict(assays=ASSAYS, min_cells_per_cell_type=15, min_donors_per_cell_type=21)


def _needs_census_packages() -> None:
    pytest.importorskip("tiledbsoma")
    pytest.importorskip("cellxgene_census")


@pytest.fixture(scope="module")
def census(tmp_path_factory) -> tuple[str, ad.AnnData]:
    _needs_census_packages()
    return write_census_fixture(tmp_path_factory.mktemp("soma") / "census")


@pytest.fixture(scope="module")
def default_store(census, tmp_path_factory) -> tuple[Path, dict]:
    uri, _ = census
    path = tmp_path_factory.mktemp("stores") / "census.zarr"
    summary = census_to_store(path, census_uri=uri, filters=CensusFilters(**FILTERS), chunk_cells=40, seed=3)
    return path, summary


def expected(
    source: ad.AnnData,
    *,
    assays=ASSAYS,
    min_cells=FILTERS["min_cells_per_cell_type"],
    min_donors=FILTERS["min_donors_per_cell_type"],
    donor_scope="dataset",
    extra=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """pandas: the obs rows (indexed by soma_joinid) that should survive, and per-cell-type cells/donors."""
    obs = source.obs.copy()
    obs.index = pd.RangeIndex(len(obs))
    obs["donor"] = obs["donor_id"].astype(str)
    if donor_scope == "dataset":
        obs["donor"] = obs["dataset_id"].astype(str) + ":" + obs["donor"]
    mask = obs["is_primary_data"] & obs["assay"].astype(str).isin(assays)
    if extra is not None:
        mask &= extra(obs)
    obs = obs[mask]
    stats = obs.groupby(obs["cell_type"].astype(str)).agg(cells=("donor", "size"), donors=("donor", "nunique"))
    stats["kept"] = (stats.cells >= min_cells) & (stats.donors >= min_donors)
    return obs[obs["cell_type"].astype(str).isin(stats.index[stats.kept])], stats


def read_store(path: Path) -> tuple[ad.AnnData, dict]:
    store = ad.io.read_zarr(path)
    return store, json.loads(store.uns["cellssl"]["metadata_json"])


def dense(matrix) -> np.ndarray:
    return np.asarray(matrix.todense()) if hasattr(matrix, "todense") else np.asarray(matrix)


# -- filters -----------------------------------------------------------------------------------------------------


def test_default_filters_are_sctabs():
    filters = CensusFilters()
    assert (filters.min_cells_per_cell_type, filters.min_donors_per_cell_type) == (5000, 30)
    assert filters.primary_only and set(filters.assays) == set(SCTAB_ASSAYS) and len(SCTAB_ASSAYS) == 7
    assert (filters.organism, filters.measurement, filters.x_layer) == ("homo_sapiens", "RNA", "raw")
    value_filter = CensusFilters(assays=["10x 3' v2"], value_filter="disease == 'normal'").soma_value_filter()
    assert value_filter == """is_primary_data == True and assay in ["10x 3' v2"] and (disease == 'normal')"""
    assert CensusFilters(assays=[], primary_only=False).soma_value_filter() is None


def test_filters_drop_exactly_the_cells_they_should(census, default_store):
    _, source = census
    path, summary = default_store
    keep, stats = expected(source)
    obs = source.obs
    # the fixture exercises every filter: non-primary cells, another assay, types too small and too few donors
    assert (~obs["is_primary_data"]).sum() > 50 and (obs["assay"] == ASSAY_EXCLUDED).sum() > 50
    assert (stats.cells < FILTERS["min_cells_per_cell_type"]).any()
    too_few_donors = (stats.cells >= FILTERS["min_cells_per_cell_type"]) & (
        stats.donors < FILTERS["min_donors_per_cell_type"]
    )
    assert too_few_donors.any() and stats.kept.sum() >= 3

    store, meta = read_store(path)
    assert sorted(store.obs_names.astype(int)) == sorted(keep.index)
    primary_and_assay = obs["is_primary_data"] & obs["assay"].isin(ASSAYS)
    assert summary["cells"]["matched_value_filter"] == int(primary_and_assay.sum())
    assert summary["cells"]["after_cell_type_filter"] == len(keep) == summary["cells"]["written"]
    assert summary["cells"]["empty_dropped"] == 0
    for name, row in stats.iterrows():
        group = "kept" if row.kept else "dropped"
        assert summary["cell_types"][group][name] == {"cells": row.cells, "donors": row.donors}
    assert len(summary["cell_types"]["kept"]) + len(summary["cell_types"]["dropped"]) == len(stats)
    assert meta["census"]["cell_types"] == summary["cell_types"]
    assert meta["census"]["value_filter"] == summary["value_filter"]


def test_cell_type_thresholds_are_inclusive(census, tmp_path):
    uri, source = census
    _, stats = expected(source, min_cells=0, min_donors=0)
    edge = stats.sort_values("cells").iloc[-3]  # a mid-sized type: exactly at both thresholds
    filters = CensusFilters(
        assays=ASSAYS, min_cells_per_cell_type=int(edge.cells), min_donors_per_cell_type=int(edge.donors)
    )
    summary = census_to_store(tmp_path / "s.zarr", census_uri=uri, filters=filters)
    assert summary["cell_types"]["kept"][edge.name] == {"cells": edge.cells, "donors": edge.donors}
    keep, _ = expected(source, min_cells=int(edge.cells), min_donors=int(edge.donors))
    assert summary["cells"]["written"] == len(keep)


def test_extra_value_filter_and_global_donor_scope(census, tmp_path):
    uri, source = census
    filters = CensusFilters(**{**FILTERS, "min_donors_per_cell_type": 10}, value_filter="tissue_general == 'blood'")
    summary = census_to_store(tmp_path / "s.zarr", census_uri=uri, filters=filters, donor_scope="global")
    keep, stats = expected(source, min_donors=10, donor_scope="global", extra=lambda o: o["tissue_general"] == "blood")
    store, _ = read_store(tmp_path / "s.zarr")
    assert sorted(store.obs_names.astype(int)) == sorted(keep.index)
    assert (source.obs["tissue_general"] != "blood").sum() > 50
    assert summary["cell_types"]["kept"] == {
        name: {"cells": row.cells, "donors": row.donors} for name, row in stats[stats.kept].iterrows()
    }
    # global scope: the stored donor is the donor_id itself (12 labels), not dataset:donor
    assert set(store.obs["donor_id"]) <= set(source.obs["donor_id"])


# -- counts, genes, metadata ---------------------------------------------------------------------------------------


def test_counts_equal_the_source_for_the_same_cells(census, default_store):
    _, source = census
    path, summary = default_store
    store, meta = read_store(path)
    rows = store.obs_names.astype(int).to_numpy()
    assert store.X.dtype == np.uint32
    np.testing.assert_array_equal(dense(store.X), dense(source.X[rows]).astype(np.uint32))
    assert list(store.var_names) == list(source.var["feature_name"])
    assert list(store.var["ensembl_id"]) == list(source.var["feature_id"])
    np.testing.assert_array_equal(store.obs["cell_type"].astype(str), source.obs["cell_type"].astype(str).iloc[rows])
    donor = source.obs["dataset_id"].astype(str) + ":" + source.obs["donor_id"].astype(str)
    np.testing.assert_array_equal(store.obs["donor_id"].astype(str), donor.iloc[rows])
    assert meta["n_cells"] == len(rows) and meta["source"] == summary["source"] == f"census:{census[0]}"
    assert meta["census"]["census_info"]["census_schema_version"] == "fixture"
    assert summary["genes"]["matched"] == summary["genes"]["vocabulary"] == source.n_vars
    # the project's own reader (what training streams through) sees the same rows and split ranges
    cells = CellStore(path)
    np.testing.assert_array_equal(dense(cells.read_rows(0, cells.n_cells)), dense(store.X))
    assert cells.split_range("val") == (
        summary["splits"]["train"],
        summary["splits"]["train"] + summary["splits"]["val"],
    )


def test_fixed_gene_list_zero_fills_missing_genes_and_reports_overlap(census, tmp_path):
    uri, source = census
    rng = np.random.default_rng(0)
    picked = rng.choice(source.n_vars, size=300, replace=False)  # in random order: the list's order wins
    listed = source.var.iloc[picked]
    absent = [f"ENSG0000099{i:04d}" for i in range(40)]
    table = pd.DataFrame(
        {
            # a version suffix on some ids: matching ignores it
            "ensembl_gene_id": [f"{g}.7" if i % 3 == 0 else g for i, g in enumerate(listed["feature_id"])] + absent,
            "symbol": list(listed["feature_name"]) + [f"ABSENT{i}" for i in range(39)] + [None],
            "contig": "1",
        }
    )
    gene_list = tmp_path / "genes.tsv"
    table.to_csv(gene_list, sep="\t", index=False)
    path = tmp_path / "s.zarr"
    summary = census_to_store(
        path, census_uri=uri, filters=CensusFilters(**FILTERS), genes=gene_list, chunk_cells=64, seed=3
    )
    store, meta = read_store(path)
    assert store.n_vars == 340
    assert list(store.var_names) == [*listed["feature_name"], *[f"ABSENT{i}" for i in range(39)], absent[-1]]
    assert list(store.var["ensembl_id"]) == list(table["ensembl_gene_id"])
    overlap = summary["genes"]
    assert (overlap["vocabulary"], overlap["matched"], overlap["missing"]) == (340, 300, 40)
    assert overlap["census_genes_dropped"] == source.n_vars - 300
    assert overlap["missing_examples"] == absent[:10]
    assert meta["census"]["genes"] == overlap
    rows = store.obs_names.astype(int).to_numpy()
    x = dense(store.X)
    np.testing.assert_array_equal(x[:, :300], dense(source.X[rows][:, picked]))
    assert not x[:, 300:].any()
    # the same selection as with all genes (no cell is empty on 300 genes)
    keep, _ = expected(source)
    assert sorted(rows) == sorted(keep.index)


def test_gene_list_of_ids_and_cells_without_counts_there_are_dropped(census, tmp_path):
    uri, source = census
    rare = np.argsort(np.asarray((source.X > 0).sum(axis=0)).ravel())[100:103]  # three sparsely detected genes
    ids = list(source.var["feature_id"].iloc[rare])
    summary = census_to_store(tmp_path / "s.zarr", census_uri=uri, filters=CensusFilters(**FILTERS), genes=ids)
    keep, _ = expected(source)
    has_counts = np.asarray(source.X[keep.index.to_numpy()][:, rare].sum(axis=1)).ravel() > 0
    assert 0 < has_counts.sum() < len(keep)
    store, meta = read_store(tmp_path / "s.zarr")
    assert sorted(store.obs_names.astype(int)) == sorted(keep.index[has_counts])
    assert summary["cells"]["empty_dropped"] == meta["census"]["cells"]["empty_dropped"] == int((~has_counts).sum())
    assert sum(summary["splits"].values()) == store.n_obs == meta["n_cells"]
    assert list(store.var_names) == list(source.var["feature_name"].iloc[rare])  # symbols from the census
    np.testing.assert_array_equal(dense(store.X), dense(source.X[store.obs_names.astype(int).to_numpy()][:, rare]))


def test_real_protein_coding_gene_list(tmp_path):
    """scTab's gene space: the human protein-coding list (shared/data), with the fixture's ids made real."""
    _needs_census_packages()
    candidates = [ROOT.parent / "shared", ROOT / "shared"]
    tsv = next((c / "data" / "human_protein_coding_genes.tsv" for c in candidates if c.is_dir()), None)
    if tsv is None or not tsv.is_file():
        pytest.skip("shared/data/human_protein_coding_genes.tsv not found")
    genes = pd.read_csv(tsv, sep="\t", dtype=str)
    first = genes.dropna(subset=["symbol"]).drop_duplicates("symbol")
    adata = census_like_anndata(ensembl_of=dict(zip(first["symbol"], first["ensembl_gene_id"], strict=True)))
    uri, source = write_census_fixture(tmp_path / "census", adata)
    summary = census_to_store(tmp_path / "s.zarr", census_uri=uri, filters=CensusFilters(**FILTERS), genes=tsv)
    in_list = source.var["feature_id"].isin(genes["ensembl_gene_id"])
    assert summary["genes"]["vocabulary"] == len(genes) and summary["genes"]["matched"] == int(in_list.sum()) > 300
    store, _ = read_store(tmp_path / "s.zarr")
    assert store.var_names.is_unique and store.n_vars == len(genes)
    column = pd.Index(store.var["ensembl_id"]).get_indexer(source.var["feature_id"][in_list])
    rows = store.obs_names.astype(int).to_numpy()
    np.testing.assert_array_equal(dense(store.X)[:, column], dense(source.X[rows][:, in_list.to_numpy()]))


# -- splits and order ------------------------------------------------------------------------------------------------


def test_splits_are_donor_wise_grouped_and_shuffled(census, default_store):
    _, source = census
    path, summary = default_store
    store, meta = read_store(path)
    split = store.obs["split"].astype(str).to_numpy()
    codes = pd.Categorical(split, categories=list(SPLITS)).codes
    assert (np.diff(codes) >= 0).all(), "rows must be grouped by split in the order train, val, test"
    counts = {name: int((split == name).sum()) for name in SPLITS}
    assert counts == summary["splits"] == meta["split_counts"] and all(counts.values())
    donors = {name: set(store.obs["donor_id"][split == name]) for name in SPLITS}
    assert not (donors["train"] & donors["val"] or donors["train"] & donors["test"] or donors["val"] & donors["test"])
    # the split is assign_splits on the donor names, seeded
    keep, _ = expected(source)
    want = assign_splits(keep.reset_index(), (0.7, 0.15, 0.15), seed=3, donor_column="donor")
    np.testing.assert_array_equal(pd.Series(want, index=keep.index)[store.obs_names.astype(int)], split)
    # within each split the rows are a permutation of the soma_joinids, not their storage order
    ids = store.obs_names.astype(int).to_numpy()
    for name in ("train", "val", "test"):
        part = ids[split == name]
        rho = np.corrcoef(np.arange(len(part)), part)[0, 1]
        assert abs(rho) < 0.4 and not (np.diff(part) > 0).all(), (name, rho)


def test_chunking_smaller_than_a_split_and_seed_determinism(census, default_store, tmp_path):
    uri, _ = census
    path, summary = default_store  # chunk_cells=40: several chunks per split, one straddling train and val
    assert summary["splits"]["train"] > 4 * 40 and summary["splits"]["train"] % 40
    one_chunk = tmp_path / "one.zarr"
    census_to_store(one_chunk, census_uri=uri, filters=CensusFilters(**FILTERS), chunk_cells=100_000, seed=3)
    a, _ = read_store(path)
    b, _ = read_store(one_chunk)
    assert list(a.obs_names) == list(b.obs_names)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    np.testing.assert_array_equal(dense(a.X), dense(b.X))
    other = tmp_path / "other.zarr"
    census_to_store(other, census_uri=uri, filters=CensusFilters(**FILTERS), seed=4)
    c, _ = read_store(other)
    assert list(c.obs_names) != list(a.obs_names)


def test_shuffle_through_buckets_on_disk_gives_the_same_store(census, default_store, tmp_path):
    """A tiny memory budget spills the storage-order reads into many disk buckets: same store, nothing left over."""
    uri, _ = census
    path, _ = default_store
    spilled = tmp_path / "spilled.zarr"
    census_to_store(spilled, census_uri=uri, filters=CensusFilters(**FILTERS), chunk_cells=40, seed=3, memory_mb=0.05)
    a, _ = read_store(path)
    b, _ = read_store(spilled)
    assert list(a.obs_names) == list(b.obs_names)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    np.testing.assert_array_equal(dense(a.X), dense(b.X))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spilled.zarr"]


# -- failures --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"filters": CensusFilters(assays=["no such assay"])}, "obs"),
        ({"filters": CensusFilters(**{**FILTERS, "min_cells_per_cell_type": 10_000})}, "cell_type"),
        ({"filters": CensusFilters(**FILTERS), "label_columns": ["no_such_column"]}, "obs"),
        ({"filters": CensusFilters(**{**FILTERS, "organism": "mus_musculus"})}, "census_data"),
    ],
)
def test_bad_requests_raise_input_errors_and_leave_nothing(census, tmp_path, kwargs, field):
    with pytest.raises(InputError) as err:
        census_to_store(tmp_path / "s.zarr", census_uri=census[0], **kwargs)
    assert err.value.field == field
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_and_a_failure_midway_leaves_nothing(census, tmp_path, monkeypatch):
    import cellssl.store.census as census_module

    uri, _ = census
    (tmp_path / "taken.zarr").mkdir()
    with pytest.raises(InputError, match="already exists"):
        census_to_store(tmp_path / "taken.zarr", census_uri=uri)
    read_chunk, calls = census_module._read_chunk, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("connection lost")
        return read_chunk(*args, **kwargs)

    monkeypatch.setattr(census_module, "_read_chunk", failing)
    with pytest.raises(RuntimeError, match="connection lost"):
        census_to_store(tmp_path / "s.zarr", census_uri=uri, filters=CensusFilters(**FILTERS), chunk_cells=50)
    assert [p.name for p in tmp_path.iterdir()] == ["taken.zarr"]


@pytest.mark.parametrize(
    ("value", "count_dtype", "message"),
    [
        (2.5, np.uint32, "not counts"),
        (70_000, np.uint16, "a count of 70000 exceeds count_dtype uint16; set count_dtype=uint32"),  # else it wraps
    ],
)
def test_values_that_are_not_storable_counts_are_refused(tmp_path, value, count_dtype, message):
    _needs_census_packages()
    adata = census_like_anndata()
    adata.X = adata.X.copy()
    adata.X.data[5] = value
    uri, _ = write_census_fixture(tmp_path / "census", adata)
    filters = CensusFilters(assays=[], primary_only=False, min_cells_per_cell_type=1, min_donors_per_cell_type=1)
    with pytest.raises(InputError, match=message):
        census_to_store(tmp_path / "s.zarr", census_uri=uri, filters=filters, count_dtype=count_dtype)
    assert not (tmp_path / "s.zarr").exists()


def test_missing_packages_give_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cellxgene_census", None)  # makes `import cellxgene_census` fail
    with pytest.raises(ImportError, match=r"pip install cellssl\[census\]"):
        census_to_store(tmp_path / "s.zarr", census_uri="/nowhere")


# -- configuration ---------------------------------------------------------------------------------------------------


def test_census_config_composes_onto_the_function():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from cellssl.tasks import config_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("census", overrides=["filters.min_donors_per_cell_type=3", "census_uri=/data/census"])
    finally:
        GlobalHydra.instance().clear()
    cfg = OmegaConf.to_container(cfg)
    filters = CensusFilters(**cfg["filters"])
    assert filters.min_donors_per_cell_type == 3 and filters.min_cells_per_cell_type == 5000
    assert list(filters.assays) == list(SCTAB_ASSAYS) and filters.primary_only
    parameters = set(inspect.signature(census_to_store).parameters)
    arguments = set(cfg) - {"task_name", "paths", "hydra", "defaults"}
    assert arguments <= parameters, arguments - parameters
    assert cfg["census_uri"] == "/data/census" and cfg["genes"] == "all"


def test_census_command_line_on_a_local_soma_collection(tmp_path, run_app):
    """`cellssl-census` end to end: the Hydra app on the same local census-shaped collection."""
    pytest.importorskip("tiledbsoma")
    pytest.importorskip("cellxgene_census")
    census_uri, _ = write_census_fixture(tmp_path / "census")
    out = tmp_path / "cli.zarr"
    result = run_app(
        "cellssl-census",
        f"census_uri={census_uri}",
        f"output={out}",
        "filters.min_cells_per_cell_type=5",
        "filters.min_donors_per_cell_type=2",
    )
    stored = ad.io.read_zarr(out)
    assert stored.n_obs > 0 and set(stored.obs["split"]) <= {"train", "val", "test"}
    summary = json.loads(
        result.stdout[result.stdout.rindex("\n{\n") + 1 :] if "\n{\n" in result.stdout else result.stdout
    )
    assert summary["cells"]["written"] == stored.n_obs
