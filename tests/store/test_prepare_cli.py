"""`cellssl-prepare`: good input writes a store; bad input exits non-zero with one line and leaves nothing."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp


def make_h5ad(path, mutate=None):
    rng = np.random.default_rng(0)
    x = rng.poisson(1.0, size=(60, 20)).astype(np.float32)
    x[:, 0] += 1  # no empty cells
    obs = pd.DataFrame(
        {"cell_type": rng.choice(["T", "B", "NK"], 60), "donor": rng.choice(list("abcdef"), 60)},
        index=[f"cell{i}" for i in range(60)],
    )
    var = pd.DataFrame(index=[f"G{i}" for i in range(20)])
    if mutate:
        x, var = mutate(x, var)
    ad.AnnData(sp.csr_matrix(x), obs=obs, var=var).write_h5ad(path)
    return path


def with_value(value):
    def mutate(x, var):
        x[5, 3] = value
        return x, var

    return mutate


def duplicate_genes(x, var):
    var.index = [*var.index[:-1], var.index[0]]
    return x, var


def test_prepare_h5ad_donor_wise(run_app, tmp_path):
    source = make_h5ad(tmp_path / "in.h5ad")
    out = tmp_path / "out.zarr"
    run_app(
        "cellssl-prepare",
        f"source={source}",
        f"output={out}",
        "label_columns=[cell_type]",
        "donor_column=donor",
    )
    stored = ad.io.read_zarr(out)
    assert stored.shape == (60, 20)
    assert (stored.obs.groupby("donor", observed=True)["split"].nunique() == 1).all()
    original = ad.read_h5ad(source)[stored.obs_names]
    assert (sp.csr_matrix(stored.X, dtype=np.float32) != original.X).nnz == 0


BAD_INPUTS = {
    "missing file": (None, [], "file not found"),
    "NaN": (with_value(np.nan), [], "NaN or infinite"),
    "negative": (with_value(-1.0), [], "negative values"),
    "non-integer": (with_value(0.5), [], "non-integer values"),
    "duplicated genes": (duplicate_genes, [], "duplicated gene names"),
    "missing label column": (None, ["label_columns=[celltype]"], "obs['celltype']: no such column"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_with_one_line_and_leaves_no_store(run_app, tmp_path, case):
    mutate, extra, message = BAD_INPUTS[case]
    source = tmp_path / "in.h5ad"
    if case != "missing file":
        make_h5ad(source, mutate)
    out = tmp_path / "out.zarr"
    result = run_app(
        "cellssl-prepare",
        f"source={source}",
        f"output={out}",
        "label_columns=[cell_type]",
        *extra,
        check=False,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert message in errors[0] and str(source) in errors[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
