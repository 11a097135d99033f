"""The external shuffle behind the converters: rows read in storage order, written in a shuffled final order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

# bytes a stored non-zero costs while a bucket is sorted in memory (values, int32 indices, copies)
BYTES_PER_NONZERO = 24


class RowBuckets:
    """Rows scattered into buckets of consecutive final positions; in memory, or as .npy files on disk.

    ``put(bucket, counts, positions)`` files CSR rows under their final positions; ``take(bucket)`` returns
    the bucket's rows sorted by position. Readers that must read in storage order (an ``.h5ad``, the census)
    scatter into buckets of about ``memory_mb`` each and write bucket by bucket: an external shuffle whose
    memory does not grow with the data.
    """

    def __init__(self, n_buckets: int, workdir: Path | None) -> None:
        self.workdir = workdir
        self.pieces: list[list] = [[] for _ in range(n_buckets)]

    def put(self, bucket: int, counts: sp.csr_matrix, positions: np.ndarray) -> None:
        if self.workdir is None:
            self.pieces[bucket].append((counts, positions))
            return
        # raw .npy files: np.savez's zip container spent a second per GB on checksums
        stem = self.workdir / f"b{bucket}_{len(self.pieces[bucket])}"
        arrays = {"data": counts.data, "indices": counts.indices, "indptr": counts.indptr, "positions": positions}
        for name, values in arrays.items():
            np.save(f"{stem}.{name}.npy", values)
        self.pieces[bucket].append((stem, counts.shape))

    def take(self, bucket: int) -> tuple[sp.csr_matrix, np.ndarray]:
        parts = []
        for piece in self.pieces[bucket]:
            if isinstance(piece[0], Path):
                stem, shape = piece
                data, indices, indptr, positions = (
                    np.load(f"{stem}.{name}.npy") for name in ("data", "indices", "indptr", "positions")
                )
                piece = (sp.csr_matrix((data, indices, indptr), shape=shape), positions)
            parts.append(piece)
        self.pieces[bucket] = []
        # stacked by hand: sp.vstack converts through COO and took as long as the gather below
        lengths = np.concatenate([np.diff(p[0].indptr) for p in parts])
        indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        data, indices = np.concatenate([p[0].data for p in parts]), np.concatenate([p[0].indices for p in parts])
        counts = sp.csr_matrix((data, indices, indptr), shape=(len(lengths), parts[0][0].shape[1]))
        positions = np.concatenate([p[1] for p in parts])
        order = np.argsort(positions)
        return counts[order], positions[order]
