"""What every pretraining method shares: on-device normalisation and checkpoints that rebuild themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import Tensor

from cellssl.data.normalize import densify, log_normalize


class PretrainingModule(L.LightningModule):
    """Base LightningModule: batches arrive as sparse CSR counts and are normalised on the model's device.

    ``model_config`` is the plain (resolved) config the model was instantiated from; it is stored in
    every checkpoint so :func:`load_pretrained` can rebuild the model without unpickling Python objects.
    """

    def __init__(self, n_genes: int, target_sum: float = 1e4) -> None:
        super().__init__()
        self.n_genes, self.target_sum = n_genes, target_sum
        self.model_config: dict[str, Any] | None = None

    def normalized(self, batch: dict[str, Tensor]) -> Tensor:
        """Log-normalised dense expression of a sparse batch, on the batch's device."""
        return log_normalize(densify(batch), self.target_sum)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cellssl"] = {"model_config": self.model_config, "n_genes": self.n_genes}


def load_pretrained(path: str | Path, map_location: str | torch.device = "cpu") -> PretrainingModule:
    """Rebuild a model from a cellssl checkpoint (its stored config) and load its weights."""
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    meta = checkpoint.get("cellssl") or {}
    if not meta.get("model_config"):
        raise ValueError(f"{path}: no cellssl model config in this checkpoint; was it written by cellssl-train?")
    model = instantiate(meta["model_config"], n_genes=meta["n_genes"])
    model.load_state_dict(checkpoint["state_dict"])
    model.model_config = meta["model_config"]
    return model.eval()
