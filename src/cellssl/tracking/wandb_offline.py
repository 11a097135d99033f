"""Read an offline W&B run back with W&B's own record reader (for tests, audits and reports without network)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class OfflineRun:
    """What an offline ``.wandb`` file holds: run id, project, config, history rows and summary."""

    run_id: str
    project: str
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Parse ``run_dir/run-<id>.wandb`` (an ``offline-run-*`` folder) with ``wandb``'s DataStore."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal import datastore

    files = sorted(Path(run_dir).glob("*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no .wandb file; is this an offline-run-* folder?")
    store = datastore.DataStore()
    store.open_for_scan(str(files[0]))
    run = OfflineRun(run_id="", project="")
    while (data := store.scan_data()) is not None:
        record = pb.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.project = record.run.run_id, record.run.project
        elif kind == "config":
            run.config.update({_key(u): json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run.summary.update({_key(u): json.loads(u.value_json) for u in record.summary.update})
    return run


def offline_runs(wandb_dir: str | Path) -> list[Path]:
    """The ``offline-run-*`` folders under a ``wandb/`` directory."""
    return sorted(Path(wandb_dir).glob("offline-run-*"))
