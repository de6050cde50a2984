"""Checkpoint formats (spec §3): round trips, safety, errors and the §3.3 student initialisation."""

from __future__ import annotations

import fractions
import pickle

import pytest
import torch

from tvt.errors import CheckpointError
from tvt.models.fusion import FusionViT
from tvt.models.encoder import load_encoder
from tvt.models.vit import ViTArch
from tvt.models.weights import (
    arch_hints,
    init_student_from_teacher,
    load_backbone,
    load_student,
    load_teacher,
    read_checkpoint,
)


TOKENS = {2: ("dist_img_token", "fusion_token"), 3: ("dist_img_token", "dist_skt_token", "fusion_token")}


def assert_state_equal(model: torch.nn.Module, saved: dict) -> None:
    got = model.state_dict()
    assert set(got) == set(saved)
    for k, v in saved.items():
        assert torch.equal(got[k], v), k


def dino_full(tools, teacher, student_teacher) -> dict:
    return {
        "teacher": teacher.state_dict(),
        "student": tools.module_prefixed(student_teacher.state_dict()),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "epoch": 100, "args": tools.official_args(), "dino_loss": {"center": torch.zeros(1, tools.OUT_DIM)},
    }


def official_tvt(tools, student, teacher) -> dict:
    return {
        "student": tools.module_prefixed(student.state_dict()),
        "teacher_img": teacher.state_dict(), "teacher_skt": tools.make_teacher(9).state_dict(),
        "optimizer": {"state": {}, "param_groups": []}, "epoch": 50, "args": tools.official_args(token_num=2),
        "dino_loss": {"center_img": torch.zeros(1, tools.OUT_DIM), "center_skt": torch.zeros(1, tools.OUT_DIM)},
        "ca_loss": {"center_img": torch.zeros(tools.NUM_CLASSES, 16), "center_skt": torch.zeros(tools.NUM_CLASSES, 16)},
        "fp16_scaler": None,
    }


# ---------------------------------------------------------------- plain ViTs and teachers


def test_dino_backbone_only_file(tools, teacher, tmp_path):
    saved = teacher.backbone.state_dict()
    path = tools.save(saved, tmp_path / "dino_deitsmall8_pretrain.pth")
    vit = load_backbone(path)
    assert_state_equal(vit, saved)
    x = tools.images(2)
    assert torch.allclose(vit(x), teacher.backbone(x), atol=1e-6)
    enc = load_encoder(path, return_idx=3)  # return_idx is ignored for a plain ViT
    assert (enc.kind, enc.dim, enc.img_size) == ("vit", 64, 32)
    assert torch.allclose(enc(x, "img"), teacher.backbone(x), atol=1e-6)
    with pytest.raises(CheckpointError, match="backbone-only.*teacher"):
        load_teacher(path)
    with pytest.raises(CheckpointError, match="student"):
        load_student(path)


def test_dino_full_checkpoint_with_namespace(tools, teacher, tmp_path):
    other = tools.make_teacher(5)
    path = tools.save(dino_full(tools, teacher, other), tmp_path / "full.pth")
    with pytest.raises(pickle.UnpicklingError):  # the file really needs the Namespace allow-list [Q22]
        torch.load(path, weights_only=True)
    ckpt = read_checkpoint(path)
    assert ckpt["args"].arch == "vit_small" and ckpt["epoch"] == 100
    if hasattr(torch.serialization, "safe_globals"):  # the allow-list does not leak out of the call
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=True)
    t = load_teacher(path)
    assert_state_equal(t, teacher.state_dict())
    assert t.training and all(p.requires_grad for n, p in t.named_parameters() if "weight_g" not in n)
    frozen = load_teacher(path, frozen=True)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    x = tools.images(2)
    assert torch.allclose(t.eval()(x), teacher(x), atol=1e-5)
    assert_state_equal(load_teacher(path, key="student"), other.state_dict())  # module. stripped
    assert_state_equal(load_backbone(path), teacher.backbone.state_dict())
    assert torch.allclose(load_encoder(path)(x, "skt"), teacher.backbone(x), atol=1e-6)
    with pytest.raises(CheckpointError, match="fusion"):
        load_student(path)


