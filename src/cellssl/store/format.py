"""The cell-store format: names, dtypes, codecs and defaults shared by the writers and readers.

See docs/store-format.md for the layout. The store is AnnData's Zarr v3 encoding (so anndata opens it)
with sharded CSR arrays, rows grouped by split and shuffled within each split, and metadata in
``uns/cellssl/metadata_json``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec

FORMAT_VERSION = 2

# Elements per chunk (the unit of compression and of a read) and per shard (the unit of a file).
# Chosen by measurement (docs/benchmarks.md, "Store chunk and shard sizes").
DEFAULT_CHUNK_SIZE = 1 << 16
DEFAULT_SHARD_SIZE = 1 << 22


def default_compressor() -> BloscCodec:
    """Blosc-LZ4 with byte shuffle: decompresses at several GB/s, so reads stay I/O-bound."""
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def checked_compressors() -> tuple[BloscCodec, Crc32cCodec]:
    """The counts' codecs: :func:`default_compressor`, then a CRC-32C checksum per chunk, so that a damaged
    chunk is refused when read instead of decoding to wrong values."""
    return default_compressor(), Crc32cCodec()


def vocabulary_hash(gene_names: Sequence[str]) -> str:
    """A short fingerprint of the ordered gene list, so models and stores can check they agree."""
    return hashlib.sha1("\n".join(map(str, gene_names)).encode()).hexdigest()[:16]


def narrowest_uint(max_value: int) -> np.dtype:
    """The smallest unsigned integer type that holds ``max_value``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def index_dtype_for(n_genes: int) -> np.dtype:
    """The dtype of stored column indices: int16 up to 32,767 genes (scTab's 19,331 fit), else int32."""
    return np.dtype(np.int16 if n_genes <= np.iinfo(np.int16).max else np.int32)


def narrowest_count_dtype(max_value: float, normalised: bool) -> np.dtype:
    """The dtype of stored values: the narrowest unsigned integer for counts, float32 for normalised data."""
    return np.dtype(np.float32) if normalised else narrowest_uint(int(max_value))
