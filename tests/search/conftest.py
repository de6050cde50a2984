"""Fixtures for the search tests: a stand-in encoder, a small photo folder, a tiny real checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from _helpers import tiny_checkpoint  # noqa: F401  (shared with tests/search, serve, robustness)


class ProjectionEncoder:
    """Deterministic stand-in for a model: a fixed random projection of the (16 px) image.

    Counts the images it embeds; raises KeyboardInterrupt on call number ``interrupt_at``.
    """

    kind, dim, img_size = "proj", 16, 16

    def __init__(self, seed: int = 0, interrupt_at: int | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(3 * 16 * 16, self.dim, generator=g)
        self.calls, self.seen, self.interrupt_at = 0, 0, interrupt_at

    def __call__(self, x: torch.Tensor, modality: str = "skt") -> torch.Tensor:
        self.calls += 1
        if self.interrupt_at is not None and self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        self.seen += len(x)
        return x.flatten(1) @ self.w


def write_photo(path: Path, seed: int, size: int = 24) -> Path:
    """A random-colour blocky image (PNG or JPEG by suffix)."""
    rng = np.random.default_rng(seed)
    arr = np.kron(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), np.ones((size // 4, size // 4, 1), np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """12 photos in nested folders: a/0..3.png, b/c/4..7.png, 8..11.jpg at the top."""
    root = tmp_path / "photos"
    for i in range(12):
        sub = "a" if i < 4 else ("b/c" if i < 8 else ".")
        write_photo(root / sub / f"{i}.{'jpg' if i >= 8 else 'png'}", seed=i)
    return root


@pytest.fixture
def encoder() -> ProjectionEncoder:
    return ProjectionEncoder()


def identity(enc: ProjectionEncoder, sha: str = "0" * 64):
    """The ModelIdentity recorded for the stand-in encoder (``sha`` plays the checkpoint checksum)."""
    from tvt.search import ModelIdentity

    return ModelIdentity(kind=enc.kind, dim=enc.dim, img_size=enc.img_size, checkpoint="proj.pth", sha256=sha)


@pytest.fixture
def helpers():
    """Test helpers as a namespace (conftest modules are not importable by name)."""
    from types import SimpleNamespace

    return SimpleNamespace(Encoder=ProjectionEncoder, identity=identity, write_photo=write_photo,
                           tiny_checkpoint=tiny_checkpoint)


@pytest.fixture(scope="session")
def synth_photos(tmp_path_factory) -> Path:
    """24 synthetic photos (4 classes x 6) at 32 px and their sketches: returns the dataset dir."""
    from tvt.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth"), num_classes=4, seed=0, photos_per_class=6,
                    sketches_per_class=2, size=32, progress=False)
