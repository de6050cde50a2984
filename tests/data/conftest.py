"""Fixtures that build tiny dataset trees in ``tmp_path`` with PIL."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def save_image(path: Path, size: int = 8, value: int = 0, mode: str = "RGB") -> Path:
    """Write a small image whose pixels encode ``value`` (so images are distinguishable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path


def build_dataset(root: Path, dataset: str = "ds", photos: Mapping[str, int] | None = None,
                  sketches: Mapping[str, int] | None = None, all_classes: Sequence[str] | None = None,
                  splits: Mapping[str, Sequence[str]] | None = None, size: int = 8) -> Path:
    """``root/dataset/{photo,sketch}/<class>/<i>.png`` plus split files; returns ``root/dataset``.

    Defaults: classes a, b, c, d with 3 photos and 2 sketches each, split ``zeroshot`` = [d, b].
    """
    photos = {"a": 3, "b": 3, "c": 3, "d": 3} if photos is None else photos
    sketches = {"a": 2, "b": 2, "c": 2, "d": 2} if sketches is None else sketches
    all_classes = sorted(set(photos) | set(sketches)) if all_classes is None else all_classes
    splits = {"zeroshot": ["d", "b"]} if splits is None else splits
    ds = root / dataset
    value = 0
    for modality, counts in (("photo", photos), ("sketch", sketches)):
        (ds / modality).mkdir(parents=True, exist_ok=True)
        for cls, n in counts.items():
            (ds / modality / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                value += 1
                save_image(ds / modality / cls / f"{i:03d}.png", size=size, value=value)
    (ds / "split").mkdir(parents=True, exist_ok=True)
    (ds / "split" / "all_classes.txt").write_text("\n".join(all_classes) + "\n")
    for name, test in splits.items():
        (ds / "split" / f"{name}_classes.txt").write_text("\n".join(test) + "\n")
    return ds


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_dataset(**build_dataset kwargs)`` builds under ``tmp_path / 'data'``."""
    return lambda **kw: build_dataset(tmp_path / "data", **kw)


@pytest.fixture
def image_writer() -> Callable[..., Path]:
    return save_image
