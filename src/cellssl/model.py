"""A trained cellssl model applied to a user's cells: ``cellssl.load(checkpoint).embed(adata)``.

:class:`CellSSLModel` wraps any cellssl checkpoint — a pretraining method, the supervised baseline, or a
fine-tuned classifier — and owns what must match training for its outputs to mean anything: the gene
vocabulary (the data's genes are aligned to it by Ensembl id or symbol, missing genes zero-filled, the overlap
reported) and the normalisation (raw counts → ``target_sum`` per cell → log1p, on the model's device). Input is
read in blocks, so memory stays bounded for backed files and stores. Every cellssl app embeds and predicts
through it.
"""

from __future__ import annotations

import logging
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from cellssl.data.cells import Cells, open_cells
from cellssl.evaluation.embed import apply_network
from cellssl.evaluation.transfer import GeneAlignment, align_genes, checkpoint_vocabulary, translation_table
from cellssl.methods.base import PretrainingModule, build_model, load_pretrained
from cellssl.store import InputError
from cellssl.store.vocabulary import GeneTable

log = logging.getLogger(__name__)

CellsLike = ad.AnnData | str | Path | Cells


class CellSSLModel:
    """A trained model that embeds cells and, when it has a classifier head, predicts their labels.

    Get one with :func:`cellssl.load`; ``module`` is the underlying LightningModule (``module.encoder`` is the
    ``nn.Module`` that embeds). ``match_by``, ``min_overlap`` and ``gene_table`` set how genes are matched
    (:func:`cellssl.evaluation.transfer.align_genes`); ``gene_overlap`` holds the last input's report.

    Examples
    --------
    >>> import cellssl, scanpy as sc
    >>> model = cellssl.load("logs/train/runs/mae/checkpoints/last.ckpt")
    >>> adata = sc.read_h5ad("my_cells.h5ad")  # raw counts in X (or pass layer="counts")
    >>> adata.obsm["X_cellssl"] = model.embed(adata)
    >>> sc.pp.neighbors(adata, use_rep="X_cellssl"); sc.tl.umap(adata)
    """

    def __init__(
        self,
        module: PretrainingModule,
        checkpoint: str | None = None,
        match_by: str = "auto",
        min_overlap: float = 0.5,
        gene_table: str | Path | None = "bundled",
    ) -> None:
        self.module, self.checkpoint = module.eval(), checkpoint
        self.match_by, self.min_overlap = match_by, min_overlap
        self.translation = translation_table(gene_table)
        self.gene_overlap: dict[str, Any] = {}
        self._aligned: tuple[GeneTable, GeneAlignment] | None = None  # the last input's genes and their alignment

    def __repr__(self) -> str:
        kind = "classifier" if self.is_classifier else "encoder"
        name = type(self.module).__name__
        return f"CellSSLModel({name} {kind}, {len(self.genes.symbols)} genes, checkpoint={self.checkpoint!r})"

    @property
    def genes(self) -> GeneTable:
        """The model's gene vocabulary (symbols, and Ensembl ids when the training store had them)."""
        return checkpoint_vocabulary(self.module.data_context)

    @property
    def target_sum(self) -> float:
        return float(self.module.target_sum)

    @property
    def device(self) -> torch.device:
        return self.module.device

    @property
    def is_classifier(self) -> bool:
        return hasattr(self.module, "logits")

    @property
    def classes(self) -> list[str]:
        """Class names of a classifier, in the order of its outputs (stored at training time)."""
        if not self.is_classifier:
            raise TypeError(f"{type(self.module).__name__} has no classifier head: fine-tune it (cellssl-finetune)")
        context = self.module.data_context
        names = context.get("class_names")
        return [str(n) for n in names] if names else [str(i) for i in range(int(context["n_classes"]))]

    def to(self, device: str | torch.device) -> CellSSLModel:
        self.module.to(device)
        return self

    def align(self, cells: Cells) -> GeneAlignment:
        """Match the cells' genes to the model's vocabulary; the report goes to ``gene_overlap`` and the log."""
        if self._aligned is not None and self._aligned[0] is cells.genes:  # the same genes again (splits of a store)
            return self._aligned[1]
        alignment = align_genes(
            cells.genes,
            self.genes,
            match_by=self.match_by,
            translation=self.translation,
            min_overlap=self.min_overlap,
            source=cells.name,
        )
        self.gene_overlap = alignment.report()
        self._aligned = (cells.genes, alignment)
        covered = alignment.vocabulary_covered_measured
        if covered < 0.9:
            missing = alignment.n_target - alignment.n_matched + alignment.n_unmeasured
            warnings.warn(
                f"{cells.name}: {missing} of the model's {alignment.n_target} genes are missing from the data "
                f"(or were zero-filled when it was prepared) and are zero-filled ({100 * covered:.1f}% covered)",
                stacklevel=4,  # the caller of embed/predict
            )
        return alignment

    def _apply(self, forward: Any, data: CellsLike, layer: str | None, normalised: bool, batch_size: int) -> Any:
        cells = open_cells(data, layer=layer, normalised=normalised)
        alignment = self.align(cells)
        outputs = apply_network(
            self.module, forward, cells.blocks(batch_size), self.target_sum, alignment, normalised=cells.normalised
        )
        return outputs, cells

    def embed(
        self, data: CellsLike, layer: str | None = None, normalised: bool = False, batch_size: int = 4096
    ) -> np.ndarray:
        """The embedding of every cell, ``(cells, embedding dim)`` float32, in the order of the input.

        ``data``: an AnnData (raw counts in ``X``, ``raw.X`` with ``layer="raw"``, or a layer; dense or sparse; in
        memory or backed), an ``.h5ad`` path or a cell store path. Non-integer values are refused unless
        ``normalised=True`` (values already ``log1p``-normalised to this model's ``target_sum``).

        Examples
        --------
        >>> adata.obsm["X_cellssl"] = cellssl.load("run/checkpoints/last.ckpt").embed(adata, layer="counts")
        """
        return self._apply(self.module.encoder, data, layer, normalised, batch_size)[0]

    def predict_proba(
        self, data: CellsLike, layer: str | None = None, normalised: bool = False, batch_size: int = 4096
    ) -> pd.DataFrame:
        """Class probabilities (softmax of the classifier's logits): one row per cell, one column per class.

        Examples
        --------
        >>> proba = cellssl.load("finetune/checkpoints/last.ckpt").predict_proba(adata)
        >>> adata.obs["cellssl_confidence"] = proba.max(axis=1).to_numpy()
        """
        classes = self.classes
        logits, cells = self._apply(self.module.logits, data, layer, normalised, batch_size)
        probabilities = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
        return pd.DataFrame(probabilities, index=cells.obs_names, columns=pd.Index(classes, name="class"))

    def predict(
        self, data: CellsLike, layer: str | None = None, normalised: bool = False, batch_size: int = 4096
    ) -> pd.Categorical:
        """The most probable class of every cell, as a categorical over the classifier's classes.

        Examples
        --------
        >>> clf = cellssl.load("finetune/checkpoints/last.ckpt")
        >>> adata.obs["cellssl_label"] = clf.predict(adata)
        """
        classes = self.classes
        logits, _ = self._apply(self.module.logits, data, layer, normalised, batch_size)
        return pd.Categorical.from_codes(logits.argmax(axis=1), categories=classes)

    def random_initialisation(self, seed: int = 0) -> CellSSLModel:
        """The same architecture at a random initialisation (seeded): the untrained-encoder baseline."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = build_model(self.module.model_config, self.module.data_context)
        copy = CellSSLModel(module.to(self.device), None, self.match_by, self.min_overlap, None)
        copy.translation = self.translation
        return copy


def load(
    checkpoint: str | Path,
    device: str | torch.device = "auto",
    match_by: str = "auto",
    min_overlap: float = 0.5,
    gene_table: str | Path | None = "bundled",
) -> CellSSLModel:
    """Load any cellssl checkpoint (pretraining, supervised or fine-tuned) as a :class:`CellSSLModel`.

    ``device``: ``auto`` (a GPU when there is one), ``cpu``, ``cuda``, ... A missing, truncated or foreign file
    raises :class:`cellssl.store.InputError` (a ``ValueError``) naming the file.

    Examples
    --------
    >>> import cellssl
    >>> model = cellssl.load("logs/train/runs/mae/checkpoints/last.ckpt")
    >>> adata.obsm["X_cellssl"] = model.embed(adata)
    """
    path = str(checkpoint)
    if not Path(path).is_file():
        raise InputError(path, "checkpoint", "no such file", "pass <run dir>/checkpoints/last.ckpt of a cellssl run")
    try:  # a checkpoint cut short mid-file makes torch raise OSError (Invalid argument)
        module = load_pretrained(path)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, ValueError, OSError) as err:
        problem = str(err).splitlines()[0] if isinstance(err, ValueError) else f"unreadable ({type(err).__name__})"
        raise InputError(path, "checkpoint", problem, "pass a checkpoint written by cellssl (or re-save it)") from err
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = CellSSLModel(module, path, match_by, min_overlap, gene_table)
    return model.to(device)
