"""Read an offline W&B run back (for tests, audits, reports and resumes without network).

A run's ``run-<id>.wandb`` file is W&B's transaction log: a LevelDB log
(https://github.com/google/leveldb/blob/main/doc/log_format.md; IEEE CRC-32, 32 KiB blocks) of
``wandb.proto`` ``Record`` messages behind a 7-byte header. The reader of the log framing is hand-written
because W&B has no public one that every supported release ships: ``wandb.sdk.internal.datastore`` (a private
module) is gone from the wheels after 0.22, and ``wandb leet inspect --json`` (0.31) is absent from older ones.
The records themselves are parsed with W&B's own protobufs (``wandb.proto.wandb_internal_pb2``, in every release).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellssl.store.validation import InputError

# file header: ident, magic (0xBEE1), version (0); each fragment: CRC-32 of type + data, data length, type
HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
FRAGMENT = struct.Struct("<IHB")
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline ``.wandb`` file holds: run id, project, config, history rows and summary.

    ``finished``: the run's exit record is there (``finish()`` ran); a run still running or killed has none, and
    W&B keeps the newest part of its log (up to one 32 KiB block) in memory until then.
    """

    run_id: str
    project: str
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    finished: bool = False


def _fragments(data: bytes, path: Path) -> Iterator[tuple[int, bytes]]:
    """(type, data) of each fragment after the header; stops at a torn tail (a run still writing, or killed)."""
    pos = len(HEADER)
    while pos + FRAGMENT.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < FRAGMENT.size:  # a block's zero trailer: too short for a fragment header
            pos += left
            continue
        checksum, length, kind = FRAGMENT.unpack_from(data, pos)
        chunk = data[pos + FRAGMENT.size : pos + FRAGMENT.size + length]
        if len(chunk) < length:
            return
        if kind not in (FULL, FIRST, MIDDLE, LAST) or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != checksum:
            raise InputError(str(path), f"record at byte {pos}", "checksum mismatch (corrupt file)", "restore it")
        yield kind, chunk
        pos += FRAGMENT.size + length


def records(path: str | Path) -> Iterator[Any]:
    """The ``wandb_internal_pb2.Record`` messages of a ``.wandb`` file, in the order they were written."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    data = path.read_bytes()
    if data[: len(HEADER)] != HEADER[: len(data)]:
        raise InputError(str(path), "header", "not a W&B transaction log", "pass an offline-run-* folder")
    parts: list[bytes] = []
    for kind, chunk in _fragments(data, path):
        parts = [chunk] if kind in (FULL, FIRST) else [*parts, chunk]
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            yield record


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _values(items: Any) -> dict[str, Any]:
    return {_key(i): json.loads(i.value_json) for i in items}


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Parse ``run_dir/run-<id>.wandb`` (an ``offline-run-*`` folder), also while its run is still running."""
    files = sorted(Path(run_dir).glob("*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no .wandb file; is this an offline-run-* folder?")
    run = OfflineRun(run_id="", project="")
    for record in records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":  # the config given to wandb.init, in the log's first record
            run.run_id, run.project = record.run.run_id, record.run.project
            run.config.update(_values(record.run.config.update))
        elif kind == "config":
            run.config.update(_values(record.config.update))
        elif kind == "history":
            run.history.append(_values(record.history.item))
        elif kind == "summary":
            run.summary.update(_values(record.summary.update))
        elif kind == "exit":
            run.finished = True
    return run


def offline_runs(wandb_dir: str | Path) -> list[Path]:
    """The ``offline-run-*`` folders under a ``wandb/`` directory, oldest first (their names start with the time)."""
    return sorted(p for p in Path(wandb_dir).glob("offline-run-*") if p.is_dir())
