"""LightningDataModule over a cell store; builds the store first when it is missing and a source is given."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from cellssl.data.dataset import CellBatchDataset
from cellssl.data.plan import EpochPlan, continues
from cellssl.data.subset import SubsetCellBatchDataset, donor_subset_rows
from cellssl.data.transfer import batch_to_device, in_background, pin_batch
from cellssl.store import CellStore, InputError, prepare_store

log = logging.getLogger(__name__)

# a train split with fewer full batches per rank than this gets a smaller batch (``adapt_batch_size``) ...
MIN_FULL_BATCHES = 4
# ... the largest power of two that gives each rank at least this many steps per epoch, and never below MIN_BATCH
TARGET_STEPS = 8
MIN_BATCH = 4


def steps_per_epoch(n_cells: int, batch_size: int, world_size: int = 1, drop_last: bool = False) -> int:
    """Batches per rank and epoch of a split of ``n_cells`` (as the epoch plan cuts it)."""
    return EpochPlan(n_cells, batch_size, 1, 0, 0, world_size=world_size, drop_last=drop_last).num_batches


def adapted_batch_size(n_cells: int, batch_size: int, world_size: int = 1) -> int:
    """The batch size for a train split of ``n_cells`` on ``world_size`` ranks.

    The configured ``batch_size`` when each rank gets at least ``MIN_FULL_BATCHES`` full batches; else the largest
    power of two that gives each rank at least ``TARGET_STEPS`` batches (at least ``MIN_BATCH``, at most the
    configured size). A function of the split size and world size only, so every DDP rank computes the same.
    """
    per_rank = math.ceil(n_cells / world_size)
    if per_rank >= MIN_FULL_BATCHES * batch_size:
        return batch_size
    fitting = per_rank // TARGET_STEPS
    power_of_two = 1 << (fitting.bit_length() - 1) if fitting > 0 else 1
    return min(batch_size, max(MIN_BATCH, power_of_two))


class CellDataLoader(DataLoader):
    """A DataLoader that sets its dataset's epoch, rank and resume point, and yields batches in plan order.

    Lightning only calls ``set_epoch`` on samplers, which an iterable dataset does not have, so the epoch,
    rank, world size and the parts of the epoch already trained come from ``context()`` in the main process
    before workers copy the dataset (``context(peek=True)`` for ``len()``: a look that does not use up a resume).
    Workers deliver whole groups in turn; batches are re-ordered by their plan index, so the order is the
    same for any number of workers. With ``pin_memory`` the ordered batches are copied into page-locked memory
    on a background thread (:func:`~cellssl.data.transfer.in_background`), ``pin_depth`` batches ahead, for
    asynchronous copies to the GPU; torch's own DataLoader pinning would run on the training thread here.
    """

    def __init__(
        self,
        dataset: CellBatchDataset,
        context: Callable[..., tuple[int, int, int, list[dict[str, Any]]]],
        num_workers: int = 0,
        pin_memory: bool = False,
        pin_device: torch.device | None = None,
        pin_depth: int = 2,
        **kwargs: Any,
    ) -> None:
        if num_workers > 0:  # tensorstore's thread pools do not survive fork
            kwargs.setdefault("multiprocessing_context", "spawn")
        super().__init__(dataset, batch_size=None, num_workers=num_workers, pin_memory=False, **kwargs)
        self.context = context
        self.pin, self.pin_device, self.pin_depth = pin_memory, pin_device, pin_depth

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        ordered = self._in_plan_order()
        if not self.pin:
            return ordered
        return in_background(ordered, functools.partial(pin_batch, device=self.pin_device), self.pin_depth)

    def __len__(self) -> int:
        self._set_position(peek=True)
        return super().__len__()

    def _set_position(self, peek: bool = False) -> int:
        """Give the dataset its epoch, rank, world size and resumed segments; the batches of its plan already done."""
        dataset: CellBatchDataset = self.dataset
        dataset.epoch, dataset.rank, dataset.world_size, dataset.segments = self.context(peek=peek)
        return dataset.plan()[1]

    def _in_plan_order(self) -> Iterator[dict[str, torch.Tensor]]:
        expected = self._set_position()
        waiting: dict[int, dict[str, torch.Tensor]] = {}
        for batch in super().__iter__():
            waiting[int(batch["batch_index"])] = batch
            while expected in waiting:
                yield waiting.pop(expected)
                expected += 1
        if waiting:
            raise RuntimeError(f"batches {sorted(waiting)} arrived but batch {expected} never did")


class CellDataModule(L.LightningDataModule):
    """Train and val minibatches from a cell store at ``store_path``.

    ``prepare`` holds the arguments of :func:`cellssl.store.prepare_store` (``source``, ``label_columns``,
    ...) used to build the store on first use; leave it empty for an existing store. The training batches
    consumed in the current epoch, and the plan they were dealt by (world size, batch size, ...), are saved in
    checkpoints (``state_dict``), so a run resumed from a mid-epoch checkpoint trains on exactly the cells that
    epoch had left: in the uninterrupted run's order on as many ranks, re-dealt to this run's ranks on another
    number (:func:`~cellssl.data.plan.resume`); the epochs after it are this world size's.

    ``donor_fraction`` < 1 trains on the cells of that fraction of the training donors (``donor_key`` names the
    donor column; drawn with ``subset_seed``, default ``seed``); validation keeps the whole split.

    With ``adapt_batch_size`` a train split too small for ``batch_size`` (fewer than ``MIN_FULL_BATCHES`` full
    batches per rank) trains with a smaller batch and ``block_size`` (:func:`adapted_batch_size`), with a warning;
    ``batch_size`` and ``block_size`` are the sizes in use, ``configured_batch_size`` and ``configured_block_size``
    the ones asked for. :meth:`setup` logs the cells, batch size and steps per epoch of both splits.
    """

    def __init__(
        self,
        store_path: str,
        label_key: str | None = None,
        batch_size: int = 128,
        block_size: int = 1024,
        shuffle_batches: int = 4,
        mix_size: int = 32,
        prefetch_groups: int = 2,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        drop_last: bool = False,
        dense: bool = False,
        seed: int = 0,
        donor_key: str | None = None,
        donor_fraction: float = 1.0,
        subset_seed: int | None = None,
        prepare: dict[str, Any] | None = None,
        adapt_batch_size: bool = True,
    ) -> None:
        super().__init__()
        self.store_path = Path(store_path)
        self.label_key = label_key
        self.batch_size, self.block_size, self.shuffle_batches = batch_size, block_size, shuffle_batches
        self.configured_batch_size, self.configured_block_size = batch_size, block_size
        self.adapt_batch_size = adapt_batch_size
        self.mix_size = mix_size
        self.prefetch_groups, self.num_workers, self.pin_memory = prefetch_groups, num_workers, pin_memory
        self.drop_last, self.dense, self.seed = drop_last, dense, seed
        self.donor_key, self.donor_fraction = donor_key, float(donor_fraction)
        self.subset_seed = seed if subset_seed is None else subset_seed
        self.prepare = dict(prepare or {})
        self.store: CellStore | None = None
        self.train_rows = None  # split-relative rows of a donor subset, or None: the whole split
        self._consumed = {"epoch": -1, "batches_done": 0}
        self._earlier: list[dict[str, Any]] = []  # parts of the current epoch dealt otherwise than this run's
        self._resume: dict[str, Any] | None = None
        self._reload_after: int | None = None  # the trainer's reload_dataloaders_every_n_epochs, while overridden
        self._sized_for: tuple[int, int, int] | None = None  # (train cells, val cells, world size) last sized for

    def prepare_data(self) -> None:
        if self.store_path.exists() or not self.prepare:
            return
        log.info("building the store %s from %s", self.store_path, self.prepare.get("source"))
        prepare_store(output=self.store_path, **self.prepare)

    def setup(self, stage: str | None = None) -> None:
        if self.store is None:
            self.store = CellStore(self.store_path)
        if self.donor_fraction < 1 and self.train_rows is None:
            if self.donor_key is None:
                raise InputError(
                    str(self.store_path), "data.donor_key", "donor_fraction < 1 needs the donor column", "set it"
                )
            self.train_rows = donor_subset_rows(
                self.store, "train", self.donor_key, self.donor_fraction, self.subset_seed
            )
            log.info("training on %d cells of %.1f %% of the donors", len(self.train_rows), 100 * self.donor_fraction)
        self._size_batches()

    def split_cells(self) -> tuple[int, int]:
        """Cells in the train split (the donor subset, if any) and in the val split."""
        counts = self.store.metadata["split_counts"]
        n_train = len(self.train_rows) if self.train_rows is not None else counts["train"]
        return int(n_train), int(counts["val"])

    def _size_batches(self) -> None:
        """Choose the batch and block size for the splits and this world size; log the steps per epoch."""
        n_train, n_val = self.split_cells()
        world_size = self._position()[2]
        if self._sized_for == (n_train, n_val, world_size):
            return
        self._sized_for = (n_train, n_val, world_size)
        self.batch_size, self.block_size = self.configured_batch_size, self.configured_block_size
        adapted = adapted_batch_size(n_train, self.batch_size, world_size)
        if self.adapt_batch_size and adapted != self.batch_size:
            self.batch_size, self.block_size = adapted, min(self.block_size, adapted)
            log.warning(
                "data: %d train cells give %d step(s) per epoch at data.batch_size=%d: training with batch size %d "
                "and block size %d instead (data.block_size=%d), %d steps per epoch; data.adapt_batch_size=false "
                "keeps the configured sizes",
                *(n_train, self._steps(n_train, self.configured_batch_size), self.configured_batch_size),
                *(self.batch_size, self.block_size, self.configured_block_size, self._steps(n_train, self.batch_size)),
            )
        log.info(
            "data: train %d cells, val %d cells, batch size %d: %d train and %d val steps per epoch (per rank of %d)",
            *(n_train, n_val, self.batch_size, self._steps(n_train, self.batch_size)),
            *(steps_per_epoch(n_val, self.batch_size, world_size), world_size),
        )

    def _steps(self, n_train: int, batch_size: int) -> int:
        return steps_per_epoch(n_train, batch_size, self._position()[2], self.drop_last)

    @property
    def n_genes(self) -> int:
        self.setup()
        return self.store.n_genes

    # -- host to device ----------------------------------------------------------------------------------------------
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Sparse batches go to the device as they are (asynchronously when pinned); the model densifies there."""
        return batch_to_device(batch, device)

    # -- resumable position ---------------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if trainer is not None and trainer.training:
            if self._consumed["epoch"] != trainer.current_epoch:
                self._consumed = {"epoch": trainer.current_epoch, "batches_done": 0}
                self._earlier = []
            self._consumed["batches_done"] += 1
        return batch

    def _dealing(self) -> dict[str, Any]:
        """How this run deals an epoch's batches (:func:`~cellssl.data.plan.dealing`)."""
        return {
            "world_size": self._position()[2],
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "group_batches": self.shuffle_batches,
            "mix_size": self.mix_size,
            "drop_last": self.drop_last,
        }

    def state_dict(self) -> dict[str, Any]:
        if self._resume is not None:  # nothing trained since the resume
            return {"train": dict(self._resume)}
        done_before = sum(segment["batches"] for segment in self._earlier)
        current = {**self._dealing(), "batches": self._consumed["batches_done"] - done_before}
        subset = [self.donor_fraction, self.subset_seed]
        train = {**self._consumed, "seed": self.seed, "world_size": current["world_size"], "subset": subset}
        return {"train": {**train, "segments": [*self._earlier, current]}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = dict(state["train"])
        self._consumed = {"epoch": self._resume["epoch"], "batches_done": self._resume["batches_done"]}

    def _train_context(self, peek: bool = False) -> tuple[int, int, int, list[dict[str, Any]]]:
        epoch, rank, world_size = self._position()
        if self._resume is not None and epoch < self._resume["epoch"]:
            # the length asked for before Lightning restored its loops (configure_optimizers asks for
            # estimated_stepping_batches, a learning-rate schedule's length): the epoch it is about to restore
            epoch = self._resume["epoch"]
        segments = []
        if self._resume is not None and self._resume["epoch"] == epoch:
            segments = self._resumed_segments()
        if not peek:
            self._resume = None
            if segments:
                continued = continues(segments[-1], self._dealing())
                self._earlier = segments[:-1] if continued else segments
                if not continued:
                    self._reload_next_epoch()
        return epoch, rank, world_size, segments

    def _resumed_segments(self) -> list[dict[str, Any]]:
        """The parts of the resumed epoch trained so far; refused when the cells would differ (seed, subset)."""
        state, subset = self._resume, [self.donor_fraction, self.subset_seed]
        if state["seed"] != self.seed or state.get("subset", subset) != subset:
            raise ValueError(
                f"cannot resume mid-epoch: the checkpoint has seed {state['seed']} and donor subset "
                f"{state.get('subset', subset)}, this run seed {self.seed} and subset {subset}; resume from an "
                "end-of-epoch checkpoint instead"
            )
        if "segments" in state:
            return [dict(segment) for segment in state["segments"]]
        if state["world_size"] != 1:  # before elastic resume, ranks took contiguous shares: another plan
            raise ValueError(
                f"cannot resume mid-epoch: the checkpoint was written on {state['world_size']} ranks by an earlier "
                "cellssl, whose epochs were dealt otherwise; resume from an end-of-epoch checkpoint instead"
            )
        return [{**self._dealing(), "world_size": 1, "batches": int(state["batches_done"])}]  # one rank: same plan

    def _reload_next_epoch(self) -> None:
        """Have Lightning build the train loader again at the next epoch: it reads an epoch's length once per
        loader, and a re-dealt epoch's length (the batches before the resume and those re-dealt) is not that of
        the epochs after it. The trainer's own setting is put back when the loader is built again."""
        trainer = self.trainer
        if trainer is None or not hasattr(trainer, "reload_dataloaders_every_n_epochs"):
            return
        if self._reload_after is None:
            self._reload_after = trainer.reload_dataloaders_every_n_epochs
        trainer.reload_dataloaders_every_n_epochs = 1

    def _position(self) -> tuple[int, int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 0, 1
        return trainer.current_epoch, trainer.global_rank, trainer.world_size

    def _eval_context(self, peek: bool = False) -> tuple[int, int, int, list[dict[str, Any]]]:
        return (0, *self._position()[1:], [])

    # -- loaders ---------------------------------------------------------------------------------------------------
    def _pin(self) -> bool:
        if self.pin_memory is not None:
            return self.pin_memory
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def _loader(self, split: str, shuffle: bool, drop_last: bool, context: Callable) -> CellDataLoader:
        subset = {"rows": self.train_rows} if split == "train" and self.train_rows is not None else {}
        dataset = (SubsetCellBatchDataset if subset else CellBatchDataset)(
            self.store_path,
            split,
            self.batch_size,
            self.block_size,
            self.shuffle_batches,
            self.seed,
            shuffle=shuffle,
            drop_last=drop_last,
            label_key=self.label_key,
            prefetch_groups=self.prefetch_groups,
            dense=self.dense,
            mix_size=self.mix_size,
            **subset,
        )
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        return CellDataLoader(dataset, context, num_workers=self.num_workers, pin_memory=self._pin(), pin_device=device)

    def train_dataloader(self) -> CellDataLoader:
        if self._reload_after is not None and self.trainer is not None:  # built again after a re-dealt epoch
            self.trainer.reload_dataloaders_every_n_epochs, self._reload_after = self._reload_after, None
        return self._loader("train", shuffle=True, drop_last=self.drop_last, context=self._train_context)

    def val_dataloader(self) -> CellDataLoader:
        return self._loader("val", shuffle=False, drop_last=False, context=self._eval_context)
