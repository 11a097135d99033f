"""Nothing lost: `cellssl-prepare` (in process, through its exit-on-input-error wrapper) replaces only a cellssl
store, never writes onto or around its input, refuses unwritable outputs with one line, and ``atomic_output``
replaces only what cellssl writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import zarr
from hydra import compose

from cellssl.store import CellStore, InputError
from cellssl.tasks.common import atomic_output
from cellssl.tasks.prepare import prepare


def small_h5ad(path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.poisson(1.0, (40, 12)).astype(np.float32)
    x[:, 0] += 1
    adata = ad.AnnData(sp.csr_matrix(x), obs=pd.DataFrame(index=[f"c{i}" for i in range(40)]))
    adata.var_names = [f"G{i}" for i in range(12)]
    adata.write_h5ad(path)
    return path


@pytest.fixture
def source(tmp_path) -> Path:
    return small_h5ad(tmp_path / "in.h5ad")


def run_prepare(source: Path, output: Path, *overrides: str) -> str:
    """Run ``prepare`` in process; the output path on success."""
    cfg = compose(
        "prepare", overrides=[f"source={source}", f"output={output}", "chunk_size=64", "shard_size=256", *overrides]
    )
    return prepare(cfg)


def refused(capsys, source: Path, output: Path, *overrides: str) -> str:
    """Run ``prepare`` expecting exit status 2; its one line of error."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_prepare(source, output, *overrides)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name or ".buckets-" in p.name]


def test_overwrite_refuses_a_folder_of_other_files(hydra_conf, capsys, tmp_path, source):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "important.txt").write_text("keep")
    line = refused(capsys, source, folder, "overwrite=true")
    assert str(folder) in line and "a folder that is not a store (1 entries)" in line and "replaces only" in line
    assert (folder / "important.txt").read_text() == "keep"
    no_leftovers(tmp_path)


def test_without_overwrite_the_refusal_says_what_is_there(hydra_conf, capsys, tmp_path, source):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "important.txt").write_text("keep")
    line = refused(capsys, source, folder)
    assert "a folder that is not a store (1 entries) already exists here" in line
    assert "a store already exists" not in line


@pytest.mark.parametrize("kind", ["foreign zarr", "file"])
def test_overwrite_refuses_other_things(hydra_conf, capsys, tmp_path, source, kind):
    target = tmp_path / "t.zarr"
    if kind == "file":
        target.write_text("keep")
    else:
        zarr.open_group(target, mode="w", zarr_format=3).create_array("a", shape=(3,), dtype="i4")
    before = sorted(p.relative_to(target) for p in target.rglob("*")) if target.is_dir() else target.read_text()
    line = refused(capsys, source, target, "overwrite=true")
    assert ("a file" if kind == "file" else "a Zarr store not written by cellssl") in line
    after = sorted(p.relative_to(target) for p in target.rglob("*")) if target.is_dir() else target.read_text()
    assert before == after


@pytest.mark.parametrize("existing", ["cellssl store", "empty folder"])
def test_overwrite_replaces_a_cellssl_store_or_an_empty_folder(hydra_conf, tmp_path, source, existing):
    target = tmp_path / "s.zarr"
    if existing == "empty folder":
        target.mkdir()
    else:
        run_prepare(source, target, "seed=1")
    run_prepare(source, target, "overwrite=true", "seed=2")
    assert CellStore(target).metadata["seed"] == 2
    no_leftovers(tmp_path)


def test_the_output_is_never_the_input(hydra_conf, capsys, tmp_path, source):
    before = source.read_bytes()
    line = refused(capsys, source, source, "overwrite=true")
    assert "is the input" in line
    assert source.read_bytes() == before
    no_leftovers(tmp_path)


def test_the_output_is_never_inside_the_input(hydra_conf, capsys, tmp_path, source):
    assert "lies inside the input" in refused(capsys, source, source / "out.zarr", "overwrite=true")


