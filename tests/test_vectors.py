"""tvt.vectors.l2_normalize: unit rows, zero rows, dtypes, and the named refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tvt.errors import DataError
from tvt.vectors import l2_normalize


def test_rows_become_unit_vectors_in_the_same_direction():
    x = np.random.default_rng(0).standard_normal((7, 5))
    y = l2_normalize(x).numpy()
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(y * np.linalg.norm(x, axis=1, keepdims=True), x, rtol=1e-12)


def test_precision_and_device_are_kept_and_other_dtypes_become_float32():
    assert l2_normalize(torch.ones(2, 3, dtype=torch.float64)).dtype == torch.float64
    assert l2_normalize(np.ones((2, 3), np.float32)).dtype == torch.float32
    assert l2_normalize(np.ones((2, 3), np.int64)).dtype == torch.float32
    assert l2_normalize(torch.ones(2, 3, dtype=torch.bfloat16)).dtype == torch.float32


def test_zero_rows_stay_zero_unless_named():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    np.testing.assert_array_equal(l2_normalize(x).numpy(), [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    with pytest.raises(DataError, match=r"gallery features: 1 all-zero feature vectors \(first in row 1\)"):
        l2_normalize(x, name="gallery features")


def test_not_a_matrix_is_refused():
    with pytest.raises(DataError, match="expected a matrix"):
        l2_normalize(np.ones(4), name="query features")
