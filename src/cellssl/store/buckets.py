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

    @staticmethod
    def _piece_arrays(piece: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """A piece's (data, indices, indptr, positions, n_genes); files are mapped, not read into new arrays."""
        if isinstance(piece[0], Path):
            stem, shape = piece
            names = ("data", "indices", "indptr", "positions")
            return (*(np.load(f"{stem}.{name}.npy", mmap_mode="r") for name in names), shape[1])
        counts, positions = piece
        return counts.data, counts.indices, counts.indptr, positions, counts.shape[1]

    def take(self, bucket: int) -> tuple[sp.csr_matrix, np.ndarray] | None:
        """The bucket's rows sorted by final position, and the positions; None for a bucket that got no rows."""
        arrays = [self._piece_arrays(piece) for piece in self.pieces[bucket]]
        self.pieces[bucket] = []
        if not arrays:
            return None
        # stacked by hand into arrays allocated once, each piece copied in straight from its file's pages
        # (sp.vstack converts through COO; loading then concatenating copied everything twice)
        nnz, n_rows = sum(len(a[0]) for a in arrays), sum(len(a[3]) for a in arrays)
        data, indices = np.empty(nnz, arrays[0][0].dtype), np.empty(nnz, arrays[0][1].dtype)
        indptr, positions = np.zeros(n_rows + 1, dtype=np.int64), np.empty(n_rows, dtype=np.int64)
        at = row = 0
        for piece_data, piece_indices, piece_indptr, piece_positions, _ in arrays:
            data[at : at + len(piece_data)] = piece_data
            indices[at : at + len(piece_data)] = piece_indices
            indptr[row + 1 : row + len(piece_positions) + 1] = np.diff(piece_indptr)
            positions[row : row + len(piece_positions)] = piece_positions
            at, row = at + len(piece_data), row + len(piece_positions)
        np.cumsum(indptr, out=indptr)
        counts = sp.csr_matrix((data, indices, indptr), shape=(n_rows, arrays[0][4]))
        order = np.argsort(positions)
        return counts[order], positions[order]
