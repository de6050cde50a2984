"""Row-wise L2 normalisation of feature matrices: the one copy the package uses outside its models.

Retrieval compares embeddings by cosine similarity, i.e. by dot products of unit rows; search
indexes, query embeddings, metrics, binary codes and plots all go through :func:`l2_normalize`.
(The models' own heads normalise inside their forward, as the official code does.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tvt.errors import DataError

EPS = 1e-12  # F.normalize's floor on the norm: a zero row stays zero instead of becoming NaN


def l2_normalize(x: torch.Tensor | np.ndarray | Any, *, name: str | None = None) -> torch.Tensor:
    """Rows of ``x`` [N, D] scaled to unit L2 norm, as a tensor on ``x``'s device.

    float32 and float64 inputs keep their precision; other dtypes (integers, halves, bfloat16)
    are computed in float32. A zero row stays zero, unless ``name`` is given: then zero rows
    (cosine similarity is undefined for them) raise :class:`~tvt.errors.DataError` naming ``name``.
    """
    t = torch.as_tensor(x).detach()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    if t.dim() != 2:
        raise DataError(f"{name or 'features'}: expected a matrix [N, D], got shape {tuple(t.shape)}")
    if name is not None:
        zero = (t == 0).all(dim=1)
        if bool(zero.any()):
            raise DataError(f"{name}: {int(zero.sum())} all-zero feature vectors (first in row "
                            f"{int(zero.nonzero()[0, 0])}); cosine similarity is undefined for them — check the features")
    return F.normalize(t, dim=1, eps=EPS)
