"""docs/tutorial.ipynb executed as a user runs it (nbclient, a real Jupyter kernel), on small data, offline."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the tutorial test needs the dev extra (nbclient, nbformat)")
nbclient = pytest.importorskip("nbclient", reason="the tutorial test needs the dev extra (nbclient, nbformat)")

pytestmark = pytest.mark.slow
TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"


def _text(cell) -> str:
    return "".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", "")) for output in cell.outputs
    )


def test_tutorial_runs_from_h5ad_to_predictions(tmp_path, monkeypatch):
    notebook = nbformat.read(TUTORIAL, as_version=4)
    bin_dir = str(Path(sys.executable).parent)  # the apps the notebook calls with `!cellssl-...`
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CELLSSL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CELLSSL_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    work = tmp_path / "tutorial_work"
    assert (work / "pretrain" / "checkpoints" / "last.ckpt").is_file()
    assert (work / "finetune" / "checkpoints" / "last.ckpt").is_file()
    outputs = "\n".join(_text(cell) for cell in notebook.cells if cell.cell_type == "code")
    accuracy = float(re.search(r"accuracy against the held-back labels: ([0-9.]+)", outputs).group(1))
    assert accuracy > 0.5  # a classifier trained on 250 Ensembl-named cells annotates the symbol-named atlas
    images = [o for cell in notebook.cells for o in getattr(cell, "outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the two UMAPs
