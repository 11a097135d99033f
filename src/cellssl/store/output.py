"""Where outputs may go: never onto or around an input, and only over what cellssl wrote.

:func:`check_output` is asked before anything is written (and again just before the rename into place);
:func:`replace_path` swaps a finished temporary file or folder in. Together they guarantee that
``overwrite=true`` replaces a cellssl store (recognised by its ``uns/cellssl`` metadata) and nothing else: a
folder of the user's files, a foreign Zarr store or an input is refused with one line.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from cellssl.store.validation import InputError

OTHER_OUTPUT = "choose another output, or move it away yourself"
PSEUDO_FILESYSTEMS = ("proc", "sys")  # the kernel's: no store belongs there (/dev/shm may hold one)


def is_cellssl_store(path: Path) -> bool:
    """Whether ``path`` is a folder holding a cellssl store (a Zarr v3 group with ``uns/cellssl`` metadata)."""
    return (path / "zarr.json").is_file() and (path / "uns" / "cellssl" / "zarr.json").is_file()


def describe(path: Path) -> str:
    """What is at ``path``, in a user's words (for refusals)."""
    if path.is_symlink() and not path.exists():
        return "a broken link"
    if path.is_file():
        return "a file"
    if not path.is_dir():
        return "something that is neither a file nor a folder"
    if is_cellssl_store(path):
        return "a cellssl store"
    if (path / "zarr.json").is_file() or (path / ".zgroup").is_file() or (path / ".zarray").is_file():
        return "a Zarr store not written by cellssl"
    n_entries = sum(1 for _ in path.iterdir())
    return f"a folder that is not a store ({n_entries} entries)" if n_entries else "an empty folder"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_not_an_input(output: Path, inputs: Iterable[str | Path]) -> None:
    """The output must not be an input, lie inside one, or contain one."""
    for source in inputs:
        source = Path(source).resolve()
        if output == source:
            raise InputError(str(output), "output", "is the input", "give another output path")
        if _inside(output, source):
            raise InputError(str(output), "output", f"lies inside the input {source}", "give another output path")
        if _inside(source, output):
            raise InputError(str(output), "output", f"contains the input {source}", "give another output path")


def _check_parent(output: Path) -> None:
    """The nearest existing ancestor of ``output`` must be a folder we may write in."""
    ancestor = output.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(str(output), "output", f"its parent {ancestor} is a file", "give a path in a folder")
    pseudo = len(ancestor.parts) > 1 and ancestor.parts[1] in PSEUDO_FILESYSTEMS  # root may "write" there
    if pseudo or not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(str(output), "output", f"cannot write in {ancestor}", "give a writable path")


def check_output(
    output: str | Path, overwrite: bool, inputs: Iterable[str | Path] = (), replaceable: str = "store"
) -> Path:
    """Refuse an ``output`` that is (inside, around) an input, cannot be written, or holds something that may not
    be replaced: without ``overwrite`` anything; with it, anything but a cellssl store (``replaceable="store"``)
    or a file (``replaceable="file"``). An empty folder may be replaced. Returns the path as given."""
    path = Path(output)
    resolved = path.resolve()
    _check_not_an_input(resolved, inputs)
    _check_parent(resolved)
    if not (path.exists() or path.is_symlink()):
        return path
    what = describe(path)
    if not overwrite:
        fix = "remove it or pass overwrite=true" if what == "a cellssl store" else OTHER_OUTPUT
        raise InputError(str(path), "output", f"{what} already exists here", fix)
    allowed = {"store": ("a cellssl store", "an empty folder"), "file": ("a file",)}[replaceable]
    if what not in allowed:
        kind = "a cellssl store" if replaceable == "store" else "a file"
        raise InputError(str(path), "output", f"{what} is here, and overwrite=true replaces only {kind}", OTHER_OUTPUT)
    return path


def replace_path(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` to ``path``; an existing folder at ``path`` is moved aside first and removed
    after the swap (the caller has checked it may be replaced)."""
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
        try:
            tmp.rename(path)
        except BaseException:
            old.rename(path)  # put the old one back
            raise
        shutil.rmtree(old)
    else:
        tmp.replace(path)


def output_error(path: Path, err: OSError) -> InputError:
    """An operating-system error while writing ``path``, as one line."""
    return InputError(str(path), "output", f"cannot be written ({err.strerror or err})", "give a writable path")


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
