"""Helpers shared by several test folders (importable because tests/conftest.py puts this folder on
sys.path; conftest modules themselves are not importable by name)."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A real (randomly initialised) 1-block, 32-wide TVT student at 32 px in our format."""
    from tvt.models.heads import DINOHead
    from tvt.models.vit import ViTArch, build_vit
    from tvt.models.weights import arch_hints, init_student_from_teacher

    torch.manual_seed(seed)
    arch = ViTArch(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    vit, head = build_vit(arch), DINOHead(32, out_dim=64, hidden_dim=32, bottleneck_dim=16)
    state = {**{f"backbone.{k}": v for k, v in vit.state_dict().items()},
             **{f"head.{k}": v for k, v in head.state_dict().items()}}
    student = init_student_from_teacher(state, num_classes=4)
    torch.save({"format": "tvt", "version": 1, "stage": "tvt", "student": student.state_dict(),
                "arch": arch_hints(student)}, path)
    return path
