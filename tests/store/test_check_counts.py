"""check_counts: the fast path for good counts, and every refusal naming what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cellssl.store.validation import InputError, check_counts


@pytest.mark.parametrize(
    "values",
    [np.array([0, 3, 7], dtype=np.int32), np.array([1.0, 2.0, 250.0], dtype=np.float32), np.zeros(0)],
)
def test_counts_pass_and_give_their_largest_value(values):
    matrix = sp.csr_matrix(values.reshape(1, -1)) if values.size else sp.csr_matrix((2, 2))
    assert check_counts(matrix, "f.h5ad", "X") == (values.max() if values.size else 0.0)


@pytest.mark.parametrize(
    ("values", "normalised", "message"),
    [
        (np.array([1.0, np.inf], dtype=np.float32), False, "1 NaN or infinite values"),
        (np.array([np.nan, 2.0], dtype=np.float64), True, "1 NaN or infinite values"),
        (np.array([3, -2], dtype=np.int16), False, r"1 negative values \(min -2\)"),
        (np.array([0.5, -0.5], dtype=np.float32), True, "1 negative values"),
        (np.array([1.0, 2.5, 3.25], dtype=np.float32), False, r"2 non-integer values \(e.g. 2.5\)"),
    ],
)
def test_bad_values_are_refused_with_what_is_wrong(values, normalised, message):
    with pytest.raises(InputError, match=message) as err:
        check_counts(values.reshape(1, -1), "f.h5ad", "X", normalised=normalised)
    assert str(err.value).startswith("f.h5ad: X: ")


def test_normalised_data_may_be_fractional():
    assert check_counts(np.array([[0.25, 1.5]], dtype=np.float32), "f.h5ad", "X", normalised=True) == 1.5
