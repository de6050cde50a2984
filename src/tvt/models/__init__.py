"""Models: DINO-style ViT on timm, the TVT fusion ViT, heads, wrappers and weight loading.

See spec §2 (architecture) and §3 (initialisation, checkpoints).
"""

from tvt.models.backbones import BACKBONES, build_named_vit
from tvt.models.backbone_weights import load_named_backbone
from tvt.models.fusion import FusionViT
from tvt.models.heads import DINOHead, FusionHead
from tvt.models.vit import DinoViT, ViTArch, build_vit
from tvt.models.weights import (
    Encoder,
    arch_hints,
    init_student_from_teacher,
    load_backbone,
    load_encoder,
    load_student,
    load_teacher,
    read_checkpoint,
)
from tvt.models.resolve import open_encoder
from tvt.models.wrappers import Student, StudentOutput, Teacher

__all__ = [
    "BACKBONES",
    "build_named_vit",
    "load_named_backbone",
    "open_encoder",
    "DINOHead",
    "DinoViT",
    "Encoder",
    "FusionHead",
    "FusionViT",
    "Student",
    "StudentOutput",
    "Teacher",
    "ViTArch",
    "arch_hints",
    "build_vit",
    "init_student_from_teacher",
    "load_backbone",
    "load_encoder",
    "load_student",
    "load_teacher",
    "read_checkpoint",
]
