"""Test-only helpers. ``tests/`` is put on the ``PYTHONPATH`` of the apps the tests start (``run_app``, the SLURM
jobs), so a subprocess config can name them: ``+callbacks.crash._target_=helpers.callbacks.CrashAfterSteps``."""

import os
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]


def with_tests_on_path(env: dict[str, str]) -> dict[str, str]:
    """``env`` with ``tests/`` first on ``PYTHONPATH`` (kept: what was there, e.g. a source tree)."""
    paths = [str(TESTS_DIR), *filter(None, [env.get("PYTHONPATH")])]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


def recipe_app(recipe: str) -> str:
    """The primary config an ``experiment=`` recipe belongs to: ``finetune`` for the fine-tuning sweeps (their
    header names ``cellssl-finetune``), else ``train``."""
    text = (TESTS_DIR.parent / "conf" / "experiment" / f"{recipe}.yaml").read_text()
    return "finetune" if "cellssl-finetune -m experiment=" in text else "train"
