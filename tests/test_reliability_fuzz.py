"""The error contract, fuzzed (hypothesis; oracles in tests/helpers/fuzz.py): random AnnData through ``prepare``
either becomes a store equal to the source or one line and exit status 2; a randomly damaged store reads its
exact rows or raises InputError naming the array. A small, derandomised budget (about 30 s in all); longer runs:
``python scripts/fuzz.py --examples 2000``. Failures the fuzzers found are kept below as explicit examples."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cellssl.tasks import config_dir
from helpers import fuzz

PREPARE_EXAMPLES = 120
STORE_EXAMPLES = 150
FUZZ = {"deadline": None, "derandomize": True, "database": None, "suppress_health_check": [HealthCheck.too_slow]}


@pytest.fixture(scope="module", autouse=True)
def hydra_configs():
    """Hydra's compose API on the project's configs, for the whole module (``prepare`` of files runs the app)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def stored_zero_case(backed: bool) -> fuzz.Case:
    """Found by the fuzzer: a cell whose only stored entry is a zero was kept as a cell with counts (it is empty)."""
    x = sp.csr_matrix((np.array([0, 2], dtype=np.float32), (np.array([0, 1]), np.array([0, 1]))), shape=(2, 2))
    adata = ad.AnnData(x, obs=pd.DataFrame({"cat": ["a", "b"]}, index=["c0", "c1"]))
    adata.var_names = ["G0", "G1"]
    notes = {"dtype": "float32", "chunk_rows": 3, "memory_mb": 64}
    return fuzz.Case(adata, backed, "csr", ["cat"], False, True, notes)


def large_normalised_case() -> fuzz.Case:
    """Found by the fuzzer: normalised values are stored as float32, so 2**31 - 1 reads back as 2**31 (the format's
    contract for normalised data, which the oracle now compares in float32; counts are always exact)."""
    adata = ad.AnnData(np.array([[2**31 - 1]], dtype=np.int32), obs=pd.DataFrame(index=["c0"]))
    adata.var_names = ["G0"]
    return fuzz.Case(adata, False, "dense", [], True, False, {"dtype": "int32", "chunk_rows": 3, "memory_mb": 64})


@settings(max_examples=PREPARE_EXAMPLES, **FUZZ)
@given(fuzz.anndata_cases())
@example(stored_zero_case(backed=False))
@example(stored_zero_case(backed=True))
@example(large_normalised_case())
def test_prepare_writes_the_source_or_refuses_with_one_line(case):
    fuzz.check_prepare(case)


@pytest.mark.parametrize("backed", [False, True])
def test_a_cell_of_stored_zeros_is_dropped_and_counted(backed):
    assert fuzz.check_prepare(stored_zero_case(backed)) == "written"


@pytest.fixture(scope="module")
def good_store(tmp_path_factory):
    return fuzz.small_store(tmp_path_factory.mktemp("fuzz"))


@settings(
    max_examples=STORE_EXAMPLES,
    **FUZZ,
)
@given(data=st.data())
def test_a_damaged_store_reads_exactly_or_names_the_damage(good_store, data):
    store, expected = good_store
    fuzz.check_damaged_store(store, expected, *data.draw(fuzz.damages(store)))


@pytest.mark.parametrize(
    ("kind", "where", "how"),
    [
        # found by the fuzzer: big-endian indices decoded to column numbers far out of range, which scipy wrote
        # outside its buffer (the process died with "corrupted double-linked list")
        ("edit array json", "X/indices/zarr.json", "endian"),
        # found by the fuzzer: big-endian values read silently as other counts
        ("edit array json", "X/data/zarr.json", "endian"),
        # found by the fuzzer: a gene more in the metadata read every row one column wider
        ("edit store json", "uns/cellssl/metadata_json", "n_genes"),
        ("edit store json", "uns/cellssl/metadata_json", "format_version"),
        ("edit array json", "X/indptr/zarr.json", "garbage"),
    ],
)
def test_damage_the_fuzzer_found_is_refused(good_store, kind, where, how):
    store, expected = good_store
    assert fuzz.check_damaged_store(store, expected, kind, where, how) == "refused"
