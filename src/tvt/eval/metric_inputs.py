"""Input checks of the retrieval metrics: features, labels and binary codes as checked CPU tensors.

Each check takes a numpy array, a torch tensor or a nested list, and returns a contiguous CPU
tensor of the dtype the metrics compute with, or raises :class:`~tvt.errors.DataError` naming the
argument (``name``) and what is wrong with it. Shared by :mod:`tvt.eval.metrics`,
:mod:`tvt.eval.binary`, :mod:`tvt.eval.report` and the ``tvt metrics`` command.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tvt.errors import DataError

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def check_features(x: Any, name: str) -> torch.Tensor:
    """Return ``x`` [N, D] as a contiguous float32 CPU tensor; DataError if empty, not 2-D or not finite."""
    t = _to_tensor(x, name)
    if t.dim() != 2:
        raise DataError(f"{name}: expected a 2-D array [N, D] of features, got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise DataError(f"{name}: the feature array is empty (shape {tuple(t.shape)}); nothing to evaluate")
    if not (t.is_floating_point() or t.dtype in _INT_DTYPES or t.dtype == torch.bool):
        raise DataError(f"{name}: features must be numbers, got dtype {t.dtype}")
    t = t.to(torch.float32).contiguous()
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        row = int(bad.any(1).nonzero()[0, 0])
        raise DataError(
            f"{name}: {int(bad.sum())} NaN/Inf values (first in row {row}); features must be finite — "
            "check the model's output or re-extract the features"
        )
    return t


def check_labels(y: Any, n: int, name: str) -> torch.Tensor:
    """Return labels ``y`` [n] as an int64 CPU tensor; DataError on wrong length or a non-integer dtype."""
    t = _to_tensor(y, name)
    if t.dtype not in _INT_DTYPES:
        raise DataError(
            f"{name}: labels must be integers (class indices), got dtype {t.dtype}; "
            "map class names to 0..C-1 before evaluating"
        )
    if t.dim() != 1:
        raise DataError(f"{name}: labels must be a 1-D array, got shape {tuple(t.shape)}")
    if t.numel() != n:
        raise DataError(f"{name}: {t.numel()} labels for {n} feature rows; the two must have the same length")
    return t.to(torch.int64)


def check_codes(x: Any, name: str) -> torch.Tensor:
    """Binary codes [N, B] (bool or 0/1 integers) as float32 ±1 [N, B]; DataError otherwise."""
    t = _to_tensor(x, name)
    if t.dim() != 2 or t.numel() == 0:
        raise DataError(f"{name}: expected a non-empty 2-D array [N, bits] of binary codes, got {tuple(t.shape)}")
    if t.dtype != torch.bool:
        if t.dtype not in _INT_DTYPES or bool(((t != 0) & (t != 1)).any()):
            raise DataError(f"{name}: binary codes must be bool or 0/1 integers (see tvt.eval.binary.ITQ.encode)")
        t = t != 0
    return t.to(torch.float32).mul_(2.0).sub_(1.0).contiguous()


def _to_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise DataError(f"{name}: cannot be read as an array ({exc})") from exc
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{name}: expected numbers, got numpy dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.dtype != np.uint8:
        arr = arr.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(arr))


__all__ = ["check_features", "check_labels", "check_codes"]
