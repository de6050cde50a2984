"""Attention maps of the fusion token: a probability distribution over patches, equal to timm's own
attention computation, and a figure file."""

from __future__ import annotations

import torch
from PIL import Image

from tvt.eval.attention import attention_figure, attention_for
from tvt.models.fusion import FusionViT
from tvt.models.vit import ViTArch


def _model() -> FusionViT:
    torch.manual_seed(0)
    return FusionViT(ViTArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), token_num=2).eval()


def test_attention_matches_explicit_softmax():
    m = _model()
    x = torch.randn(3, 3, 32, 32)
    maps = attention_for(m, x)
    assert maps.shape == (3, 4, 4)
    # reference: run timm's tokens through all but the last block, then the last attention by hand
    tokens = m.patch_embed(x)
    tokens = m._pos_embed(tokens)
    for blk in m.blocks[:-1]:
        tokens = blk(tokens)
    h = m.blocks[-1].norm1(tokens)
    a = m.blocks[-1].attn
    qkv = a.qkv(h).reshape(3, tokens.shape[1], 3, 2, 16).permute(2, 0, 3, 1, 4)
    w = torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1) * 16 ** -0.5, dim=-1).mean(1)
    ref = w[:, 1, 2:].reshape(3, 4, 4)  # fusion token = index 1; patches after 2 special tokens
    torch.testing.assert_close(maps, ref)
    assert torch.all(maps.sum((1, 2)) <= 1.0 + 1e-6)


def test_attention_figure(tmp_path):
    from tvt.data.transforms import eval_transform

    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (40, 40), (i * 80, 100, 200)).save(p)
        paths.append(p)
    out = attention_figure(_model(), eval_transform(32), paths[0], paths[1:], tmp_path / "att.png", thumb=32)
    with Image.open(out) as im:
        assert im.size == (3 * 32 + 2 * 4, 2 * 32 + 4)
