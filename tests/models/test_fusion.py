"""Fusion ViT (spec §2.2, [Q10]) and the Student wrapper (spec §2.4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tvt.errors import InputError
from tvt.models.fusion import FusionViT
from tvt.models.heads import DINOHead, FusionHead
from tvt.models.vit import ViTArch, build_vit, count_parameters, resample_pos_grid
from tvt.models.wrappers import Student


def fusion_from_vit(vit, token_num: int, pos_resample: str) -> FusionViT:
    """Fusion ViT sharing the ViT's weights; every special token and its pos row = the CLS ones."""
    fv = FusionViT(vit.arch, token_num=token_num, pos_resample=pos_resample).eval()
    state = {k: v for k, v in vit.state_dict().items() if k not in ("cls_token", "pos_embed")}
    for name in fv.token_names:
        state[name] = vit.cls_token.detach()
    pos = vit.pos_embed.detach()
    state["pos_embed"] = torch.cat([pos[:, :1]] * token_num + [pos[:, 1:]], 1)
    fv.load_state_dict(state)
    return fv


@pytest.mark.parametrize("token_num", [2, 3])
def test_exact_mode_equals_timm_blocks_on_the_same_sequence(tools, token_num):
    vit = tools.randomize_(build_vit(tools.ARCH), 11).eval()
    fv = fusion_from_vit(vit, token_num, "exact")
    x = tools.images(3)
    pos = vit.pos_embed.detach()
    special = (vit.cls_token + pos[:, :1]).expand(3, token_num, -1)
    seq = torch.cat([special, tools.patch_tokens(vit, x) + pos[:, 1:]], 1)
    ref = tools.blocks_ref(vit, seq)
    outs = fv(x)
    assert len(outs) == token_num
    for i, z in enumerate(outs):
        assert z.shape == (3, tools.ARCH.embed_dim)
        assert torch.allclose(z, ref[:, i], atol=1e-5)
    assert torch.equal(outs[0], outs[-1])  # identical tokens and rows give identical outputs [Q11]


def test_outputs_are_in_sequence_order(tools):
    fv = tools.randomize_(FusionViT(tools.ARCH, token_num=3, pos_resample="exact"), 12).eval()
    x = tools.images(2)
    pos = fv.pos_embed.detach()
    special = torch.cat([getattr(fv, n) for n in ("dist_img_token", "dist_skt_token", "fusion_token")], 1) + pos[:, :3]
    seq = torch.cat([special.expand(2, -1, -1), tools.patch_tokens(fv, x) + pos[:, 3:]], 1)
    ref = tools.blocks_ref(fv, seq)
    for i, z in enumerate(fv(x)):
        assert torch.allclose(z, ref[:, i], atol=1e-5)


def test_fidelity_mode_resamples_the_grid_even_at_native_size(tools):
    fv = tools.randomize_(FusionViT(tools.ARCH, token_num=2), 13).eval()
    g, d = tools.ARCH.grid, tools.ARCH.embed_dim
    x = tools.images(2)
    pos = fv.pos_embed.detach()
    grid = tools.bicubic_ref(pos[0, 2:].reshape(g, g, d), (g, g), ((g + 0.1) / g,) * 2).reshape(1, g * g, d)
    assert not torch.allclose(grid, pos[:, 2:], atol=1e-3)  # it really changes the embedding
    special = torch.cat([fv.dist_img_token, fv.fusion_token], 1) + pos[:, :2]  # special rows unchanged
    seq = torch.cat([special.expand(2, -1, -1), tools.patch_tokens(fv, x) + grid], 1)
    ref = tools.blocks_ref(fv, seq)
    for i, z in enumerate(fv(x)):
        assert torch.allclose(z, ref[:, i], atol=1e-5)
    # At another size both modes use the same rule.
    exact = FusionViT(tools.ARCH, token_num=2, pos_resample="exact").eval()
    exact.load_state_dict(fv.state_dict())
    big = tools.images(1, size=48)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(fv(big), exact(big)))


def test_q10_resampling_matches_hand_written_bicubic(tools):
    g, d = 28, 5
    grid = torch.randn(1, g * g, d, generator=torch.Generator().manual_seed(0))
    out = resample_pos_grid(grid, (g, g))
    ref = tools.bicubic_ref(grid[0].reshape(g, g, d), (g, g), (28.1 / 28, 28.1 / 28)).reshape(1, g * g, d)
    assert torch.allclose(out, ref, atol=1e-5)
    assert not torch.allclose(out, grid, atol=1e-2)


