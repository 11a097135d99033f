"""The fuzzers' strategies and oracles, shared by ``tests/test_reliability_fuzz.py`` (a small, derandomised budget
in CI) and ``scripts/fuzz.py`` (long runs).

Inputs: random AnnData (dense, CSR, CSC; in memory or written to `.h5ad` and read backed; integer and float types;
NaN, Inf, negatives and fractions at random places; duplicated, empty and non-string gene names; empty cells and
genes; categorical, object and numeric obs columns; label columns that may not exist). ``prepare`` either writes a
store that anndata reads back equal to the source (less the empty cells it drops, which it counts) or exits with
status 2, one line and nothing at the target. Files go through the app itself (``cellssl.tasks.prepare.prepare``
on a composed config), objects in memory through the API it calls, in the app's ``exit_on_input_error``.

Stores: a good store damaged at random (files under ``X/`` deleted, truncated or bit-flipped; its arrays' or the
store's metadata edited). Reading every row either gives the original rows exactly or raises
:class:`~cellssl.store.InputError` naming the array; never silent wrong values, never another exception.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr
from hydra import compose
from hypothesis import assume
from hypothesis import strategies as st
from omegaconf import DictConfig

from cellssl.store import CellStore, InputError, prepare_store
from cellssl.tasks.common import exit_on_input_error
from cellssl.tasks.prepare import prepare

LAYOUTS = ("dense", "csr", "csc")
DTYPES = ("int8", "int32", "uint16", "float32", "float64")
SPECIALS = (np.nan, np.inf, -np.inf, -1.0, -3.0, 0.5, 2.25, 70_000.0, 0.0)
GENE_NAMES = ("unique", "duplicated", "empty", "non-string")


@dataclass
class Case:
    """One generated input: the AnnData, how it reaches ``prepare``, and the options."""

    adata: ad.AnnData
    backed: bool
    layout: str
    label_columns: list[str]
    normalised: bool
    explicit_zeros: bool = False
    notes: dict[str, Any] = field(default_factory=dict)


def _matrix(draw: st.DrawFn, n_cells: int, n_genes: int) -> tuple[np.ndarray, str]:
    dtype = draw(st.sampled_from(DTYPES))
    rate = draw(st.sampled_from([0.0, 0.3, 2.0]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    values = rng.poisson(rate, (n_cells, n_genes)).astype(np.float64)
    for _ in range(draw(st.integers(0, 3)) if values.size else 0):
        special = draw(st.sampled_from(SPECIALS))
        values[draw(st.integers(0, n_cells - 1)), draw(st.integers(0, n_genes - 1))] = special
    if draw(st.booleans()) and n_cells:  # an empty cell
        values[draw(st.integers(0, n_cells - 1))] = 0
    if draw(st.booleans()) and n_genes:  # an empty gene
        values[:, draw(st.integers(0, n_genes - 1))] = 0
    if np.dtype(dtype).kind in "iu":  # integers hold no NaN/Inf/fractions: what does not fit is skipped
        info = np.iinfo(dtype)
        if not (np.isfinite(values).all() and (values == np.round(values)).all()):
            values = np.nan_to_num(np.round(values), nan=0, posinf=info.max, neginf=info.min)
        values = np.clip(values, info.min, info.max)
    return values.astype(dtype), dtype


def _gene_names(draw: st.DrawFn, n_genes: int, backed: bool) -> list[Any]:
    kind = draw(st.sampled_from(GENE_NAMES if not backed else GENE_NAMES[:3]))
    names: list[Any] = [f"G{i}" for i in range(n_genes)]
    if kind == "duplicated" and n_genes > 1:
        names[-1] = names[0]
    elif kind == "empty" and n_genes:
        names[draw(st.integers(0, n_genes - 1))] = ""
    elif kind == "non-string" and n_genes:
        names[draw(st.integers(0, n_genes - 1))] = draw(st.sampled_from([7, 2.5, None]))
    return names


def _obs(draw: st.DrawFn, n_cells: int) -> pd.DataFrame:
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    columns = {
        "cat": pd.Categorical(rng.choice(["T", "B"], n_cells)),
        "obj": np.array(rng.choice(["x", "y", "z"], n_cells), dtype=object),
        "num": rng.integers(0, 3, n_cells),
        "flt": rng.random(n_cells),
    }
    obs = pd.DataFrame(columns, index=[f"c{i}" for i in range(n_cells)])
    if n_cells and draw(st.booleans()):  # a missing value in a label column
        column = draw(st.sampled_from(["cat", "obj", "flt"]))
        obs.loc[obs.index[draw(st.integers(0, n_cells - 1))], column] = np.nan
    return obs


@st.composite
def anndata_cases(draw: st.DrawFn) -> Case:
    """A random input for ``prepare``."""
    n_cells, n_genes = draw(st.integers(0, 12)), draw(st.integers(0, 8))
    backed = draw(st.booleans())
    layout = draw(st.sampled_from(LAYOUTS))
    values, dtype = _matrix(draw, n_cells, n_genes)
    explicit_zeros = layout != "dense" and draw(st.booleans())
    if layout == "dense":
        x: Any = values
    else:
        x = sp.csr_matrix(values) if layout == "csr" else sp.csc_matrix(values)
        if explicit_zeros and values.size:  # a stored zero where there is no value
            zeros = np.argwhere(values == 0)
            if len(zeros):
                row, col = zeros[draw(st.integers(0, len(zeros) - 1))]
                coo = x.tocoo()
                entries = (np.r_[coo.data, 0].astype(coo.dtype), (np.r_[coo.row, row], np.r_[coo.col, col]))
                x = (sp.csr_matrix if layout == "csr" else sp.csc_matrix)(entries, shape=values.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = ad.AnnData(x, obs=_obs(draw, n_cells))
        adata.var_names = pd.Index(_gene_names(draw, n_genes, backed), dtype=object)
    label_columns = draw(st.lists(st.sampled_from(["cat", "obj", "num", "flt", "missing"]), max_size=2, unique=True))
    chunking = {"chunk_rows": draw(st.sampled_from([3, 16_384])), "memory_mb": draw(st.sampled_from([64, 1e-4]))}
    notes = {"dtype": dtype, **chunking}
    return Case(adata, backed, layout, label_columns, draw(st.booleans()), explicit_zeros, notes)


def run_prepare(case: Case, folder: Path) -> tuple[int, str, Path]:
    """``prepare`` of ``case`` through the apps' error wrapper: ``(exit status, stderr, output path)``."""
    output = folder / "out.zarr"
    source: Any = case.adata
    if case.backed:
        source = folder / "in.h5ad"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                case.adata.write_h5ad(source)
        except Exception:  # anndata cannot write it: not an input cellssl can be given as a file
            assume(False)

    @exit_on_input_error
    def in_memory(_: Any) -> Path:  # the app's wrapper around the API the app calls, for objects in memory
        options = {"label_columns": case.label_columns, "normalised": case.normalised, "progress": False}
        chunking = {"chunk_rows": case.notes["chunk_rows"], "memory_mb": case.notes["memory_mb"]}
        return prepare_store(source, output, chunk_size=16, shard_size=64, **chunking, **options)

    errors = StringIO()
    with redirect_stderr(errors), redirect_stdout(StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if case.backed:  # files: the app itself, on a composed config
                prepare(prepare_config(case, source, output))
            else:
                in_memory(None)
            status = 0
        except SystemExit as exit_:
            status = int(exit_.code)
    return status, errors.getvalue(), output


def prepare_config(case: Case, source: Path, output: Path) -> DictConfig:
    """``cellssl-prepare``'s config for ``case`` (Hydra's compose API must be initialised on the project's configs)."""
    overrides = [
        f"source={source}",
        f"output={output}",
        f"label_columns=[{','.join(case.label_columns)}]",
        f"normalised={str(case.normalised).lower()}",
        f"chunk_rows={case.notes['chunk_rows']}",
        f"memory_mb={case.notes['memory_mb']}",
        "chunk_size=16",
        "shard_size=64",
    ]
    return compose("prepare", overrides=overrides)


def check_prepare(case: Case) -> str:
    """The oracle for one input; returns ``"written"`` or ``"refused"``."""
    with tempfile.TemporaryDirectory(prefix="cellssl-fuzz-") as tmp:
        folder = Path(tmp)
        status, stderr, output = run_prepare(case, folder)
        leftovers = [p.name for p in folder.iterdir() if p.name not in ("in.h5ad", "out.zarr")]
        assert not leftovers, leftovers
        if status == 2:
            errors = [line for line in stderr.splitlines() if line.startswith("error: ")]  # besides log warnings
            assert len(errors) == 1 and "Traceback" not in stderr, stderr
            assert not output.exists()
            return "refused"
        assert status == 0, stderr
        check_store_equals_source(output, case)
        return "written"


def _dense(matrix: Any) -> np.ndarray:
    return np.asarray(matrix.toarray() if sp.issparse(matrix) else matrix, dtype=np.float64)


def check_store_equals_source(output: Path, case: Case) -> None:
    """The store, read by anndata, equals the source less its empty cells (and says how many it dropped)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stored = ad.io.read_zarr(output)
    source = _dense(case.adata.X)
    if case.normalised:  # normalised values are stored as float32 (docs/store-format.md): compared as such
        source = source.astype(np.float32).astype(np.float64)
    empty = (source == 0).all(axis=1)
    assert CellStore(output).metadata["dropped_empty_cells"] == int(empty.sum())
    assert stored.n_obs == int((~empty).sum())
    assert list(stored.var_names) == [str(g) for g in case.adata.var_names]
    rows = pd.Index(case.adata.obs_names).get_indexer(stored.obs_names)
    assert (rows >= 0).all() and not empty[rows].any()
    np.testing.assert_array_equal(_dense(stored.X), source[rows])
    for column in case.label_columns:
        expected = case.adata.obs[column].astype(str).to_numpy()[rows]
        assert (stored.obs[column].astype(str).to_numpy() == expected).all(), column


# -- damaged stores --------------------------------------------------------------------------------------------------

ARRAYS = ("data", "indices", "indptr")
DAMAGES = ("delete", "truncate", "flip", "edit array json", "edit store json")
ARRAY_EDITS = {
    "dtype": lambda meta: {
        **meta,
        "data_type": {"uint8": "int8", "int16": "uint16", "int64": "float64"}.get(meta["data_type"], "int32"),
    },
    "shape": lambda meta: {**meta, "shape": [max(meta["shape"][0] - 1, 0)]},
    "longer": lambda meta: {**meta, "shape": [meta["shape"][0] + 16]},
    "chunk": lambda meta: _inner(meta, lambda c: {**c, "chunk_shape": [c["chunk_shape"][0] // 2]}),
    "endian": lambda meta: _inner(meta, lambda c: {**c, "codecs": [_big(k) for k in c["codecs"]]}),
    "no crc": lambda meta: _inner(meta, lambda c: {**c, "codecs": [k for k in c["codecs"] if k["name"] != "crc32c"]}),
    "fill": lambda meta: {**meta, "fill_value": 3},
    "drop codecs": lambda meta: {k: v for k, v in meta.items() if k != "codecs"},
    "garbage": lambda meta: "{",
}
STORE_EDITS = {
    "n_cells": lambda meta: {**meta, "n_cells": meta["n_cells"] + 1},
    "nnz": lambda meta: {**meta, "nnz": meta["nnz"] - 1},
    "n_genes": lambda meta: {**meta, "n_genes": meta["n_genes"] + 1},
    "split_counts": lambda meta: {**meta, "split_counts": {**meta["split_counts"], "test": 0}},
    "count_dtype": lambda meta: {**meta, "count_dtype": "uint32"},
    "format_version": lambda meta: {**meta, "format_version": 99},
}


def _big(codec: dict[str, Any]) -> dict[str, Any]:
    return {"name": "bytes", "configuration": {"endian": "big"}} if codec["name"] == "bytes" else codec


def _inner(meta: dict[str, Any], change: Any) -> dict[str, Any]:
    """``meta`` with the sharding codec's configuration changed."""
    codecs = [
        {**c, "configuration": change(c["configuration"])} if c["name"] == "sharding_indexed" else c
        for c in meta["codecs"]
    ]
    return {**meta, "codecs": codecs}


@st.composite
def damages(draw: st.DrawFn, store: Path) -> tuple[str, str, Any]:
    """``(kind, where, how)``: one damage to apply to a copy of ``store``."""
    kind = draw(st.sampled_from(DAMAGES))
    if kind == "edit store json":
        return kind, "uns/cellssl/metadata_json", draw(st.sampled_from(sorted(STORE_EDITS)))
    array = draw(st.sampled_from(ARRAYS))
    if kind == "edit array json":
        return kind, f"X/{array}/zarr.json", draw(st.sampled_from(sorted(ARRAY_EDITS)))
    shards = sorted(str(p.relative_to(store)) for p in (store / "X" / array).rglob("*") if p.is_file())
    shards = [s for s in shards if not s.endswith("zarr.json")]
    where = draw(st.sampled_from(shards))
    size = (store / where).stat().st_size
    how = draw(st.integers(0, max(size - 1, 0))) if kind == "truncate" else draw(st.integers(0, 8 * size - 1))
    return kind, where, how


def damage(copy: Path, kind: str, where: str, how: Any) -> None:
    """Apply one damage to the store ``copy``."""
    path = copy / where
    if kind == "delete":
        path.unlink()
    elif kind == "truncate":
        path.write_bytes(path.read_bytes()[:how])
    elif kind == "flip":
        data = bytearray(path.read_bytes())
        data[how // 8] ^= 1 << (how % 8)
        path.write_bytes(bytes(data))
    elif kind == "edit array json":
        edited = ARRAY_EDITS[how](json.loads(path.read_text()))
        path.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    else:
        array = zarr.open_group(copy, mode="r+")["uns/cellssl/metadata_json"]
        array[()] = json.dumps(STORE_EDITS[how](json.loads(str(array[()]))))


def check_damaged_store(store: Path, expected: np.ndarray, kind: str, where: str, how: Any) -> str:
    """The oracle for one damage: every row read exactly, or an :class:`InputError` naming what is damaged."""
    with tempfile.TemporaryDirectory(prefix="cellssl-fuzz-") as tmp:
        copy = Path(tmp) / "store.zarr"
        shutil.copytree(store, copy)
        damage(copy, kind, where, how)
        try:
            reader = CellStore(copy)
            rows = [reader.read_rows(0, reader.n_cells)]
            rows += [reader.read_rows(i, i + 1) for i in range(0, reader.n_cells, 7)]
        except InputError as err:
            if kind in ("delete", "truncate", "flip", "edit array json"):
                array = where.rsplit("/", 1)[0] if kind == "edit array json" else "/".join(where.split("/")[:2])
                assert err.field == array, (err.field, where, str(err))
            if kind in ("delete", "truncate", "flip"):
                assert "chunk" in err.problem or "cannot open" in err.problem, str(err)
            return "refused"
        assert rows[0].shape == expected.shape, (kind, where, how)
        np.testing.assert_array_equal(rows[0].toarray(), expected, err_msg=f"{kind} {where} {how}: silent change")
        for i, row in zip(range(0, len(expected), 7), rows[1:], strict=True):
            np.testing.assert_array_equal(row.toarray()[0], expected[i], err_msg=f"{kind} {where} {how}: row {i}")
        return "read"


def small_store(folder: Path, n_cells: int = 60, n_genes: int = 40) -> tuple[Path, np.ndarray]:
    """A store spread over several shards (chunks of 16 entries, shards of 64) and its rows, as stored."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(0.8, (n_cells, n_genes)).astype(np.float32)
    counts[:, 0] += 1
    counts[0, 1] = 300  # uint16 values
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.var_names = [f"G{i}" for i in range(n_genes)]
    path = prepare_store(adata, folder / "store.zarr", chunk_size=16, shard_size=64, progress=False)
    store = CellStore(path)
    return path, store.read_rows(0, store.n_cells).toarray()
