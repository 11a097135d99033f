"""Models trained by other code, turned into cellssl checkpoints that every app and ``cellssl.load`` use.

One module per source, chosen by ``cellssl-import source=<name>`` (``importers.<name>`` in ``conf/import.yaml``):
:mod:`cellssl.interop.ssl_in_scg` reads checkpoints of the paper's released code (Richter et al. 2024).
Importers build cellssl methods (``methods/``) and read gene lists (``store/``); only the ``cellssl-import`` task
(``tasks/import_checkpoint.py``) calls them.
"""

from cellssl.interop.ssl_in_scg import import_ssl_in_scg, read_class_names

__all__ = ["import_ssl_in_scg", "read_class_names"]