def test_timm_state_dict_ignores_classifier(tools, teacher, tmp_path):
    state = dict(teacher.backbone.state_dict())
    path = tools.save({**state, "head.weight": torch.randn(10, 64), "head.bias": torch.zeros(10)}, tmp_path / "t.pth")
    vit = load_backbone(path)
    assert_state_equal(vit, state)
    x = tools.images(2)
    assert torch.allclose(vit(x), teacher.backbone(x), atol=1e-6)
    extra = {**state, "reg_token": torch.zeros(1, 4, 64)}
    with pytest.raises(CheckpointError, match="reg_token"):
        load_backbone(tools.save(extra, tmp_path / "reg.pth"))
    missing = {k: v for k, v in state.items() if k != "blocks.1.norm2.weight"}
    with pytest.raises(CheckpointError, match="blocks.1.norm2.weight"):
        load_backbone(tools.save(missing, tmp_path / "missing.pth"))
    avg = {k.replace("norm.", "fc_norm.") if k.startswith("norm.") else k: v for k, v in state.items()}
    with pytest.raises(CheckpointError, match="fc_norm"):  # average-pooled: not a CLS-token ViT
        load_backbone(tools.save(avg, tmp_path / "avg.pth"))


def test_weight_norm_key_variants(tools, teacher, tmp_path):
    state = dict(teacher.state_dict())
    g, v = state.pop("head.last_layer.weight_g"), state.pop("head.last_layer.weight_v")
    new_api = {**state, "head.last_layer.parametrizations.weight.original0": g,
               "head.last_layer.parametrizations.weight.original1": v}
    assert_state_equal(load_teacher(tools.save({"teacher": new_api}, tmp_path / "a.pth")), teacher.state_dict())
    plain = {**state, "head.last_layer.weight": teacher.head.last_layer.weight.detach()}
    t = load_teacher(tools.save({"teacher": plain}, tmp_path / "b.pth")).eval()
    x = tools.images(2)
    assert torch.allclose(t(x), teacher(x), atol=1e-4)


# ---------------------------------------------------------------- TVT students


@pytest.mark.parametrize("token_num", [2, 3])
def test_official_tvt_checkpoint(tools, teacher, tmp_path, token_num):
    student = tools.make_student(3, token_num=token_num)
    path = tools.save(official_tvt(tools, student, teacher), tmp_path / "checkpoint-0050.pth")
    loaded = load_student(path)
    assert_state_equal(loaded, student.state_dict())
    assert loaded.token_num == token_num and loaded.backbone.pos_resample == "fidelity"
    assert not loaded.training and not loaded.head.last_layer.weight_g.requires_grad
    x = tools.images(2)
    for modality in ("img", "skt"):
        a, b = loaded(x, modality), student(x, modality)
        assert torch.allclose(a.dino_logits, b.dino_logits, atol=1e-5)
        assert torch.allclose(a.cls_logits, b.cls_logits, atol=1e-5)
    for idx, dim in ((0, 64), (1, 64), (2, 16), (3, 16)):
        enc = load_encoder(path, return_idx=idx)
        assert (enc.kind, enc.dim, enc.img_size) == ("tvt", dim, 32)
        assert torch.allclose(enc(x, "skt"), student.features(x, "skt", idx), atol=1e-5)
    assert_state_equal(load_teacher(path, key="teacher_img"), teacher.state_dict())


def test_our_format_round_trip_uses_arch_hints(tools, tmp_path):
    arch = ViTArch(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4, mlp_ratio=2.0)
    student = tools.make_student(4, arch=arch, pos_resample="exact")
    ckpt = {"format": "tvt", "version": 1, "stage": "tvt", "student": student.state_dict(),
            "arch": arch_hints(student), "epoch": 2, "train_classes": list("abcde")}
    assert ckpt["arch"]["num_heads"] == 4 and ckpt["arch"]["pos_resample"] == "exact"
    path = tools.save(ckpt, tmp_path / "ours.pth")
    loaded = load_student(path)
    assert loaded.backbone.blocks[0].attn.num_heads == 4 and loaded.backbone.pos_resample == "exact"
    x = tools.images(2)
    assert torch.allclose(loaded.features(x, "img"), student.features(x, "img"), atol=1e-5)
    assert load_student(path, pos_resample="fidelity").backbone.pos_resample == "fidelity"
    with pytest.raises(CheckpointError, match="teacher"):
        load_teacher(path)


def test_our_stage_a_and_safetensors(tools, teacher, student, tmp_path):
    path = tools.save({"format": "tvt", "version": 1, "stage": "sketch", "teacher": teacher.state_dict(),
                       "student": teacher.state_dict(), "arch": {"num_heads": 1}}, tmp_path / "a.pth")
    assert_state_equal(load_teacher(path), teacher.state_dict())
    enc = load_encoder(path)
    x = tools.images(2)
    assert enc.kind == "vit" and torch.allclose(enc(x, "skt"), teacher.backbone(x), atol=1e-6)
    from safetensors.torch import save_file

    st = tmp_path / "student.safetensors"
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(st))
    assert_state_equal(load_student(st), student.state_dict())
    assert torch.allclose(load_encoder(st)(x, "img"), student.features(x, "img"), atol=1e-5)


