"""Named timm backbones (DINO, DINOv2 +/- registers, CLIP, SigLIP): TVT on each, weight formats.

Every model is a random-init timm model at a small size (depth 2, 28-32 px); nothing is downloaded.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tvt.errors import CheckpointError, ConfigError
from tvt.losses.dino import DINOCenter
from tvt.losses.hypersphere import CenterAlignment
from tvt.losses.objective import tvt_loss
from tvt.models.backbone_weights import load_named_backbone
from tvt.models.backbones import BACKBONES, build_named_vit, pos_prefix_rows
from tvt.models.encoder import load_encoder
from tvt.models.heads import DINOHead
from tvt.models.weights import arch_hints, init_student_from_teacher, load_teacher
from tvt.models.wrappers import Teacher

FAMILIES = sorted(BACKBONES)
OUT_DIM, CLASSES = 32, 3


def small(name: str) -> int:
    """Two patches per side."""
    return 2 * (14 if "patch14" in BACKBONES[name].timm_name else 16)


def tiny_vit(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    vit = build_named_vit(name, small(name), depth=2)
    with torch.no_grad():  # layer scale starts at 1e-5 in DINOv2: make every block matter
        for n, p in vit.named_parameters():
            if n.endswith(("gamma", "cls_token", "reg_token")):
                p.normal_(0, 0.5)
    return vit.eval()


def tiny_teacher(name: str, seed: int = 0) -> Teacher:
    vit = tiny_vit(name, seed)
    return Teacher(vit, DINOHead(vit.embed_dim, OUT_DIM, hidden_dim=16, bottleneck_dim=8)).eval()


def x_of(name: str, n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, small(name), small(name), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", FAMILIES)
def test_family_follows_backbone(name):
    vit = tiny_vit(name)
    spec = BACKBONES[name]
    assert vit.arch.patch_size == (14 if spec.family == "dinov2" else (8 if name == "dino_vits8" else 16))
    assert vit.arch.img_size == small(name) and vit.arch.depth == 2
    if spec.family == "clip":
        assert vit.arch.mean != (0.485, 0.456, 0.406)  # CLIP's constants are not ImageNet's
    if spec.family == "siglip":
        assert vit.arch.mean == (0.5, 0.5, 0.5) and vit.cls_token is None
    if name.endswith("_reg"):
        assert vit.reg_token.shape[1] == 4
    assert vit(x_of(name)).shape == (4, vit.embed_dim)


@pytest.mark.parametrize("name", FAMILIES)
def test_student_init_and_token_layout(name):
    """The fusion ViT's sequence equals the teacher's blocks run on [tokens, registers, patches + pos]."""
    teacher = tiny_teacher(name)
    torch.manual_seed(0)
    student = init_student_from_teacher(teacher, num_classes=CLASSES, token_num=2).eval()
    fusion, vit = student.backbone, teacher.backbone
    rows = pos_prefix_rows(vit)
    if vit.cls_token is not None:  # every special token = CLS + its position row (none without one)
        start = vit.cls_token + (vit.pos_embed[:, :1] if rows else 0)
        assert all(torch.equal(getattr(fusion, t), start) for t in fusion.token_names)
    assert torch.equal(fusion.vit.pos_embed, vit.pos_embed[:, rows:])
    x = x_of(name)
    with torch.no_grad():
        patches = vit.patch_embed(x)
        patches = patches.reshape(len(x), -1, vit.embed_dim) + vit.pos_embed[:, rows:]
        prefix = [fusion.special_tokens().expand(len(x), -1, -1)]
        if vit.reg_token is not None:
            reg = vit.reg_token + (vit.pos_embed[:, 1:rows] if rows else 0)
            prefix.append(reg.expand(len(x), -1, -1))
        ref = vit.norm(vit.blocks(vit.norm_pre(torch.cat(prefix + [patches], dim=1))))
        got = fusion.forward_features(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # heads start as the teacher's, as spec §3.3
    assert torch.equal(student.head.last_layer.weight_v, teacher.head.last_layer.weight_v)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_tvt_forward_and_training_step(name):
    teacher = tiny_teacher(name)
    torch.manual_seed(0)
    student = init_student_from_teacher(teacher, num_classes=CLASSES, token_num=3).train()
    x, y = x_of(name), torch.tensor([0, 1, 2, 0])
    out = student(x, "skt")
    assert out.dino_logits.shape == (4, OUT_DIM) and out.cls_logits.shape == (4, CLASSES)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    terms = tvt_loss(out, teacher(x).detach(), y, "skt", dino_center=DINOCenter(OUT_DIM, names=("img", "skt")),
                     ca=CenterAlignment(CLASSES, dim=out.f.shape[1]), teacher_temp=0.04, w_t=1.0)
    before = student.backbone.fusion_token.detach().clone()
    terms["objective"].backward()
    assert torch.isfinite(terms["objective"])
    assert student.backbone.fusion_token.grad is not None
    assert student.backbone.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, student.backbone.fusion_token)
    for idx in range(4):
        assert student.features(x, "img", idx).shape[0] == 4


# ---------------------------------------------------------------- weight formats


def _same(a: torch.nn.Module, b: torch.nn.Module, name: str) -> None:
    x = x_of(name)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("name", ["dinov2_vits14_reg", "clip_vitb16", "siglip_vitb16"])
def test_weight_formats_round_trip(name, tmp_path):
    from timm.models._hub import save_for_hf

    vit = tiny_vit(name)
    state = vit.state_dict()
    torch.save(state, tmp_path / "timm.pth")
    torch.save({"state_dict": state}, tmp_path / "wrapped.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    save_for_hf(vit, str(tmp_path / "hf"), safe_serialization=True)
    save_for_hf(vit, str(tmp_path / "hf_bin"), safe_serialization=False)
    for path in ("timm.pth", "wrapped.pth", "w.safetensors"):
        _same(load_named_backbone(tmp_path / path, name, small(name)), vit, name)
    for folder in ("hf", "hf_bin"):  # the folder names its own architecture
        loaded = load_named_backbone(tmp_path / folder, None, small(name))
        assert loaded.arch.timm_name.split(".")[0] == BACKBONES[name].timm_name.split(".")[0]
        _same(loaded, vit, name)


def test_official_dinov2_layout_with_registers(tmp_path):
    """DINOv2's own release layout (register_tokens, CLS row in pos_embed, mask_token) loads equal."""
    vit = tiny_vit("dinov2_vits14_reg")
    state = dict(vit.state_dict())
    reg, cls, pos = state.pop("reg_token"), state.pop("cls_token"), state.pop("pos_embed")
    cls_pos = torch.randn(1, 1, pos.shape[-1])
    official = {**state, "register_tokens": reg, "cls_token": cls - cls_pos,
                "pos_embed": torch.cat([cls_pos, pos], dim=1), "mask_token": torch.zeros(1, pos.shape[-1])}
    torch.save(official, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    loaded = load_named_backbone(tmp_path / "dinov2_vits14_reg4_pretrain.pth", "dinov2_vits14_reg",
                                 small("dinov2_vits14_reg"))
    x = x_of("dinov2_vits14_reg")
    torch.testing.assert_close(loaded(x), vit(x), rtol=1e-5, atol=1e-5)


def test_dino_full_checkpoint_teacher_backbone(tmp_path):
    vit = tiny_vit("dino_vits16")
    teacher = {f"backbone.{k}": v for k, v in vit.state_dict().items()}
    torch.save({"teacher": teacher, "epoch": 3}, tmp_path / "dino_full.pth")
    _same(load_named_backbone(tmp_path / "dino_full.pth", "dino_vits16", 32), vit, "dino_vits16")


def test_weight_errors_speak(tmp_path):
    vit = tiny_vit("dino_vits16")
    torch.save(vit.state_dict(), tmp_path / "s16.pth")
    with pytest.raises(CheckpointError, match="patches"):
        load_named_backbone(tmp_path / "s16.pth", "dinov2_vits14", 28)
    with pytest.raises(ConfigError, match="unknown backbone"):
        load_named_backbone(tmp_path / "s16.pth", "not_a_vit_name", 32)
    with pytest.raises(CheckpointError, match="pass --backbone"):
        load_named_backbone(tmp_path / "s16.pth", None, 32)
    (tmp_path / "tf").mkdir()
    (tmp_path / "tf" / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    (tmp_path / "tf" / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="transformers"):
        load_named_backbone(tmp_path / "tf", None)
    state = vit.state_dict()
    state["blocks.1.mlp.fc2.weight"] = state["blocks.1.mlp.fc2.weight"].clone()
    state["blocks.1.mlp.fc2.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"nan\.pth.*blocks\.1\.mlp\.fc2\.weight.*non-finite"):
        load_named_backbone(tmp_path / "nan.pth", "dino_vits16", 32)


# ---------------------------------------------------------------- our checkpoints with a named backbone


@pytest.mark.parametrize("name", ["dinov2_vits14_reg", "siglip_vitb16"])
def test_named_teacher_and_student_checkpoints(name, tmp_path):
    teacher = tiny_teacher(name)
    config = {"model": {"backbone": name}}
    torch.save({"format": "tvt", "stage": "image", "teacher": teacher.state_dict(), "config": config,
                "arch": {"num_heads": teacher.backbone.blocks[0].attn.num_heads}}, tmp_path / "a.pth")
    loaded = load_teacher(tmp_path / "a.pth", frozen=True)
    x = x_of(name)
    torch.testing.assert_close(loaded(x), teacher(x))
    torch.manual_seed(0)
    student = init_student_from_teacher(teacher, num_classes=CLASSES).eval()
    torch.save({"format": "tvt", "stage": "tvt", "student": student.state_dict(), "arch": arch_hints(student),
                "config": config, "dataset": "sketchy", "train_classes": ["a", "b", "c"]}, tmp_path / "b.pth")
    enc = load_encoder(tmp_path / "b.pth", return_idx=3)
    assert enc.kind == "tvt" and enc.mean == tuple(teacher.backbone.arch.mean)
    torch.testing.assert_close(enc(x, "img"), student.features(x, "img", 3))
    assert enc.info["train_classes"] == ["a", "b", "c"]


def test_attention_map_skips_register_tokens():
    from tvt.eval.attention import attention_for

    teacher = tiny_teacher("dinov2_vits14_reg")
    student = init_student_from_teacher(teacher, num_classes=CLASSES).eval()
    x = x_of("dinov2_vits14_reg", n=2)
    for model in (student, teacher):  # 2 x 2 patches; rows sum to 1 minus the prefix tokens' share
        att = attention_for(model, x)
        assert att.shape == (2, 2, 2) and bool((att.sum((1, 2)) <= 1 + 1e-5).all())


def test_weights_of_another_size_are_resampled_to_the_model_grid(tmp_path):
    """DINOv2 is released at 518 px: its position grid is resized to the requested input (timm's rule)."""
    from timm.layers import resample_abs_pos_embed

    big = build_named_vit("dinov2_vits14", 56, depth=2)  # a 4 x 4 grid
    torch.save(big.state_dict(), tmp_path / "big.pth")
    small_model = load_named_backbone(tmp_path / "big.pth", "dinov2_vits14", 28)  # 2 x 2
    want = resample_abs_pos_embed(big.pos_embed, new_size=(2, 2), old_size=(4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(small_model.pos_embed, want)
    assert torch.equal(small_model.blocks[1].mlp.fc2.weight, big.blocks[1].mlp.fc2.weight)


def test_teacher_of_another_backbone_is_refused():
    from tvt.models.named import check_teacher_backbone

    teacher = tiny_teacher("dinov2_vits14")
    check_teacher_backbone("dinov2_vits14", teacher, "t.pth")
    check_teacher_backbone("vit_small_patch14_dinov2.lvd142m", teacher, "t.pth")  # same architecture, timm's name
    with pytest.raises(ConfigError, match="model.backbone=dinov2_vits14"):
        check_teacher_backbone("", teacher, "t.pth")  # transforms would use ImageNet's constants for a named ViT
    with pytest.raises(ConfigError, match="clip_vitb16"):
        check_teacher_backbone("clip_vitb16", teacher, "t.pth")
