"""The optional convolutional stem (``ViTArch.stem="conv"``, used by the CPU demo)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tvt.errors import CheckpointError
from tvt.models.convert import infer_vit_arch
from tvt.models.encoder import load_encoder
from tvt.models.fusion import FusionViT
from tvt.models.heads import DINOHead
from tvt.models.vit import ViTArch, build_vit, conv_stem
from tvt.models.weights import arch_hints, init_student_from_teacher, load_teacher
from tvt.models.wrappers import Teacher

ARCH = ViTArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, stem="conv")


def stem_ref(state: dict, prefix: str, x: torch.Tensor, n_convs: int) -> torch.Tensor:
    """The stem written out: stride-2 3x3 convs; instance norm (per image and channel) + ReLU between."""
    x = x.double()
    for i in range(n_convs):
        w, b = state[f"{prefix}{3 * i}.weight"].double(), state[f"{prefix}{3 * i}.bias"].double()
        x = F.conv2d(x, w, b, stride=2, padding=1)
        if i < n_convs - 1:
            g, beta = state[f"{prefix}{3 * i + 1}.weight"].double(), state[f"{prefix}{3 * i + 1}.bias"].double()
            mu = x.mean(dim=(2, 3), keepdim=True)
            var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
            x = (x - mu) / torch.sqrt(var + 1e-5) * g[:, None, None] + beta[:, None, None]
            x = x.clamp_min(0)
    return x


@pytest.mark.parametrize(("patch", "dim", "widths"), [(2, 16, [16]), (4, 32, [16, 32]), (8, 128, [32, 64, 128])])
def test_conv_stem_widths_and_grid(patch, dim, widths):
    stem = conv_stem(patch, dim)
    convs = [m for m in stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == widths
    for side in (patch * 3, patch * 5):
        out = stem(torch.randn(2, 3, side, side))
        assert out.shape == (2, dim, side // patch, side // patch)


@pytest.mark.parametrize("patch", [0, 3, 6, 12])
def test_conv_stem_needs_power_of_two(patch):
    with pytest.raises(ValueError, match="power-of-two"):
        conv_stem(patch, 32)


def test_conv_stem_vit_matches_hand_written_stem_and_is_batch_independent():
    torch.manual_seed(0)
    vit = build_vit(ARCH).eval()
    x = torch.randn(3, 3, 32, 32)
    seen = {}
    hook = vit.patch_embed.register_forward_hook(lambda m, i, o: seen.update(tokens=o))
    out = vit(x)
    hook.remove()
    ref = stem_ref(vit.state_dict(), "patch_embed.proj.", x, 3).permute(0, 2, 3, 1)  # NHWC, as timm keeps it
    torch.testing.assert_close(seen["tokens"].double(), ref, rtol=1e-5, atol=1e-5)
    # No batch statistics: one image alone gives the same feature as inside a batch.
    torch.testing.assert_close(vit(x[1:2]), out[1:2], rtol=1e-5, atol=1e-5)
    assert not list(vit.buffers())


def test_unknown_stem_is_refused():
    with pytest.raises(ValueError, match="stem must be one of"):
        build_vit(ViTArch(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, stem="resnet"))


def test_arch_inferred_from_conv_stem_weights():
    vit = build_vit(ARCH)
    arch = infer_vit_arch(vit.state_dict(), "x", hint={"num_heads": 2})
    assert arch == ARCH
    plain = build_vit(ViTArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0))
    assert infer_vit_arch(plain.state_dict(), "x", hint={"num_heads": 2}).stem == "patch"
    broken = {k: v for k, v in vit.state_dict().items() if not k.startswith("patch_embed.proj.3.")}
    with pytest.raises(CheckpointError, match="conv-stem layers"):
        infer_vit_arch(broken, "broken.pth", hint={"num_heads": 2})


def test_student_from_conv_stem_teacher_copies_the_stem(tmp_path):
    torch.manual_seed(1)
    teacher = Teacher(build_vit(ARCH), DINOHead(32, out_dim=64, hidden_dim=32, bottleneck_dim=16)).eval()
    path = tmp_path / "image_vit.pth"
    torch.save({"format": "tvt", "teacher": teacher.state_dict(), "arch": arch_hints(teacher)}, path)
    loaded = load_teacher(path, frozen=True)
    assert loaded.backbone.arch.stem == "conv"
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.embed(x), teacher.embed(x))
    student = init_student_from_teacher(loaded, num_classes=3).eval()
    assert isinstance(student.backbone, FusionViT) and student.backbone.arch.stem == "conv"
    for key, value in teacher.backbone.state_dict().items():
        if key.startswith("patch_embed."):
            torch.testing.assert_close(student.backbone.state_dict()[key], value)
    ckpt = tmp_path / "tvt.pth"
    torch.save({"format": "tvt", "stage": "tvt", "student": student.state_dict(), "arch": arch_hints(student)}, ckpt)
    enc = load_encoder(ckpt)
    torch.testing.assert_close(enc(x, "skt"), student.features(x, "skt", 0))