def test_the_output_never_contains_the_input(hydra_conf, capsys, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    source = small_h5ad(folder / "in.h5ad")
    assert "contains the input" in refused(capsys, source, folder, "overwrite=true")
    assert source.is_file()


def test_an_output_whose_parent_is_a_file_is_one_line(hydra_conf, capsys, tmp_path, source):
    parent = tmp_path / "f"
    parent.write_text("keep")
    line = refused(capsys, source, parent / "sub" / "out.zarr")
    assert f"its parent {parent} is a file" in line and parent.read_text() == "keep"


def test_an_unwritable_output_is_one_line(hydra_conf, capsys, source):
    assert "cannot write in /proc" in refused(capsys, source, Path("/proc/cellssl-out.zarr"))
    assert not Path("/proc/cellssl-out.zarr").exists()


def test_synthetic_refuses_a_folder_of_other_files_too(hydra_conf, capsys, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "important.txt").write_text("keep")
    assert "not a store" in refused(capsys, "synthetic", folder, "overwrite=true", "synthetic.n_cells=50")
    assert (folder / "important.txt").exists()


# -- the store's metadata, checked on open ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from cellssl.store import prepare_store

    folder = tmp_path_factory.mktemp("meta")
    return prepare_store(small_h5ad(folder / "in.h5ad"), folder / "s.zarr", chunk_size=64, shard_size=256)


def with_metadata(store: Path, tmp_path: Path, edit) -> Path:
    """A copy of ``store`` whose ``uns/cellssl/metadata_json`` is ``edit(text)``."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    array = zarr.open_group(copy, mode="r+")["uns/cellssl/metadata_json"]
    array[()] = edit(str(array[()]))
    return copy


def edit_json(**changes):
    def edit(text: str) -> str:
        return json.dumps({**json.loads(text), **changes})

    return edit


def test_a_newer_format_version_is_refused_naming_both_versions(store, tmp_path):
    with pytest.raises(InputError, match=r"format version 99, this cellssl reads up to version 2.*upgrade cellssl"):
        CellStore(with_metadata(store, tmp_path, edit_json(format_version=99)))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text[: len(text) // 2], "metadata_json: unreadable"),
        (lambda text: "[1, 2]", "not a JSON object"),
        (edit_json(format_version=None), "format_version: missing or invalid"),
        (edit_json(format_version="2"), "format_version: missing or invalid"),
        (edit_json(n_cells=-1), "n_cells: missing or invalid"),
        (edit_json(split_counts=None), "split_counts: missing or invalid"),
        (edit_json(nnz=1), r"X/data: shape .* do not match the metadata"),
        (edit_json(count_dtype="float64"), r"X/data: shape .* do not match the metadata"),
    ],
)
def test_bad_metadata_is_one_line(store, tmp_path, edit, message):
    with pytest.raises(InputError, match=message):
        CellStore(with_metadata(store, tmp_path, edit)).read_rows(0, 1)


def test_missing_metadata_is_one_line(store, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    shutil.rmtree(copy / "uns" / "cellssl" / "metadata_json")
    with pytest.raises(InputError, match="metadata_json: unreadable"):
        CellStore(copy)


def test_a_damaged_root_zarr_json_is_one_line(store, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    (copy / "zarr.json").write_text("{not json")
    with pytest.raises(InputError, match=r"zarr\.json: unreadable"):
        CellStore(copy)


# -- atomic_output: the tasks' files (embeddings, figures) ----------------------------------------------------------


def test_atomic_output_never_replaces_a_folder_of_other_files(tmp_path):
    folder = tmp_path / "out.h5ad"
    folder.mkdir()
    (folder / "important.txt").write_text("keep")
    with pytest.raises(InputError, match="replaces only a cellssl store"), atomic_output(folder, overwrite=True) as tmp:
        tmp.write_text("new")
    assert (folder / "important.txt").read_text() == "keep"
    no_leftovers(tmp_path)


def test_atomic_output_replaces_a_file_only_when_told(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(InputError, match="a file already exists here"), atomic_output(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "old"
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new"
    no_leftovers(tmp_path)


def test_atomic_output_refuses_a_parent_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("keep")
    with pytest.raises(InputError, match="is a file"), atomic_output(tmp_path / "f" / "out.txt") as tmp:
        tmp.write_text("new")


def test_only_the_kernels_folders_are_refused_by_name(tmp_path):
    from cellssl.store.output import check_output

    assert check_output(tmp_path / "proc" / "out.zarr", overwrite=False) == tmp_path / "proc" / "out.zarr"
    with pytest.raises(InputError, match="cannot write in /sys"):
        check_output("/sys/out.zarr", overwrite=False)
