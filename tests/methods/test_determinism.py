"""Results hold for a fixed seed and thread count: two runs of the same config give the same losses and scores,
and every metrics.json says how many threads produced it (results differ across thread counts)."""

from __future__ import annotations

import torch


def test_same_seed_and_threads_give_identical_results_and_the_thread_count_is_recorded(train_in_process):
    overrides = [
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=4",
        "+trainer.limit_val_batches=1",
        "ckpt_path=null",
    ]
    overrides.append("seed=3")  # each run starts afresh in the same folder (no resume)
    first, second = train_in_process(*overrides), train_in_process(*overrides)
    assert first["train/loss_history"] == second["train/loss_history"]
    scores = [k for k in first if k.startswith(("knn/", "reconstruction"))]
    assert scores and all(first[k] == second[k] for k in scores)
    assert first["env/torch_threads"] == torch.get_num_threads() and first["env/cpus"] >= 1
    other_seed = train_in_process(*overrides[:-1], "seed=4")
    assert other_seed["train/loss_history"] != first["train/loss_history"]
