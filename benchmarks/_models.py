"""Model builders and command-line plumbing shared by the speed benchmarks (not part of the package)."""

from __future__ import annotations

import argparse

import torch

from tvt.models.heads import DINOHead
from tvt.models.vit import ViTArch, build_vit
from tvt.models.weights import init_student_from_teacher
from tvt.models.wrappers import Teacher

SIZES = {
    # name: (img_size, embed_dim, depth, heads, out_dim, head_hidden, bottleneck, classes)
    "tiny": (64, 192, 4, 3, 4096, 512, 128, 24),
    "vit_s8": (224, 384, 12, 6, 65536, 2048, 256, 100),
}


def build(size: str, device: torch.device):
    """(image teacher, sketch teacher, student) of the given size, randomly initialised."""
    img, dim, depth, heads, out_dim, hidden, bottleneck, classes = SIZES[size]
    arch = ViTArch(img_size=img, patch_size=8, embed_dim=dim, depth=depth, num_heads=heads)
    t_img = Teacher(build_vit(arch), DINOHead(dim, out_dim, hidden, bottleneck))
    t_skt = Teacher(build_vit(arch), DINOHead(dim, out_dim, hidden, bottleneck))
    student = init_student_from_teacher(t_img, num_classes=classes)
    return t_img.to(device).eval(), t_skt.to(device).eval(), student.to(device), img, classes


def set_reference_attention(*models: torch.nn.Module, reference: bool) -> None:
    """reference=True: timm's explicit softmax(QK^T)V attention (as the authors' code); False: SDPA."""
    for m in models:
        for mod in m.modules():
            if hasattr(mod, "fused_attn"):
                mod.fused_attn = not reference


def fast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of the fast path: bf16 on a GPU unless ``precision`` says otherwise."""
    return torch.bfloat16 if precision == "bf16" or (precision == "auto" and device.type == "cuda") else None


def add_common_args(p: argparse.ArgumentParser) -> None:
    """--size, --repeats, --threads and --precision, as every model benchmark takes them."""
    p.add_argument("--size", choices=list(SIZES), default="tiny")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="fast path arithmetic (default: bf16 autocast on a GPU, fp32 on a CPU)")


def pick_device(args: argparse.Namespace) -> tuple[torch.device, str]:
    """Apply --threads; (device, words naming it for the table's header)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return device, name
