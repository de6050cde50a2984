"""Fixtures for the web-app tests: a real tiny TVT checkpoint and an index of synthetic photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A real (randomly initialised) 1-block, 32-wide TVT student at 32 px in our format."""
    from tvt.models.heads import DINOHead
    from tvt.models.vit import ViTArch, build_vit
    from tvt.models.weights import arch_hints, init_student_from_teacher

    torch.manual_seed(seed)
    arch = ViTArch(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    vit, head = build_vit(arch), DINOHead(32, out_dim=64, hidden_dim=32, bottleneck_dim=16)
    state = {**{f"backbone.{k}": v for k, v in vit.state_dict().items()},
             **{f"head.{k}": v for k, v in head.state_dict().items()}}
    student = init_student_from_teacher(state, num_classes=4)
    torch.save({"format": "tvt", "version": 1, "stage": "tvt", "student": student.state_dict(),
                "arch": arch_hints(student)}, path)
    return path


def build_index(photos: Path, out: Path, ckpt: Path) -> Path:
    from tvt.cli import main

    assert main(["index", str(photos), "--checkpoint", str(ckpt), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth")


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
