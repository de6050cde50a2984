"""Shared fixtures: a tiny synthetic dataset and a tiny model config for CPU tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)
sys.path.insert(0, str(Path(__file__).parent))  # for tests/_helpers.py

from _helpers import tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A real tiny TVT student checkpoint (see tests/_helpers.py)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A 6-class synthetic dataset at 32 px (2 unseen classes), shared by the whole session."""
    from tvt.data.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, num_classes=6, seed=0, photos_per_class=8, sketches_per_class=8, size=32, num_unseen=2,
             progress=False)
    return root


@pytest.fixture
def tiny_overrides(synth_root: Path, tmp_path: Path) -> list[str]:
    """Config overrides for a 1-block, 32-wide ViT on 32 px images (fast on CPU); outputs in tmp_path."""
    root, out = synth_root, tmp_path
    return [
        f"data.root={root}", "data.dataset=synth", "data.split=zeroshot", "data.img_size=32", "data.num_workers=0",
        "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.out_dim=64", "model.head_hidden_dim=32",
        "model.head_bottleneck_dim=16",
        f"sketch.output_dir={out / 'stage_a'}", "sketch.epochs=2", "sketch.batch_size=8", "sketch.accum_steps=2",
        "sketch.local_crops=2", "sketch.local_crops_size=16", "sketch.warmup_epochs=1", "sketch.selection=last",
        "sketch.max_steps_per_epoch=2", "sketch.warmup_teacher_temp_epochs=1",
        f"train.output_dir={out / 'tvt'}", "train.epochs=2", "train.batch_size=8", "train.accum_steps=2",
        "train.skt_factor=2", "train.warmup_epochs=1", "train.max_steps_per_epoch=3", "train.align_uniform_epochs=1",
        "train.warmup_teacher_temp_epochs=1", "train.log_every=1",
        "eval.batch_size=16", "eval.grid_queries=2", "eval.grid_k=4",
    ]
