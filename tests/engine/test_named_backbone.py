"""TVT end to end on a backbone released without a DINO head (sketch.init_head=new), tiny and on CPU.

A random-init 2-block DINOv2 ViT-S/14 saved as .safetensors plays the downloaded backbone.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tvt import config
from tvt.errors import CheckpointError, ConfigError

NAME = "dinov2_vits14"


@pytest.fixture
def backbone_file(tmp_path) -> Path:
    from tvt.models.backbones import build_named_vit

    torch.manual_seed(0)
    vit = build_named_vit(NAME, 28, depth=2)
    path = tmp_path / "dinov2_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return path


def _cfg(tiny_overrides: list[str], *extra: str) -> config.Config:
    drop = ("model.", "data.img_size", "sketch.local_crops_size")
    keep = [o for o in tiny_overrides if not o.startswith(drop)]
    return config.load([], keep + [f"model.backbone={NAME}", "data.img_size=28", "sketch.local_crops_size=14",
                                   "model.out_dim=64", "model.head_hidden_dim=32", "model.head_bottleneck_dim=16",
                                   *extra])


def _stage_a(cfg: config.Config, modality: str, init: str, out: Path, **kw: object) -> Path:
    from tvt.engine.train_dino import train

    c = copy.deepcopy(cfg)
    c.sketch.modality, c.sketch.init, c.sketch.output_dir = modality, init, str(out)
    for k, v in kw.items():
        setattr(c.sketch, k, v)
    return train(c, resume=False, device="cpu", progress=False)


def test_grow_head_then_tvt(tiny_overrides, backbone_file, tmp_path):
    from tvt.engine.train_tvt import train
    from tvt.models.backbone_weights import load_named_backbone
    from tvt.models.encoder import load_encoder
    from tvt.models.weights import load_teacher

    cfg = _cfg(tiny_overrides, "sketch.epochs=1", "sketch.warmup_epochs=0", "train.epochs=1", "train.warmup_epochs=0",
               "train.max_steps_per_epoch=2")
    img = _stage_a(cfg, "photo", str(backbone_file), tmp_path / "image", init_head="new", freeze_backbone=True)
    teacher = load_teacher(img)
    # the head grew; the frozen backbone is bit-identical to the released weights
    original = load_named_backbone(backbone_file, NAME, 28).state_dict()
    assert all(torch.equal(v, original[k]) for k, v in teacher.backbone.state_dict().items())
    state = torch.load(img, map_location="cpu", weights_only=True)
    heads = [k for k in state["student"] if k.startswith("head.mlp.")]
    assert any(not torch.equal(state["student"][k], state["teacher"][k]) for k in heads), "the head did not learn"
    skt = _stage_a(cfg, "sketch", str(img), tmp_path / "sketch")
    cfg.train.image_teacher, cfg.train.sketch_teacher = str(img), str(skt)
    last = train(cfg, resume=False, device="cpu", progress=False)
    enc = load_encoder(last, return_idx=3)
    assert enc.kind == "tvt" and enc.patch_size == 14 and enc.img_size == 28
    x = torch.randn(2, 3, 28, 28)
    assert torch.isfinite(enc(x, "skt")).all()


def test_init_head_errors(tiny_overrides, backbone_file, tmp_path):
    from tvt.engine.train_dino import build_teacher

    with pytest.raises(CheckpointError, match="init_head=new"):  # weights without a head, paper path
        build_teacher(config.load([], tiny_overrides + [f"sketch.init={backbone_file}"]))
    with pytest.raises(ConfigError, match="needs model.backbone"):
        build_teacher(config.load([], tiny_overrides + [f"sketch.init={backbone_file}", "sketch.init_head=new"]))
    with pytest.raises(ConfigError, match="selection=last"):
        build_teacher(_cfg(tiny_overrides, f"sketch.init={backbone_file}", "sketch.init_head=new",
                           "sketch.freeze_backbone=true", "sketch.selection=holdout"))
