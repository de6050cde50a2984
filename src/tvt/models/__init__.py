"""Models: DINO-style ViT on timm, the TVT fusion ViT, heads, wrappers and weight loading.

See spec §2 (architecture) and §3 (initialisation, checkpoints).

User API (``__all__``): named TVT models (:func:`create_model`, :data:`MODEL_VARIANTS`), pretrained
ViT backbones by name (:data:`BACKBONES`, :func:`build_named_vit`, :func:`load_named_backbone`),
loading trained weights (:func:`load_encoder` / :func:`open_encoder` for retrieval features;
:func:`load_student`, :func:`load_teacher`, :func:`load_backbone` for the modules), and the module
classes. Plumbing stays in the submodules: checkpoint reading and headers in
:mod:`tvt.models.weights` and :mod:`tvt.models.convert`, encoders in :mod:`tvt.models.encoder`, exported
folders in :mod:`tvt.models.export`.
"""

from tvt.models.backbone_weights import load_named_backbone
from tvt.models.backbones import BACKBONES, build_named_vit
from tvt.models.fusion import FusionViT
from tvt.models.heads import DINOHead, FusionHead
from tvt.models.resolve import open_encoder
from tvt.models.variants import MODEL_VARIANTS, ModelVariant, create_model
from tvt.models.vit import DinoViT, ViTArch, build_vit
from tvt.models.encoder import Encoder, load_encoder
from tvt.models.weights import init_student_from_teacher, load_backbone, load_student, load_teacher
from tvt.models.wrappers import Student, StudentOutput, Teacher

__all__ = [
    "BACKBONES",
    "DINOHead",
    "DinoViT",
    "Encoder",
    "FusionHead",
    "FusionViT",
    "MODEL_VARIANTS",
    "ModelVariant",
    "Student",
    "StudentOutput",
    "Teacher",
    "ViTArch",
    "build_named_vit",
    "build_vit",
    "create_model",
    "init_student_from_teacher",
    "load_backbone",
    "load_encoder",
    "load_named_backbone",
    "load_student",
    "load_teacher",
    "open_encoder",
]
