"""Named TVT models: sizes agree with the configs they stand for and with timm's ViT-S/8."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import tvt
from tvt import config
from tvt.errors import ConfigError
from tvt.models import MODEL_VARIANTS, create_model

REPO = Path(__file__).resolve().parents[2]


def _n(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name, cfg_files", [
    ("tvt-vit-s8", []),  # the paper's sizes are the config defaults
    ("tvt-tiny", [REPO / "configs" / "tiny_cpu.yaml"]),
    ("tvt-demo", [REPO / "src" / "tvt" / "configs" / "demo.yaml"]),
])
def test_variant_matches_its_config(name, cfg_files):
    cfg = config.load(cfg_files)
    v, m = MODEL_VARIANTS[name], cfg.model
    assert (v.arch.img_size, v.arch.patch_size, v.arch.embed_dim, v.arch.depth, v.arch.num_heads, v.arch.stem) == (
        cfg.data.img_size, m.patch_size, m.embed_dim, m.depth, m.num_heads, m.stem)
    assert (v.token_num, v.out_dim, v.head_hidden_dim, v.head_bottleneck_dim) == (
        m.token_num, m.out_dim, m.head_hidden_dim, m.head_bottleneck_dim)


def test_paper_model_is_timm_vit_s8_plus_the_fusion_token():
    # built on the meta device: shapes only, no memory or init cost
    with torch.device("meta"):
        model = tvt.create_model("tvt-vit-s8", num_classes=104)
        ref = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0)
    dim = ref.embed_dim
    # one more special token than timm's CLS, and its row in pos_embed
    assert _n(model.backbone) == _n(ref) + 2 * dim * (model.token_num - 1)
    ours = {k: v.shape for k, v in model.backbone.state_dict().items() if k.startswith(("blocks.", "patch_embed."))}
    theirs = {k: v.shape for k, v in ref.state_dict().items() if k.startswith(("blocks.", "patch_embed."))}
    assert ours == theirs
    assert model.head.last_layer.out_features == config.ModelConfig().out_dim
    assert model.head_fusion.fc.out_features == 104


def test_tiny_model_forward_and_backward():
    torch.manual_seed(0)
    model = create_model("tvt-tiny", num_classes=5)
    side = MODEL_VARIANTS["tvt-tiny"].arch.img_size
    out = model(torch.rand(3, 3, side, side), "skt")
    assert out.cls_logits.shape == (3, 5) and out.dino_logits.shape == (3, MODEL_VARIANTS["tvt-tiny"].out_dim)
    torch.testing.assert_close(out.f.norm(dim=1), torch.ones(3))
    out.cls_logits.sum().backward()
    assert model.backbone.fusion_token.grad is not None


def test_models_do_not_share_the_registry_arch():
    a = create_model("tvt-tiny", num_classes=2)
    a.backbone.arch.img_size = 999
    assert MODEL_VARIANTS["tvt-tiny"].arch.img_size != 999
    assert create_model("tvt-tiny", num_classes=2).backbone.arch.img_size == MODEL_VARIANTS["tvt-tiny"].arch.img_size


@pytest.mark.parametrize("name, kwargs, words", [
    ("vit-s8", {"num_classes": 3}, ["unknown model 'vit-s8'", "tvt-vit-s8"]),
    ("tvt-tiny", {"num_classes": 0}, ["num_classes", "positive"]),
    ("tvt-tiny", {"num_classes": True}, ["num_classes"]),
])
def test_bad_requests_name_what_is_wrong(name, kwargs, words):
    with pytest.raises(ConfigError) as err:
        create_model(name, **kwargs)
    assert all(w in str(err.value) for w in words)
