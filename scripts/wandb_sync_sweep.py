"""Upload a sweep's offline W&B runs, several at a time (``wandb sync`` takes one run after another, W&B #10220).

    python scripts/wandb_sync_sweep.py logs/train/multiruns/<sweep> --jobs 8
    python scripts/wandb_sync_sweep.py logs/train/multiruns/<sweep> --dry-run     # what would be synced

Finds every ``offline-run-*`` folder below the directory and runs ``wandb sync`` on each W&B run, ``--jobs`` runs
at a time. A run requeued after a preemption has one folder per segment (same run id): they go to one
``wandb sync`` call, oldest first, so its history arrives in order. Runs whose every folder ``wandb sync``
already marked as synced (``run-<id>.wandb.synced``) are skipped unless ``--include-synced``. One line per run
(ok / FAILED with the last line of its output); the exit status is 1 if any run failed.
``--command`` replaces ``wandb sync`` (e.g. ``"wandb sync --project other"``); the folders are appended to it.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def runs_below(directory: Path, include_synced: bool = False) -> dict[str, list[Path]]:
    """Run id -> its ``offline-run-<time>-<id>`` folders below ``directory``, oldest first."""
    runs: dict[str, list[Path]] = defaultdict(list)
    for folder in sorted(directory.rglob("offline-run-*"), key=lambda p: p.name):
        if folder.is_dir():
            runs[folder.name.rsplit("-", 1)[1]].append(folder)
    if include_synced:
        return dict(runs)
    return {rid: folders for rid, folders in runs.items() if not all(_synced(f) for f in folders)}


def _synced(folder: Path) -> bool:
    return any(folder.glob("*.wandb.synced"))


def sync(command: list[str], run_id: str, folders: list[Path]) -> tuple[str, bool, str]:
    """Run ``command folders...``; (run id, whether it succeeded, the last line of its output)."""
    result = subprocess.run([*command, *map(str, folders)], capture_output=True, text=True)
    lines = (result.stdout + result.stderr).strip().splitlines()
    last = lines[-1] if lines else ""
    return run_id, result.returncode == 0, last if result.returncode == 0 else f"exit {result.returncode}: {last}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path, help="a sweep (or run) directory holding offline W&B runs")
    parser.add_argument("-j", "--jobs", type=int, default=4, help="runs synced at the same time (default 4)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--include-synced", action="store_true", help="also runs wandb sync marked as synced")
    parser.add_argument("--command", default="wandb sync", help="the sync command (default: wandb sync)")
    args = parser.parse_args(argv)
    if not args.directory.is_dir() or args.jobs < 1:
        problem = "--jobs: must be at least 1" if args.directory.is_dir() else "no such directory"
        print(f"error: {args.directory}: {problem}", file=sys.stderr)
        return 2
    command = shlex.split(args.command)
    runs = runs_below(args.directory, args.include_synced)
    print(f"{len(runs)} W&B run(s) to sync below {args.directory}", flush=True)
    if args.dry_run:
        for folders in runs.values():
            print(shlex.join([*command, *map(str, folders)]))
        return 0
    failed = 0
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        jobs = [pool.submit(sync, command, rid, folders) for rid, folders in runs.items()]
        for job in jobs:
            run_id, ok, last = job.result()
            failed += not ok
            print(f"{'ok' if ok else 'FAILED'} {run_id} ({len(runs[run_id])} folder(s)): {last}", flush=True)
    print(f"{len(runs) - failed} synced, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
