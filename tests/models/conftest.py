"""Tiny models, independent reference computations and checkpoint writers for the model tests.

Test modules reach the helpers below through the ``tools`` fixture (this module itself), since
``--import-mode=importlib`` does not make conftest importable by name.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tvt.models.fusion import FusionViT
from tvt.models.heads import DINOHead, FusionHead
from tvt.models.vit import ViTArch, build_vit
from tvt.models.wrappers import Student, Teacher

# 64-wide with one 64-dim head: foreign formats carry no head count and we infer embed_dim // 64.
ARCH = ViTArch(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=1, mlp_ratio=2.0)
HEAD = dict(hidden_dim=32, bottleneck_dim=16, nlayers=3)
OUT_DIM = 64
NUM_CLASSES = 5


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter with seeded noise (LayerNorms near 1, weight_g positive)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("weight_g"):
                p.copy_(0.5 + noise.abs())
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return module


def make_teacher(seed: int = 0, arch: ViTArch = ARCH) -> Teacher:
    teacher = Teacher(build_vit(arch), DINOHead(arch.embed_dim, OUT_DIM, **HEAD))
    return randomize_(teacher, seed).eval()


def make_student(seed: int = 0, token_num: int = 2, arch: ViTArch = ARCH, pos_resample: str = "fidelity") -> Student:
    backbone = FusionViT(arch, token_num=token_num, pos_resample=pos_resample)
    head = DINOHead(arch.embed_dim, OUT_DIM, **HEAD)
    head_skt = DINOHead(arch.embed_dim, OUT_DIM, **HEAD) if token_num == 3 else None
    student = Student(backbone, head, FusionHead(arch.embed_dim, NUM_CLASSES, **HEAD), head_skt)
    return randomize_(student, seed).eval()


def images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- independent references


def cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Keys cubic-convolution weights of the taps at offsets -1, 0, 1, 2 for fraction t."""

    def k(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    return [k(t + 1), k(t), k(1 - t), k(2 - t)]


def bicubic_ref(grid: torch.Tensor, out_hw: tuple[int, int], scale_hw: tuple[float, float]) -> torch.Tensor:
    """Hand-written bicubic resize of [H, W, D]: src = (dst + 0.5)/scale - 0.5, clamped taps."""
    h, w, _ = grid.shape
    g = grid.double()

    def axis(n_out: int, n_in: int, scale: float) -> torch.Tensor:
        m = torch.zeros(n_out, n_in, dtype=torch.float64)
        for dst in range(n_out):
            src = (dst + 0.5) / scale - 0.5
            i0 = math.floor(src)
            for off, wgt in zip(range(-1, 3), cubic_weights(src - i0)):
                m[dst, min(max(i0 + off, 0), n_in - 1)] += wgt
        return m

    mh, mw = axis(out_hw[0], h, scale_hw[0]), axis(out_hw[1], w, scale_hw[1])
    return torch.einsum("ah,bw,hwd->abd", mh, mw, g).float()


def blocks_ref(vit: torch.nn.Module, seq: torch.Tensor) -> torch.Tensor:
    """Run a timm ViT's blocks and final norm on an explicitly built token sequence [N, L, D]."""
    x = seq
    for blk in vit.blocks:
        x = blk(x)
    return vit.norm(x)


def patch_tokens(vit: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> [N, gh*gw, D] patch embeddings (row-major), via the conv weights."""
    conv = vit.patch_embed.proj
    return F.conv2d(x, conv.weight, conv.bias, stride=conv.stride).flatten(2).transpose(1, 2)


# ---------------------------------------------------------------- checkpoint formats


def module_prefixed(state: dict) -> dict:
    return {f"module.{k}": v for k, v in state.items()}


def official_args(**kw) -> argparse.Namespace:
    return argparse.Namespace(arch="vit_small", patch_size=8, out_dim=OUT_DIM, lr=5e-4, **kw)


def save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


@pytest.fixture
def teacher() -> Teacher:
    return make_teacher(0)


@pytest.fixture
def student() -> Student:
    return make_student(1)


@pytest.fixture(scope="session")
def tools():
    """This module: ARCH, HEAD, make_teacher, make_student, bicubic_ref, blocks_ref, ..."""
    return sys.modules[__name__]
