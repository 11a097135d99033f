"""Plain ``nn.Module`` networks: no Lightning, no Hydra, no files."""

from cellssl.nets.mlp import MLP, MLPEncoder, mirrored_decoder

__all__ = ["MLP", "MLPEncoder", "mirrored_decoder"]
