"""cellssl: self-supervised pretraining on single-cell transcriptomes."""

__version__ = "0.1.0"
