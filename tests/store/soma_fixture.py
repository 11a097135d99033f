"""A local, census-shaped SOMA collection built from real counts, for testing the census ingestion offline.

The CELLxGENE census cannot be reached from the test machines, so :func:`write_census_fixture` lays out
the same structure on disk with ``tiledbsoma.io.from_anndata``::

    <root>/                          SOMA Collection  (what cellxgene_census.open_soma(uri=<root>) opens)
        census_info/summary          SOMA DataFrame   (label, value: census_schema_version, census_build_date)
        census_data/                 SOMA Collection
            homo_sapiens/            SOMA Experiment: obs, ms["RNA"].var, ms["RNA"].X["raw"]

The counts are scanpy's ``pbmc68k_reduced`` with its raw counts recovered (700 PBMCs × 765 genes). Census-like
obs columns are added deterministically from each cell's barcode (SHA-256, stable across platforms and library
versions): ``cell_type`` (from ``bulk_labels``) with ``cell_type_ontology_term_id``, 12 donors in 2 data sets,
two assays, about 12 % non-primary cells and two ``tissue_general`` values. var has ``feature_id`` (Ensembl-like
ids; real ones where ``ensembl_of`` knows the symbol) and ``feature_name`` (the symbol), as in the census.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

ASSAY_INCLUDED = "10x 3' v2"  # an scTab assay; its quote tests the value_filter's escaping
ASSAY_EXCLUDED = "Smart-seq2"
N_DONORS = 12

# bulk_labels of pbmc68k_reduced → Cell Ontology ids of the nearest census cell types
_ONTOLOGY = {
    "CD14+ Monocyte": "CL:0001054",
    "Dendritic": "CL:0000451",
    "CD56+ NK": "CL:0000623",
    "CD4+/CD25 T Reg": "CL:0000815",
    "CD19+ B": "CL:0000236",
    "CD8+ Cytotoxic T": "CL:0000625",
    "CD4+/CD45RO+ Memory": "CL:0000897",
    "CD8+/CD45RA+ Naive Cytotoxic": "CL:0000900",
    "CD4+/CD45RA+/CD25- Naive T": "CL:0000895",
    "CD34+": "CL:0008001",
}


def _hash(values: pd.Index | list[str], salt: str) -> np.ndarray:
    """A stable pseudo-random integer per value (SHA-256; CRC-32 would make differently salted hashes
    differ by a constant, so the derived columns would be correlated)."""
    digests = (hashlib.sha256(f"{salt}:{v}".encode()).digest() for v in values)
    return np.array([int.from_bytes(d[:6], "little") for d in digests], dtype=np.int64)


def fixture_feature_id(symbol: str) -> str:
    """A stable Ensembl-shaped id for a symbol that has no real one here (``ENSG9`` + 10 digits)."""
    return f"ENSG9{int(_hash([symbol], 'feature')[0]) % 10**10:010d}"


def census_like_anndata(ensembl_of: Mapping[str, str] | None = None) -> ad.AnnData:
    """pbmc68k_reduced's raw counts (float32 CSR, as in census ``X/raw``) with census obs and var columns."""
    from cellssl.store.sources import load_pbmc68k

    source = load_pbmc68k()
    cells = source.obs_names.astype(str)
    donor = _hash(cells, "donor") % N_DONORS
    dataset = _hash(cells, "dataset") % 2  # independent of the donor: donor_00 occurs in both data sets
    obs = pd.DataFrame(
        {
            "dataset_id": pd.Categorical(np.where(dataset == 0, "dataset-a", "dataset-b")),
            "donor_id": pd.Categorical([f"donor_{d:02d}" for d in donor]),
            "assay": pd.Categorical(np.where(_hash(cells, "assay") % 5 == 0, ASSAY_EXCLUDED, ASSAY_INCLUDED)),
            "cell_type": pd.Categorical(source.obs["bulk_labels"].astype(str)),
            "cell_type_ontology_term_id": pd.Categorical(source.obs["bulk_labels"].astype(str).map(_ONTOLOGY)),
            "is_primary_data": _hash(cells, "primary") % 8 != 0,
            "tissue_general": pd.Categorical(np.where(_hash(cells, "tissue") % 4 == 0, "bone marrow", "blood")),
            "disease": pd.Categorical(["normal"] * len(cells)),
        },
        index=pd.Index(cells, name=None),
    )
    symbols = source.var_names.astype(str)
    ensembl_of = ensembl_of or {}
    feature_id = [ensembl_of.get(s) or fixture_feature_id(s) for s in symbols]
    var = pd.DataFrame({"feature_id": feature_id, "feature_name": symbols}, index=pd.Index(feature_id))
    return ad.AnnData(X=sp.csr_matrix(source.X, dtype=np.float32), obs=obs, var=var)


def write_census_fixture(root: str | Path, adata: ad.AnnData | None = None) -> tuple[str, ad.AnnData]:
    """Write ``adata`` (default :func:`census_like_anndata`) as a census-shaped SOMA collection at ``root``.

    Returns the collection's URI and the AnnData written: its row ``i`` has ``soma_joinid`` ``i``.
    """
    import pyarrow as pa
    import tiledbsoma
    import tiledbsoma.io

    adata = census_like_anndata() if adata is None else adata
    root = Path(root)
    experiment_uri = str(root / "census_data" / "homo_sapiens")
    with tiledbsoma.Collection.create(str(root)) as census:
        info = census.add_new_collection("census_info")
        schema = pa.schema([("label", pa.large_string()), ("value", pa.large_string())])
        with info.add_new_dataframe("summary", schema=schema, domain=[(0, 1)]) as summary:
            summary.write(
                pa.table(
                    {
                        "soma_joinid": pa.array([0, 1], type=pa.int64()),
                        "label": ["census_schema_version", "census_build_date"],
                        "value": ["fixture", "pbmc68k_reduced"],
                    }
                )
            )
        data = census.add_new_collection("census_data")
        tiledbsoma.io.from_anndata(experiment_uri, adata, measurement_name="RNA", X_layer_name="raw")
        with tiledbsoma.Experiment.open(experiment_uri) as experiment:
            data.set("homo_sapiens", experiment, use_relative_uri=True)
    return str(root), adata
