"""scVI (Lopez et al. 2018, scvi-tools) as a zero-shot baseline: a variational autoencoder of raw counts, trained on
the reference split, whose latent means embed reference and query cells for kNN, and whose decoder, given a query
cell with some entries hidden, predicts them (masked reconstruction, as the paper also scores scVI).

scvi-tools is an optional extra (``pip install cellssl[scvi]``); it is imported only when the baseline runs.
The model sees raw counts (the store's), all of the store's genes. With a batch column (``batch_key``) the decoder
is conditioned on the batch; the encoder is not (scvi-tools' default ``encode_covariates=False``), so query cells
of batches the reference lacks embed as any other, and their reconstructions average the decoder over the
reference's batches.

Reconstruction (:meth:`ScviBaseline.reconstruct`, :func:`scvi_reconstruction_scores`): the counts at the masked
entries are set to zero before scVI encodes the cell (it never sees them), and the prediction is scVI's expected
normalised expression scaled to ``target_sum`` and log1p-transformed, scored against the log-normalised data at the
masked entries exactly as the encoders' reconstructions are.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from cellssl.evaluation.embed import log_normalized
from cellssl.evaluation.reconstruction import reconstruction_metrics
from cellssl.store.validation import InputError

log = logging.getLogger(__name__)

# conf/evaluation/default.yaml's `scvi` block; any key left out takes these values
DEFAULTS: dict[str, Any] = {
    "n_latent": 64,
    "n_hidden": 128,
    "n_layers": 1,
    "gene_likelihood": "zinb",
    "max_epochs": None,  # scvi-tools' own rule: min(400, round(400 * 20,000 / n_cells))
    "batch_size": 128,
    "lr": 1e-3,
    "accelerator": "cpu",
    "batch_key": None,
    "n_samples": 25,
}
BATCH = "batch"


def require_scvi() -> Any:
    """The ``scvi`` module; an :class:`InputError` (one line, exit 2 in the apps) when scvi-tools is missing."""
    try:
        import scvi
    except ImportError as err:
        raise InputError(
            "scvi-tools",
            "evaluation.baselines",
            "the scvi baseline needs scvi-tools, which is not installed",
            "pip install cellssl[scvi], or leave scvi out of evaluation.baselines",
        ) from err
    return scvi


@contextmanager
def _scvi_run(seed: int) -> Iterator[Any]:
    """scvi-tools seeded and quiet, with the global state it touches (RNGs, cuDNN flags, environment, verbosity)
    put back afterwards, so the rest of the evaluation is unaffected."""
    from lightning.pytorch.utilities.seed import isolate_rng

    scvi = require_scvi()
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    environment = {key: os.environ.get(key) for key in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "XLA_FLAGS")}
    seed_before, verbosity = scvi.settings.seed, scvi.settings.verbosity
    seed_log = logging.getLogger("lightning.fabric.utilities.seed")  # "Seed set to ..." at every call
    seed_log_level = seed_log.level
    with isolate_rng():
        try:
            seed_log.setLevel(logging.WARNING)
            scvi.settings.seed = seed  # seeds torch, numpy and scvi's data splitting
            scvi.settings.verbosity = logging.WARNING
            yield scvi
        finally:
            scvi.settings.seed, scvi.settings.verbosity = seed_before, verbosity
            seed_log.setLevel(seed_log_level)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags
            for key, value in environment.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@dataclass
class ScviBaseline:
    """A trained ``scvi.model.SCVI`` on a store's genes; ``batches``: the reference's batch names (None: no batch)."""

    model: Any
    genes: list[str]
    batches: list[str] | None
    seed: int = 0
    n_samples: int = 25

    @classmethod
    def fit(
        cls,
        counts: sp.csr_matrix,
        genes: Sequence[str],
        batches: np.ndarray | None = None,
        seed: int = 0,
        **settings: Any,
    ) -> ScviBaseline:
        """Train scVI on raw ``counts`` (cells × ``genes``); ``settings``: :data:`DEFAULTS`' keys."""
        unknown = set(settings) - set(DEFAULTS)
        if unknown:
            raise InputError("config", "evaluation.scvi", f"unknown keys {sorted(unknown)}", f"use {list(DEFAULTS)}")
        options = {**DEFAULTS, **settings}
        categories = None if batches is None else sorted(map(str, np.unique(batches)))
        with _scvi_run(seed) as scvi:
            adata = _anndata(counts, genes, batches, categories)
            scvi.model.SCVI.setup_anndata(adata, batch_key=None if categories is None else BATCH)
            model = scvi.model.SCVI(
                adata,
                n_latent=options["n_latent"],
                n_hidden=options["n_hidden"],
                n_layers=options["n_layers"],
                gene_likelihood=options["gene_likelihood"],
            )
            batch_size = options["batch_size"]
            with tempfile.TemporaryDirectory(prefix="cellssl-scvi-") as root:
                model.train(
                    max_epochs=options["max_epochs"],
                    accelerator=options["accelerator"],
                    devices=1,
                    train_size=1.0,  # unsupervised on the reference; nothing to validate on
                    batch_size=batch_size,
                    # a last batch of one or two cells breaks batch norm; shuffled epochs still see every cell
                    datasplitter_kwargs={"drop_last": counts.shape[0] > batch_size},
                    plan_kwargs={"lr": options["lr"]},
                    enable_progress_bar=False,
                    enable_model_summary=False,
                    default_root_dir=root,
                )
        log.info(
            "scVI trained on %d cells × %d genes (%d epochs, %s)",
            counts.shape[0],
            counts.shape[1],
            model.history["elbo_train"].shape[0] if "elbo_train" in model.history else -1,
            "no batch" if categories is None else f"{len(categories)} batches",
        )
        return cls(model, list(genes), categories, seed, options["n_samples"])

    def _adata(self, counts: sp.csr_matrix, batches: np.ndarray | None) -> ad.AnnData:
        if self.batches is not None:
            batches = np.full(counts.shape[0], self.batches[0]) if batches is None else batches.astype(str)
            unseen = ~np.isin(batches, self.batches)
            if unseen.any():  # the encoder ignores the batch: any reference batch gives the same latent
                log.info("scVI: %d query cells of batches the reference lacks", int(unseen.sum()))
                batches = np.where(unseen, self.batches[0], batches)
        return _anndata(counts, self.genes, batches, self.batches)

    def embed(self, counts: sp.csr_matrix, batches: np.ndarray | None = None) -> np.ndarray:
        """The latent mean of every cell (float32, cells × ``n_latent``)."""
        with _scvi_run(self.seed):
            latent = self.model.get_latent_representation(self._adata(counts, batches), give_mean=True)
        return np.asarray(latent, dtype=np.float32)

    def reconstruct(
        self, counts: sp.csr_matrix, mask: np.ndarray, target_sum: float = 1e4, batches: np.ndarray | None = None
    ) -> np.ndarray:
        """Log-normalised predictions, ``log1p(target_sum · E[ρ])`` with ρ scVI's normalised expression, of cells
        whose ``mask``-ed entries (cells × genes, bool) were set to zero before scVI saw them."""
        hidden = sp.csr_matrix(counts.multiply(~np.asarray(mask, dtype=bool)))
        hidden.eliminate_zeros()
        with _scvi_run(self.seed):
            expected = self.model.get_normalized_expression(
                self._adata(hidden, batches),
                library_size=target_sum,
                n_samples=self.n_samples,
                return_mean=True,
                return_numpy=True,
                transform_batch=self.batches,  # None without batches; else the mean over the reference's
            )
        return np.log1p(np.asarray(expected, dtype=np.float32))


