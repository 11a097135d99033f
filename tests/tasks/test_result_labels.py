"""The apps name what they report on real checkpoints (the in-process ``checkpoints`` fixture): a fine-tuning
run's ``report_rows`` carry the pretraining's method, masking and checkpoint and the mode, and the UMAP title of
``cellssl-embed`` names the model and the checkpoint."""

from __future__ import annotations

import json

import cellssl
from cellssl.evaluation.identity import checkpoint_title


def test_finetune_rows_carry_the_pretraining_identity(checkpoints):
    metrics = json.loads((checkpoints["classifier"].parents[1] / "metrics.json").read_text())
    (row,) = metrics["report_rows"]
    assert (row["method"], row["masking"], row["mode"], row["split"]) == ("mae", "random 50%", "full", "test")
    assert row["checkpoint"] == str(checkpoints["mae"].absolute()) and row["experiment"] == ""
    assert row["pretrain_run"] == str(checkpoints["mae"].parents[1].absolute())
    assert 0 <= row["macro_f1"] <= 1 and metrics["run"]["label"] == "MAE random 50% · full"


def test_umap_title_names_the_model_and_the_checkpoint(checkpoints):
    title = checkpoint_title(cellssl.load(checkpoints["mae"], device="cpu"))
    assert title == f"MAE random 50% — {checkpoints['mae'].parents[1].name}/checkpoints/last.ckpt"
