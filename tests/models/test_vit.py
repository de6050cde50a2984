"""Base ViT (spec §2.1) against a hand-written forward, vanilla timm, and §2.5 parameter counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from tvt.models.vit import ViTArch, build_vit, count_parameters, resample_pos_grid
from tvt.models.wrappers import Teacher


def manual_vit(vit, x: torch.Tensor, pos: torch.Tensor, heads: int) -> torch.Tensor:
    """Spec §2.1 written out: conv patches, CLS, +pos, pre-norm blocks, final LN, token 0."""
    sd = {k: v.double() for k, v in vit.state_dict().items()}
    x = x.double()
    p = sd["patch_embed.proj.weight"].shape[-1]
    tok = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p).flatten(2).transpose(1, 2)
    n, _, d = tok.shape
    h = torch.cat([sd["cls_token"].expand(n, -1, -1), tok], 1) + pos.double()

    def ln(t, key):
        return F.layer_norm(t, (d,), sd[f"{key}.weight"], sd[f"{key}.bias"], eps=1e-6)

    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        b = f"blocks.{i}"
        y = ln(h, f"{b}.norm1") @ sd[f"{b}.attn.qkv.weight"].T + sd[f"{b}.attn.qkv.bias"]
        q, k, v = y.reshape(n, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5, dim=-1)
        o = (att @ v).transpose(1, 2).reshape(n, -1, d)
        h = h + o @ sd[f"{b}.attn.proj.weight"].T + sd[f"{b}.attn.proj.bias"]
        m = ln(h, f"{b}.norm2") @ sd[f"{b}.mlp.fc1.weight"].T + sd[f"{b}.mlp.fc1.bias"]
        m = 0.5 * m * (1 + torch.erf(m / math.sqrt(2)))  # exact GELU
        h = h + m @ sd[f"{b}.mlp.fc2.weight"].T + sd[f"{b}.mlp.fc2.bias"]
    return ln(h, "norm")[:, 0].float()


def test_forward_matches_hand_written_vit(tools):
    arch = ViTArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    vit = tools.randomize_(build_vit(arch), 3).eval()
    x = tools.images(2)
    ref = manual_vit(vit, x, vit.pos_embed.detach(), heads=2)
    assert torch.allclose(vit(x), ref, atol=1e-5)


def test_native_size_equals_vanilla_timm(tools):
    vit = tools.randomize_(build_vit(tools.ARCH), 4).eval()
    a = tools.ARCH
    plain = VisionTransformer(img_size=a.img_size, patch_size=a.patch_size, embed_dim=a.embed_dim, depth=a.depth,
                              num_heads=a.num_heads, mlp_ratio=a.mlp_ratio, num_classes=0).eval()
    plain.load_state_dict(vit.state_dict())  # identical key names
    x = tools.images(3)
    assert torch.allclose(vit(x), plain(x), atol=1e-6)


def test_other_size_uses_dino_interpolation(tools):
    vit = tools.randomize_(build_vit(tools.ARCH), 5).eval()
    g, d = tools.ARCH.grid, tools.ARCH.embed_dim
    x = tools.images(2, size=48)  # 6x6 grid from a 4x4 embedding
    grid = vit.pos_embed.detach()[0, 1:].reshape(g, g, d)
    new = tools.bicubic_ref(grid, (6, 6), ((6 + 0.1) / g, (6 + 0.1) / g)).reshape(1, 36, d)
    pos = torch.cat([vit.pos_embed.detach()[:, :1], new], 1)
    ref = manual_vit(vit, x, pos, heads=tools.ARCH.num_heads)
    assert torch.allclose(vit(x), ref, atol=1e-5)


def test_non_square_grid_resampling_orientation(tools):
    g, d = 4, 3
    grid = torch.randn(1, g * g, d)
    out = resample_pos_grid(grid, (2, 6))  # 2 rows, 6 columns
    ref = tools.bicubic_ref(grid[0].reshape(g, g, d), (2, 6), (2.1 / g, 6.1 / g)).reshape(1, 12, d)
    assert torch.allclose(out, ref, atol=1e-5)


def test_non_multiple_input_is_cropped_like_a_strided_conv(tools):
    vit = tools.randomize_(build_vit(tools.ARCH), 6).eval()
    x = tools.images(2, size=37)
    assert torch.allclose(vit(x), vit(x[..., :32, :32]), atol=1e-6)
    with pytest.raises(ValueError):
        vit(tools.images(1, size=5))


def test_structure_and_key_names(tools):
    vit = build_vit(ViTArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), drop_path_rate=0.3)
    assert vit.blocks[0].attn.qkv.bias is not None
    assert all(m.eps == 1e-6 for m in vit.modules() if isinstance(m, torch.nn.LayerNorm))
    assert isinstance(vit.blocks[0].mlp.act, torch.nn.GELU) and vit.blocks[0].mlp.act.approximate == "none"
    assert isinstance(vit.head, torch.nn.Identity) and isinstance(vit.fc_norm, torch.nn.Identity)
    keys = set(vit.state_dict())
    expected = {"cls_token", "pos_embed", "norm.weight", "norm.bias"}
    expected |= {"patch_embed.proj.weight", "patch_embed.proj.bias"}
    for i in range(2):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
    assert keys == expected
    assert vit.pos_embed.shape == (1, 1 + 16, 32)
    rates = [blk.drop_path1.drop_prob if hasattr(blk.drop_path1, "drop_prob") else 0.0 for blk in vit.blocks]
    assert rates == pytest.approx([0.0, 0.3])  # rate * i / (depth - 1)


def test_parameter_counts_spec_2_5():
    with torch.device("meta"):
        s8 = build_vit(ViTArch())
        s16 = build_vit(ViTArch(patch_size=16))
    assert count_parameters(s8) == 21_670_272
    assert count_parameters(s16) == 21_665_664
    assert count_parameters(s8.blocks[0]) == 1_774_464


def test_teacher_groups_crops_by_width(tools):
    teacher = tools.make_teacher(7)
    calls = []
    teacher.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    crops = [tools.images(2, 32, 1), tools.images(2, 32, 2), tools.images(3, 16, 3), tools.images(1, 32, 4)]
    out = teacher(crops)
    assert calls == [4, 3, 1]  # runs of equal width, in order
    ref = torch.cat([teacher.head(teacher.backbone(c)) for c in crops])
    assert out.shape == (8, tools.OUT_DIM) and torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(teacher.embed(crops[0]), teacher.backbone(crops[0]))
    assert isinstance(teacher, Teacher)