def test_q10_worked_positions():
    scale = 28.1 / 28
    src = {dst: (dst + 0.5) / scale - 0.5 for dst in (0, 14, 27)}
    assert {k: round(v, 3) for k, v in src.items()} == {0: -0.002, 14: 13.948, 27: 26.902}
    # A one-hot row 26 shows the off-diagonal weight that reaches output row 27: about 0.087.
    grid = torch.zeros(28, 28, 1)
    grid[26] = 1.0
    out = resample_pos_grid(grid.reshape(1, 784, 1), (28, 28)).reshape(28, 28)
    assert out[27, 5].item() == pytest.approx(0.087, abs=1e-3)
    assert torch.allclose(out[27], out[27, 0].expand(28), atol=1e-6)  # constant along each row


def test_parameter_counts_spec_2_5():
    with torch.device("meta"):
        fd2 = FusionViT(ViTArch(), token_num=2)
        fd3 = FusionViT(ViTArch(), token_num=3)
        student = Student(FusionViT(ViTArch()), DINOHead(384), FusionHead(384, 104))
    assert count_parameters(fd2) == 21_671_040
    assert count_parameters(fd3) == 21_671_808
    assert fd2.pos_embed.shape == (1, 786, 384) and fd3.pos_embed.shape == (1, 787, 384)
    assert count_parameters(student) == 49_559_272
    assert count_parameters(student, trainable_only=True) == 49_493_736  # weight_g frozen


def test_bad_arguments():
    with pytest.raises(ValueError):
        FusionViT(ViTArch(img_size=32, embed_dim=32, depth=1, num_heads=1), token_num=4)
    with pytest.raises(ValueError):
        FusionViT(ViTArch(img_size=32, embed_dim=32, depth=1, num_heads=1), pos_resample="nearest")


# ---------------------------------------------------------------- Student wrapper (spec §2.4)


def test_student_forward_token_num_2(tools, student):
    x = tools.images(3)
    z_dist, z_fus = student.backbone(x)
    for modality in ("img", "skt"):  # one distillation token and head for both [Q8]
        out = student(x, modality)
        assert torch.allclose(out.dino_logits, student.head(z_dist), atol=1e-5)
        logits, f = student.head_fusion(z_fus)
        assert torch.allclose(out.cls_logits, logits, atol=1e-5) and torch.allclose(out.f, f, atol=1e-6)
        assert out.cls_logits.shape == (3, tools.NUM_CLASSES) and out.dino_logits.shape == (3, tools.OUT_DIM)
        assert torch.allclose(out.f.norm(dim=1), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError):
        student(x, "photo")
    with pytest.raises(InputError):
        student.features(x, "sketch")


def test_student_forward_token_num_3(tools):
    student = tools.make_student(2, token_num=3)
    x = tools.images(2)
    z_img, z_skt, z_fus = student.backbone(x)
    assert torch.allclose(student(x, "img").dino_logits, student.head(z_img), atol=1e-5)
    assert torch.allclose(student(x, "skt").dino_logits, student.head_skt(z_skt), atol=1e-5)
    d = student.head_skt.bottleneck(z_skt)
    f = F.normalize(student.head_fusion.mlp(z_fus), dim=-1)
    assert torch.allclose(student.features(x, "skt", 1), (z_fus + z_skt) / 2, atol=1e-6)
    assert torch.allclose(student.features(x, "skt", 3), F.normalize(f + d, dim=-1), atol=1e-5)
    with pytest.raises(ValueError):
        Student(student.backbone, student.head, student.head_fusion, None)


def test_features_return_idx_definitions(tools, student):
    x = tools.images(4)
    z_dist, z_fus = student.backbone(x)
    f = F.normalize(student.head_fusion.mlp(z_fus), dim=-1)
    dd = F.normalize(student.head.mlp(z_dist), dim=-1)
    expected = {0: z_fus, 1: (z_fus + z_dist) / 2, 2: f, 3: F.normalize((f + dd) / 2, dim=-1)}
    for idx, ref in expected.items():
        got = student.features(x, "img", idx)
        assert got.shape == ref.shape == (4, 64 if idx < 2 else 16)
        assert torch.allclose(got, ref, atol=1e-5)
        assert torch.allclose(student.features(x, "skt", idx), got, atol=1e-6)  # 2 tokens: modality-free
    with pytest.raises(InputError):
        student.features(x, "img", 4)


def test_student_accepts_a_list_of_crops(tools, student):
    crops = [tools.images(2, 32, 1), tools.images(1, 32, 2)]
    out = student(crops, "img")
    ref = student(torch.cat(crops), "img")
    assert torch.allclose(out.dino_logits, ref.dino_logits, atol=1e-5)
