"""MLP encoder (the paper's ``[512, 512, 256, 256] → 64``) and its mirrored decoder."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

_NORMS = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm, "none": None}


def _activation(name: str) -> type[nn.Module]:
    activation = getattr(nn, name, None)
    if not (isinstance(activation, type) and issubclass(activation, nn.Module)):
        raise ValueError(f"unknown activation {name!r}: use a torch.nn class name such as ReLU, GELU, SiLU, SELU")
    return activation


class MLP(nn.Sequential):
    """Linear → norm → activation → dropout for every hidden layer, then a linear output layer, followed by
    ``output_activation`` when one is named (``Sigmoid``, ``Softplus``, ``ReLU``, ...; None: a plain output).

    ``norm="none"``, ``activation="SELU"`` is the encoder of Richter et al.'s released code (``ssl_in_scg``).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        dropout: float = 0.1,
        activation: str = "ReLU",
        norm: str = "batch",
        output_activation: str | None = None,
    ) -> None:
        if norm not in _NORMS:
            raise ValueError(f"unknown norm {norm!r}: choose one of {sorted(_NORMS)}")
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden_dims]
        for d_in, d_out in pairwise(dims):
            layers.append(nn.Linear(d_in, d_out))
            if _NORMS[norm] is not None:
                layers.append(_NORMS[norm](d_out))
            layers += [_activation(activation)(), nn.Dropout(dropout)]
        layers.append(nn.Linear(dims[-1], out_dim))
        if output_activation is not None:
            layers.append(_activation(output_activation)())
        super().__init__(*layers)
        self.in_dim, self.hidden_dims, self.out_dim = in_dim, list(hidden_dims), out_dim
        self.dropout, self.activation, self.norm = dropout, activation, norm
        self.output_activation = output_activation


class MLPEncoder(MLP):
    """Genes → embedding. Defaults follow Richter et al. (2024)."""

    def __init__(
        self,
        n_genes: int,
        hidden_dims: Sequence[int] = (512, 512, 256, 256),
        embedding_dim: int = 64,
        dropout: float = 0.1,
        activation: str = "ReLU",
        norm: str = "batch",
        output_activation: str | None = None,
    ) -> None:
        super().__init__(n_genes, hidden_dims, embedding_dim, dropout, activation, norm, output_activation)

    @property
    def embedding_dim(self) -> int:
        return self.out_dim

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)


def mirrored_decoder(
    encoder: MLP, hidden_dims: Sequence[int] | None = None, output_activation: str | None = None
) -> MLP:
    """Embedding → genes with the encoder's hidden layers in reverse order (or ``hidden_dims``: ``[]`` is one linear
    layer, as in ``ssl_in_scg``'s default decoder), the encoder's dropout, activation and norm, and an optional
    ``output_activation``."""
    return MLP(
        encoder.out_dim,
        encoder.hidden_dims[::-1] if hidden_dims is None else list(hidden_dims),
        encoder.in_dim,
        encoder.dropout,
        encoder.activation,
        encoder.norm,
        output_activation,
    )
