"""LightningDataModule over a cell store; builds the store first when it is missing and a source is given."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from cellssl.data.dataset import CellBatchDataset
from cellssl.store import CellStore, prepare_store

log = logging.getLogger(__name__)


class CellDataLoader(DataLoader):
    """A DataLoader that tells its dataset the epoch, rank and world size before each pass.

    Lightning only calls ``set_epoch`` on samplers, which an iterable dataset does not have; this
    sets the same state from the trainer, in the main process, before workers copy the dataset.
    """

    def __init__(self, dataset: CellBatchDataset, context: Callable[[], tuple[int, int, int]], **kwargs: Any):
        super().__init__(dataset, batch_size=None, **kwargs)
        self.context = context

    def __iter__(self) -> Iterator:
        self.dataset.epoch, self.dataset.rank, self.dataset.world_size = self.context()
        return super().__iter__()


class CellDataModule(L.LightningDataModule):
    """Train and val minibatches from a cell store at ``store_path``.

    ``prepare`` holds the arguments of :func:`cellssl.store.prepare_store` (``source``,
    ``label_columns``, ...) used to build the store on first use; leave it empty for an existing store.
    """

    def __init__(
        self,
        store_path: str,
        label_key: str | None = None,
        batch_size: int = 128,
        block_size: int = 256,
        shuffle_batches: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        prepare: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.store_path = Path(store_path)
        self.label_key = label_key
        self.batch_size, self.block_size, self.shuffle_batches = batch_size, block_size, shuffle_batches
        self.num_workers, self.pin_memory, self.drop_last, self.seed = num_workers, pin_memory, drop_last, seed
        self.prepare = dict(prepare or {})
        self.store: CellStore | None = None

    def prepare_data(self) -> None:
        if self.store_path.exists() or not self.prepare:
            return
        log.info("building the store %s from %s", self.store_path, self.prepare.get("source"))
        prepare_store(output=self.store_path, **self.prepare)

    def setup(self, stage: str | None = None) -> None:
        if self.store is None:
            self.store = CellStore(self.store_path)

    @property
    def n_genes(self) -> int:
        self.setup()
        return self.store.n_genes

    def _context(self) -> tuple[int, int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 0, 1
        return trainer.current_epoch, trainer.global_rank, trainer.world_size

    def _loader(self, split: str, shuffle: bool, drop_last: bool) -> CellDataLoader:
        dataset = CellBatchDataset(
            self.store_path,
            split,
            self.batch_size,
            self.block_size,
            self.shuffle_batches,
            self.seed,
            shuffle=shuffle,
            drop_last=drop_last,
            label_key=self.label_key,
        )
        return CellDataLoader(
            dataset,
            self._context,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
        )

    def train_dataloader(self) -> CellDataLoader:
        return self._loader("train", shuffle=True, drop_last=self.drop_last)

    def val_dataloader(self) -> CellDataLoader:
        return self._loader("val", shuffle=False, drop_last=False)
