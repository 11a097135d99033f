"""Checks on input data before anything is written.

Every failure raises :class:`InputError` whose message is one line naming the file, the field,
the problem and the fix, so the command-line tools can print it and exit non-zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp


class InputError(ValueError):
    """Bad input data: the message names the source, the field, what is wrong and the fix."""

    def __init__(self, source: str, field: str, problem: str, fix: str) -> None:
        self.source, self.field, self.problem, self.fix = source, field, problem, fix
        super().__init__(f"{source}: {field}: {problem}; {fix}")


NON_INTEGER_FIX = "point counts_layer at raw counts, or pass normalised=true if the data is already normalised"


def check_counts(
    matrix: sp.spmatrix | np.ndarray,
    source: str,
    field: str,
    normalised: bool = False,
    non_integer_fix: str = NON_INTEGER_FIX,
) -> float:
    """Refuse matrices with NaN/Inf or negative values, and non-integer values unless ``normalised``
    (``non_integer_fix``: the fix the message names, in the caller's words).

    Returns the largest value (0 for a matrix without stored values), which the caller needs anyway.
    """
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if values.size == 0 and min(matrix.shape) == 0:
        raise InputError(source, field, f"the matrix is empty (shape {matrix.shape})", "give a non-empty data set")
    if not np.issubdtype(values.dtype, np.number):
        raise InputError(source, field, f"dtype {values.dtype} is not numeric", "store counts as numbers")
    if values.size == 0:
        return 0.0
    if np.issubdtype(values.dtype, np.integer):
        if values.min() >= 0:
            return float(values.max())  # integers that are not negative: counts
    else:
        low, high = values.min(), values.max()  # NaN propagates into both
        if (
            np.isfinite(low)
            and np.isfinite(high)
            and low >= 0
            and (normalised or np.array_equal(values, np.rint(values)))
        ):
            return float(high)  # the usual case in a few passes; the checks below name what is wrong
    bad = ~np.isfinite(values)
    if bad.any():
        raise InputError(source, field, f"{int(bad.sum())} NaN or infinite values", "remove or repair those entries")
    negative = values < 0
    if negative.any():
        raise InputError(
            source, field, f"{int(negative.sum())} negative values (min {values.min():g})", "give raw counts"
        )
    if not normalised:
        fractional = values != np.round(values)
        if fractional.any():
            example = values[fractional][0]
            raise InputError(
                source,
                field,
                f"{int(fractional.sum())} non-integer values (e.g. {example:g}); raw counts are required",
                non_integer_fix,
            )
    return float(values.max())


def check_unique_genes(gene_names: Sequence[str], source: str, field: str = "var_names") -> None:
    """Refuse duplicated gene names: a gene vocabulary must map each name to one column."""
    names = pd.Index(gene_names)
    if names.has_duplicates:
        dupes = names[names.duplicated()].unique()
        shown = ", ".join(map(str, dupes[:3]))
        raise InputError(
            source,
            field,
            f"{len(dupes)} duplicated gene names (e.g. {shown})",
            "make them unique (anndata.AnnData.var_names_make_unique) or use Ensembl ids",
        )


def check_columns(obs: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Refuse label or donor columns that the obs table does not have."""
    for column in columns:
        if column not in obs.columns:
            available = ", ".join(map(str, obs.columns[:10])) or "none"
            raise InputError(source, f"obs['{column}']", "no such column", f"choose one of: {available}")
        if obs[column].isna().any():
            raise InputError(
                source,
                f"obs['{column}']",
                f"{int(obs[column].isna().sum())} missing values",
                "fill or drop those cells before preparing",
            )