def _anndata(
    counts: sp.csr_matrix, genes: Sequence[str], batches: np.ndarray | None, categories: list[str] | None
) -> ad.AnnData:
    obs = pd.DataFrame(index=[f"c{i}" for i in range(counts.shape[0])])
    if categories is not None:
        obs[BATCH] = pd.Categorical(np.asarray(batches).astype(str), categories=categories)
    return ad.AnnData(X=sp.csr_matrix(counts, dtype=np.float32), obs=obs, var=pd.DataFrame(index=list(genes)))


def scvi_reconstruction_scores(
    baseline: ScviBaseline,
    counts: sp.csr_matrix,
    mask: np.ndarray,
    expression: np.ndarray | None = None,
    target_sum: float = 1e4,
    batches: np.ndarray | None = None,
) -> dict[str, float]:
    """:func:`reconstruction_metrics` of scVI's predictions of the ``mask``-ed entries of ``counts``, against
    ``expression`` (their log-normalised values; computed from ``counts`` when not given)."""
    if expression is None:
        expression = log_normalized(counts, target_sum=target_sum)
    predicted = baseline.reconstruct(counts, mask, target_sum, batches)
    return reconstruction_metrics(expression, predicted, mask)


def scvi_evaluation(
    reference: sp.csr_matrix,
    query: sp.csr_matrix,
    genes: Sequence[str],
    settings: Mapping[str, Any] | None = None,
    batch_codes: tuple[np.ndarray, np.ndarray] | None = None,
    mask: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, float]]:
    """The zero-shot evaluation's scVI baseline: (reference, query) embeddings and, given the common evaluation
    mask of the query (``mask``, cells × genes; :func:`~cellssl.masking.common_evaluation_mask`),
    ``reconstruction_common_mask/scvi/*``: scored on the same hidden entries as every encoder.

    ``settings``: ``evaluation.scvi``; ``batch_codes``: (reference, query) batch names when ``batch_key`` is set.
    """
    options = dict(settings or {})
    options.pop("batch_key", None)
    reference_batches, query_batches = batch_codes if batch_codes is not None else (None, None)
    baseline = ScviBaseline.fit(reference, genes, reference_batches, seed=seed, **options)
    embeddings = baseline.embed(reference, reference_batches), baseline.embed(query, query_batches)
    metrics: dict[str, float] = {}
    if mask is not None:
        scores = scvi_reconstruction_scores(baseline, query, mask, batches=query_batches)
        metrics = {f"reconstruction_common_mask/scvi/{key}": value for key, value in scores.items()}
    return embeddings, metrics
