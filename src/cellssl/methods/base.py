"""What every pretraining method shares: on-device normalisation, a per-stage loss log, and checkpoints that
rebuild themselves."""

from __future__ import annotations

import functools
import inspect
import math
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from cellssl.data.normalize import densify, normalized_dense
from cellssl.optim import LRSchedule


@runtime_checkable
class Reconstructs(Protocol):
    """A model that hides part of its input and predicts it: scored by masked-reconstruction explained variance,
    under its own masking or under a given one (``masking``: the common evaluation mask)."""

    def reconstruct(
        self, x: Tensor, generator: torch.Generator | None = None, masking: Callable | None = None
    ) -> tuple[Tensor, Tensor]: ...


class PretrainingModule(L.LightningModule):
    """Base LightningModule: batches arrive as sparse CSR counts and are normalised on the model's device.

    Subclasses expose ``encoder`` (genes → embedding; what evaluation embeds with) and implement
    :meth:`loss`. ``model_config`` is the plain (resolved) config the model was instantiated from and
    ``data_context`` what the data supplied (``n_genes``, ``gene_names``, ...); both are stored in every
    checkpoint so :func:`load_pretrained` can rebuild the model without unpickling Python objects.
    With ``compile`` the forward of every sub-network is compiled with :func:`torch.compile` when training starts
    (:meth:`configure_model`); parameter names, and so checkpoints, stay the same.
    ``optimizer`` is a factory taking the parameters (a Hydra ``_partial_``); :meth:`configure_optimizers` hands
    it :meth:`optimized_parameters`, the one hook a method overrides to keep parameters out of the optimiser, and
    the global batch size when the factory takes ``batch_size`` (LARS scales its rate by it). ``scheduler`` is an
    :class:`~cellssl.optim.LRSchedule` (``model/scheduler``: none, step, cosine); None keeps the rate constant.
    """

    encoder: nn.Module

    def __init__(
        self,
        n_genes: int,
        target_sum: float = 1e4,
        compile: bool = False,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
        scheduler: LRSchedule | None = None,
    ) -> None:
        super().__init__()
        self.n_genes, self.target_sum, self.compile_networks = n_genes, target_sum, compile
        self.optimizer_factory, self.scheduler = optimizer, scheduler
        self.model_config: dict[str, Any] | None = None
        self.data_context: dict[str, Any] = {"n_genes": n_genes}

    def optimized_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimiser updates: every one that requires grad (a frozen encoder's do not)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        """The configured optimiser (AdamW, LARS, ...) over :meth:`optimized_parameters`, with the configured
        learning-rate schedule when there is one."""
        factory = self.optimizer_factory
        batch_size = self._global_batch_size()
        if batch_size is not None and "batch_size" in inspect.signature(factory).parameters:
            factory = functools.partial(factory, batch_size=batch_size)
        optimizer = factory(self.optimized_parameters())
        if self.scheduler is None or self._trainer is None:
            return optimizer
        scheduler = self.scheduler.lightning_config(optimizer, self._schedule_lengths)
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _global_batch_size(self) -> int | None:
        """Cells per optimiser step over all ranks (the data module's batch, after any adaptation), when known."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        batch_size = getattr(datamodule, "batch_size", None)
        if not isinstance(batch_size, int):
            return None
        return batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def _schedule_lengths(self) -> tuple[int, int]:
        """Optimiser steps per epoch and in the whole run (``max_epochs`` or ``max_steps``, whichever ends first;
        ``limit_train_batches`` and gradient accumulation counted), as Lightning estimates them."""
        trainer = self.trainer
        total = trainer.estimated_stepping_batches  # sets up the train loader: num_training_batches is known
        per_epoch = trainer.num_training_batches / trainer.accumulate_grad_batches
        if not math.isfinite(total) or not math.isfinite(per_epoch):
            raise ValueError("a learning-rate schedule needs the epoch length: the train loader has no len()")
        return max(1, math.ceil(per_epoch)), max(1, int(total))

    def configure_model(self) -> None:
        """Compile the sub-networks' forwards once, if asked (``nn.Module.compile()`` traced nothing in torch 2.13)."""
        if not self.compile_networks:
            return
        for module in self.children():
            if is_compiled(module) or not any(True for _ in module.parameters()):
                continue
            # bound as a method, so a deep copy of the module runs the compiled code on its own weights
            module.forward = types.MethodType(torch.compile(type(module).forward), module)

    def counts(self, batch: dict[str, Tensor]) -> Tensor:
        """Dense float counts of a sparse batch, on the batch's device."""
        return densify(batch)

    @property
    def data_is_normalised(self) -> bool:
        """Whether the training data holds normalised values (``data_context["normalised"]``, from the store)."""
        return bool(self.data_context.get("normalised", False))

    def normalized(self, batch: dict[str, Tensor]) -> Tensor:
        """Log-normalised dense expression of a sparse batch, computed on its non-zeros on the batch's device;
        a batch of normalised values (:attr:`data_is_normalised`) is used as it is."""
        if self.data_is_normalised:
            return densify(batch)
        return normalized_dense(batch, self.target_sum)

    def forward(self, x: Tensor) -> Tensor:
        """Embed log-normalised expression (``log1p(counts / total × target_sum)``, in the model's genes).

        Raw counts are refused: a log-normalised value never exceeds ``log1p(target_sum)``, so larger inputs cannot
        be what the encoder was trained on. ``cellssl.load(checkpoint).embed(adata)`` aligns and normalises.
        """
        limit = math.log1p(self.target_sum) + 1e-3
        if x.numel() and float(x.max()) > limit:
            raise ValueError(
                f"values up to {float(x.max()):g} exceed log1p(target_sum) = {limit:.2f}: the model takes "
                "log-normalised expression, not raw counts; use cellssl.load(checkpoint).embed(adata)"
            )
        return self.encoder(x)

    def loss(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        """The training objective of one batch (``stage`` is ``train`` or ``val``)."""
        raise NotImplementedError

    def _logged_loss(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        loss = self.loss(batch, stage)
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=True,
            batch_size=batch["cell_id"].numel(),
            sync_dist=stage != "train",
        )
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._logged_loss(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._logged_loss(batch, "val")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cellssl"] = {"model_config": self.model_config, "data_context": self.data_context}


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module``'s forward has been compiled by :meth:`PretrainingModule.configure_model`."""
    return getattr(module.forward, "_torchdynamo_orig_callable", None) is not None


def build_model(config: Mapping[str, Any], context: Mapping[str, Any]) -> PretrainingModule:
    """Instantiate a model config, passing each model only the data context its constructor declares.

    Only keys the constructor names explicitly are passed (not through ``**kwargs``).
    ``context`` holds what the data offers (``n_genes``, ``gene_names``, ``n_classes``, ``class_counts``); a
    masked autoencoder takes the vocabulary, a classifier the classes, and neither needs to know of the other.
    Sub-components configured ``_partial_: true`` that declare ``gene_names`` (masking by gene sets) get it too.
    """
    factory = instantiate(config, _partial_=True)
    model = bind_context(factory, **context)
    model.model_config = dict(config)
    model.data_context = dict(context)
    return model


def bind_context(component: Any, **context: Any) -> Any:
    """Call a ``_partial_`` component with the context keys its signature accepts; return anything else as is.

    A required argument the context lacks is an error naming it (a classifier on a store without labels).
    """
    if not isinstance(component, functools.partial):
        return component
    accepted = inspect.signature(component).parameters
    missing = [name for name, p in accepted.items() if _required(p) and name not in context]
    if missing:
        hint = " (the classes come with data.label_key)" if "n_classes" in missing else ""
        raise ValueError(
            f"{getattr(component.func, '__name__', component.func)} needs {', '.join(missing)} from the data, which "
            f"gives {', '.join(context) or 'nothing'}{hint}"
        )
    return component(**{k: v for k, v in context.items() if k in accepted})


def _required(parameter: inspect.Parameter) -> bool:
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return parameter.kind in named and parameter.default is inspect.Parameter.empty


def load_pretrained(path: str | Path, map_location: str | torch.device = "cpu") -> PretrainingModule:
    """Rebuild a model from a cellssl checkpoint (its stored config and data context) and load its weights."""
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    meta = checkpoint.get("cellssl") or {}
    if not meta.get("model_config"):
        raise ValueError(f"{path}: no cellssl model config in this checkpoint; was it written by cellssl-train?")
    model = build_model(meta["model_config"], meta.get("data_context") or {"n_genes": meta["n_genes"]})
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
