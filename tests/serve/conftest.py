"""Fixtures for the web-app tests: a real tiny TVT checkpoint and an index of synthetic photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _helpers import tiny_checkpoint  # noqa: F401  (shared with tests/search, serve, robustness)


def build_index(photos: Path, out: Path, ckpt: Path) -> Path:
    from tvt.cli import main

    assert main(["index", str(photos), "--checkpoint", str(ckpt), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """Synthetic dataset (4 classes x 6 photos, 2 sketches each, 48 px)."""
    from tvt.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth"), num_classes=4, seed=0, photos_per_class=6,
                    sketches_per_class=2, size=48, progress=False)


@pytest.fixture(scope="session")
def index_dir(synth_dir, tiny_ckpt, tmp_path_factory) -> Path:
    """An index of the synthetic photos, shared by the tests that do not modify it."""
    return build_index(synth_dir / "photo", tmp_path_factory.mktemp("index") / "idx", tiny_ckpt)


@pytest.fixture
def private_index(synth_dir, tiny_ckpt, tmp_path) -> tuple[Path, Path]:
    """(photo folder, index) copies that a test may change."""
    photos = shutil.copytree(synth_dir / "photo", tmp_path / "photos")
    return photos, build_index(photos, tmp_path / "idx", tiny_ckpt)
