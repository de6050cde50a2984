"""Streaming feature extraction: order, and resuming an interrupted cached run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from tvt.eval import extract


class Ramp(Dataset):
    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at = n, fail_at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if self.fail_at is not None and i == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return torch.full((3, 2, 2), float(i)), i


def encode(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)[:, :2] * torch.tensor([1.0, 2.0])


def test_rows_in_dataset_order():
    f = extract.extract_features(encode, Ramp(23), batch_size=5, progress=False)
    assert f.shape == (23, 2) and f.dtype == np.float32
    np.testing.assert_array_equal(f[:, 0], np.arange(23))


def test_interrupted_cached_extraction_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(extract, "FLUSH_SECONDS", 0.0)  # flush after every batch
    cache = tmp_path / "f.npy"
    with pytest.raises(KeyboardInterrupt):
        extract.extract_features(encode, Ramp(23, fail_at=12), batch_size=5, progress=False, cache=cache, key="k")
    done = json.loads(cache.with_suffix(".json").read_text())["rows_done"]
    assert done == 10  # two full batches were flushed before the failing one
    seen = []
    orig = Ramp.__getitem__
    monkeypatch.setattr(Ramp, "__getitem__", lambda self, i: (seen.append(i), orig(self, i))[1])
    f = extract.extract_features(encode, Ramp(23), batch_size=5, progress=False, cache=cache, key="k")
    np.testing.assert_array_equal(f[:, 0], np.arange(23))
    assert min(i for i in seen if i != 0) == 10  # resumed at row 10 (row 0 is read once to size the output)
    # a different fingerprint starts over
    seen.clear()
    extract.extract_features(encode, Ramp(23), batch_size=5, progress=False, cache=cache, key="other")
    assert sorted(set(seen)) == list(range(23))
