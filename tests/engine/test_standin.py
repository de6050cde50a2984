"""The demo's supervised stand-in for the pretrained image ViT (tvt.engine.standin)."""

from __future__ import annotations

import pytest
import torch

from tvt import config
from tvt.data.layout import load_split
from tvt.engine.standin import train_standin
from tvt.errors import ConfigError
from tvt.models.weights import load_teacher


def _cfg(tiny_overrides: list[str]) -> config.Config:
    return config.load([], list(tiny_overrides) + ["model.stem=conv"])


def test_standin_checkpoint_is_a_teacher_trained_on_training_classes_only(tiny_overrides, tmp_path):
    cfg = _cfg(tiny_overrides)
    path = train_standin(cfg, tmp_path / "image_vit", steps=6, batch_size=8, device="cpu", progress=False)
    state = torch.load(path, weights_only=True)
    split = load_split(cfg.data.root, cfg.data.dataset, cfg.data.split)
    assert state["stage"] == "image" and state["standin"] == "supervised"
    assert state["train_classes"] == list(split.train_classes)
    assert not set(state["train_classes"]) & set(split.test_classes)
    teacher = load_teacher(path, frozen=True)
    assert teacher.backbone.arch.stem == "conv" and teacher.backbone.arch.embed_dim == 32
    # Training moved the backbone away from its (seeded) initialisation, and nothing blew up.
    torch.manual_seed(cfg.train.seed)
    from tvt.models.vit import build_vit

    fresh = build_vit(teacher.backbone.arch).state_dict()
    trained = teacher.backbone.state_dict()
    assert all(torch.isfinite(v).all() for v in trained.values())
    assert not torch.equal(fresh["blocks.0.attn.qkv.weight"], trained["blocks.0.attn.qkv.weight"])
    out = teacher.embed(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 32) and torch.isfinite(out).all()


def test_standin_is_reused_not_retrained(tiny_overrides, tmp_path):
    cfg = _cfg(tiny_overrides)
    first = train_standin(cfg, tmp_path / "image_vit", steps=2, batch_size=8, device="cpu", progress=False)
    stamp = first.stat().st_mtime_ns
    again = train_standin(cfg, tmp_path / "image_vit", steps=2, batch_size=8, device="cpu", progress=False)
    assert again == first and first.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(("steps", "batch"), [(0, 8), (3, 0)])
def test_standin_rejects_empty_training(tiny_overrides, tmp_path, steps, batch):
    with pytest.raises(ConfigError, match="stand-in"):
        train_standin(_cfg(tiny_overrides), tmp_path / "x", steps=steps, batch_size=batch, device="cpu", progress=False)
