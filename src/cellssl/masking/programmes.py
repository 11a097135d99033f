"""Masking by gene sets: whole gene programmes hidden together, and "isolated" masking where the input keeps only
one gene set and the loss is on one gene set (programme → TF, programme → programme), after Richter et al. (2024).

Gene sets arrive as plain mappings (name → gene symbols; read from files by :mod:`cellssl.resources`) and are
matched against the store's gene vocabulary here, once; masks are then built on the batch's device by indexing
a membership matrix, vectorised over cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def membership_matrix(
    gene_sets: Mapping[str, Sequence[str]], gene_names: Sequence[str], min_size: int = 1
) -> tuple[list[str], Tensor]:
    """Boolean ``(sets, genes)`` membership of each gene set in the vocabulary ``gene_names``.

    Genes outside the vocabulary are dropped; sets with fewer than ``min_size`` genes left are skipped.
    """
    index = {name: i for i, name in enumerate(gene_names)}
    names, rows = [], []
    for name, genes in gene_sets.items():
        columns = sorted({index[g] for g in genes if g in index})
        if len(columns) >= min_size:
            row = torch.zeros(len(index), dtype=torch.bool)
            row[columns] = True
            names.append(name)
            rows.append(row)
    if not rows:
        raise ValueError(
            f"none of the {len(gene_sets)} gene sets has {min_size} or more genes in the vocabulary of "
            f"{len(index)} genes (e.g. {list(gene_names)[:3]}); check that both use the same gene symbols, "
            "or lower min_size"
        )
    return names, torch.stack(rows)


class _DeviceCache:
    """A tensor kept on the CPU and copied once to each device it is asked for."""

    def __init__(self, tensor: Tensor) -> None:
        self._copies = {tensor.device: tensor}

    def on(self, device: torch.device) -> Tensor:
        if device not in self._copies:
            self._copies[device] = next(iter(self._copies.values())).to(device)
        return self._copies[device]


class GeneProgrammeMasking:
    """Hide whole gene programmes: each programme is masked with probability ``rate``; the loss is on hidden genes.

    ``per_cell`` draws the masked programmes independently for every cell; otherwise one draw is shared by the
    batch (the paper's implementation). Every cell gets at least one masked programme, so the loss is never
    empty. Genes in no programme stay visible. With ``rescale`` visible entries are multiplied by
    ``genes / visible genes`` of their cell (inverted dropout).
    """

    def __init__(
        self,
        programmes: Mapping[str, Sequence[str]],
        gene_names: Sequence[str],
        rate: float = 0.5,
        per_cell: bool = True,
        min_size: int = 5,
        rescale: bool = False,
    ) -> None:
        if not 0.0 < rate < 1.0:
            raise ValueError(f"programme mask rate must lie in (0, 1), got {rate}")
        self.names, membership = membership_matrix(programmes, gene_names, min_size)
        self._membership = _DeviceCache(membership.float())
        self.rate, self.per_cell, self.rescale = rate, per_cell, rescale

    @property
    def n_programmes(self) -> int:
        return len(self.names)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        membership = self._membership.on(x.device)
        n_draws = x.shape[0] if self.per_cell else 1
        scores = torch.rand((n_draws, self.n_programmes), device=x.device, generator=generator)
        chosen = scores < self.rate
        # guarantee one programme per draw: the one with the lowest score
        chosen.scatter_(1, scores.argmin(dim=1, keepdim=True), True)
        mask = (chosen.float() @ membership > 0).expand(x.shape[0], -1)
        visible = x.masked_fill(mask, 0.0)
        if self.rescale:
            n_visible = (~mask).sum(dim=1, keepdim=True).clamp_min(1)
            visible = visible * (x.shape[1] / n_visible)
        return visible, mask

    def __repr__(self) -> str:
        return f"GeneProgrammeMasking({self.n_programmes} programmes, rate={self.rate}, per_cell={self.per_cell})"


class IsolatedMasking:
    """The input keeps only the genes of one input set, the loss is on the genes of the paired loss set.

    ``inputs`` and ``targets`` are boolean ``(pairs, genes)`` matrices; a pair is drawn per cell (or one per
    batch without ``per_cell``). Genes of the loss set are always hidden from the input, so a gene is never
    predicted from itself — unless input and loss sets are the same (programme → programme, an autoencoder
    restricted to one programme).
    """

    def __init__(self, names: Sequence[str], inputs: Tensor, targets: Tensor, per_cell: bool = True) -> None:
        if inputs.shape != targets.shape or len(names) != inputs.shape[0]:
            raise ValueError("names, inputs and targets must describe the same pairs over the same genes")
        same_set = (inputs == targets).all(dim=1, keepdim=True)
        inputs = torch.where(same_set, inputs, inputs & ~targets)
        self.names = list(names)
        self._inputs, self._targets = _DeviceCache(inputs), _DeviceCache(targets)
        self.per_cell = per_cell

    def draw(self, n_cells: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """Index of the pair used for each cell."""
        n_draws = n_cells if self.per_cell else 1
        pairs = torch.randint(len(self.names), (n_draws,), device=device, generator=generator)
        return pairs.expand(n_cells)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        pairs = self.draw(x.shape[0], x.device, generator)
        keep = self._inputs.on(x.device)[pairs]
        return x * keep, self._targets.on(x.device)[pairs]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.names)} pairs, per_cell={self.per_cell})"


class ProgrammeToTFMasking(IsolatedMasking):
    """Input: only the target genes of one transcription factor; loss: that TF's own expression.

    TFs absent from the vocabulary, or with fewer than ``min_targets`` targets in it, are skipped. A TF that is
    in its own target list (autoregulation) is still hidden from the input.
    """

    def __init__(
        self,
        regulons: Mapping[str, Sequence[str]],
        gene_names: Sequence[str],
        min_targets: int = 10,
        per_cell: bool = True,
    ) -> None:
        present = set(gene_names)
        in_vocabulary = {tf: targets for tf, targets in regulons.items() if tf in present}
        if not in_vocabulary:
            raise ValueError(f"none of the {len(regulons)} transcription factors is in the vocabulary")
        try:
            names, inputs = membership_matrix(in_vocabulary, gene_names, min_targets)
        except ValueError as err:
            raise ValueError(f"{len(in_vocabulary)} TFs are in the vocabulary, but: {err}") from None
        # a TF in its own target list counts towards min_targets but is hidden from the input below
        _, targets = membership_matrix({tf: [tf] for tf in names}, gene_names)
        super().__init__(names, inputs, targets, per_cell)


class ProgrammeToProgrammeMasking(IsolatedMasking):
    """Input and loss on the genes of one programme (everything else hidden); programmes below ``min_size`` skipped."""

    def __init__(
        self,
        programmes: Mapping[str, Sequence[str]],
        gene_names: Sequence[str],
        min_size: int = 10,
        per_cell: bool = True,
    ) -> None:
        names, membership = membership_matrix(programmes, gene_names, min_size)
        super().__init__(names, membership, membership, per_cell)