# ---------------------------------------------------------------- unreadable files


def test_missing_corrupt_truncated_and_unsafe_files(tools, teacher, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_teacher(junk)
    good = tools.save({"teacher": teacher.state_dict()}, tmp_path / "good.pth")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pth"):
        load_teacher(cut)
    unsafe = tools.save({"teacher": teacher.state_dict(), "extra": fractions.Fraction(1, 3)}, tmp_path / "u.pth")
    with pytest.raises(CheckpointError, match="not loaded for safety"):  # weights_only stays on
        read_checkpoint(unsafe)
    not_dict = tools.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a dict"):
        read_checkpoint(not_dict)
    headless = {k: v for k, v in teacher.state_dict().items() if k.startswith("backbone.")}
    with pytest.raises(CheckpointError, match="no DINO head"):
        load_teacher(tools.save({"teacher": headless}, tmp_path / "headless.pth"))
    bad_pos = dict(teacher.backbone.state_dict())
    bad_pos["pos_embed"] = torch.zeros(1, 16, 64)  # 15 patch rows: not a square grid
    with pytest.raises(CheckpointError, match="pos_embed"):
        load_backbone(tools.save(bad_pos, tmp_path / "pos.pth"))


# ---------------------------------------------------------------- spec §3.3


@pytest.mark.parametrize("token_num", [2, 3])
def test_init_student_from_teacher_spec_3_3(tools, teacher, token_num):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(0)
    student = init_student_from_teacher(teacher.state_dict(), num_classes=7, token_num=token_num)
    t, s = teacher.state_dict(), student.state_dict()
    for k, v in t.items():
        if k.startswith("backbone.") and k not in ("backbone.cls_token", "backbone.pos_embed"):
            assert torch.equal(s[k], v), k
        if k.startswith("head."):
            assert torch.equal(s[k], v), k
            if token_num == 3:
                assert torch.equal(s[k.replace("head.", "head_skt.", 1)], v), k
        if k.startswith("head.mlp."):
            assert torch.equal(s[k.replace("head.", "head_fusion.", 1)], v), k
    for name in student.backbone.token_names:
        assert torch.equal(s[f"backbone.{name}"], t["backbone.cls_token"])
    pos = t["backbone.pos_embed"]
    expected_pos = torch.cat([pos[:, :1]] * (token_num - 1) + [pos], 1)
    assert s["backbone.pos_embed"].shape == (1, token_num + 16, 64)
    assert torch.equal(s["backbone.pos_embed"], expected_pos)
    assert torch.equal(s["head_fusion.fc.bias"], torch.zeros(7)) and s["head_fusion.fc.weight"].shape == (7, 16)
    assert s["head_fusion.fc.weight"].abs().max() < 0.1 and s["head_fusion.fc.weight"].std() > 0.005
    assert student.backbone.token_names == TOKENS[token_num]
    assert (student.head_skt is not None) == (token_num == 3)
    assert isinstance(student.backbone, FusionViT) and student.backbone.pos_resample == "fidelity"
    z = student.eval().backbone(tools.images(2))
    assert torch.equal(z[0], z[-1])  # identical tokens and pos rows at step 0 [Q11]
    with torch.no_grad():  # tensors are copies: training the student leaves the teacher alone
        for p in student.parameters():
            p.add_(1.0)
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in before.items())


def test_init_student_keeps_the_teachers_head_count(tools):
    arch = ViTArch(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4, mlp_ratio=2.0)
    teacher = tools.make_teacher(8, arch=arch)
    from_module = init_student_from_teacher(teacher, num_classes=3, pos_resample="exact").eval()
    from_state = init_student_from_teacher(teacher.state_dict(), num_classes=3, pos_resample="exact", num_heads=4)
    assert from_module.backbone.blocks[0].attn.num_heads == from_state.backbone.blocks[0].attn.num_heads == 4
    # In exact mode with identical special tokens the fusion token sees [CLS, CLS, patches]: check it
    # against the teacher's own blocks on that sequence, which only holds with the same head count.
    x = tools.images(2)
    vit = teacher.backbone
    pos = vit.pos_embed.detach()
    seq = torch.cat([(vit.cls_token + pos[:, :1]).expand(2, 2, -1), tools.patch_tokens(vit, x) + pos[:, 1:]], 1)
    ref = tools.blocks_ref(vit, seq)[:, 1]
    assert torch.allclose(from_module.features(x, "img"), ref, atol=1e-5)
    assert torch.allclose(from_state.eval().features(x, "img"), ref, atol=1e-5)
