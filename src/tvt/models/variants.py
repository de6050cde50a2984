"""Named TVT model variants: ``create_model("tvt-vit-s8", num_classes=104)``.

A variant fixes every size of a TVT student (fusion ViT, DINO head, fusion head); only the number
of training classes is left to the caller. The registry is explicit and small on purpose: the
paper's model and the two CPU-sized models that the shipped configs train. Pretrained ViT
backbones named by timm are :data:`tvt.models.backbones.BACKBONES`; a variant here is always an
untrained model (weights come from training or from a checkpoint, see
:func:`tvt.models.encoder.load_encoder`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tvt.errors import ConfigError
from tvt.models.vit import ViTArch
from tvt.models.weights import new_student
from tvt.models.wrappers import Student


@dataclass(frozen=True)
class ModelVariant:
    """Sizes of one named TVT student; ``about`` says where the sizes come from."""

    arch: ViTArch
    about: str
    token_num: int = 2
    out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3


MODEL_VARIANTS: dict[str, ModelVariant] = {
    "tvt-vit-s8": ModelVariant(
        ViTArch(img_size=224, patch_size=8, embed_dim=384, depth=12, num_heads=6),
        "the paper's model: fusion ViT-S/8 at 224 px (DINO's ViT-S/8), 2 special tokens, 65,536-way DINO head"),
    "tvt-tiny": ModelVariant(
        ViTArch(img_size=64, patch_size=8, embed_dim=128, depth=4, num_heads=2),
        "configs/tiny_cpu.yaml: a 4-block, 128-wide ViT at 64 px for CPU smoke runs",
        out_dim=1024, head_hidden_dim=256, head_bottleneck_dim=64),
    "tvt-demo": ModelVariant(
        ViTArch(img_size=32, patch_size=8, embed_dim=128, depth=4, num_heads=2, stem="conv"),
        "`tvt demo` (src/tvt/configs/demo.yaml): 32 px, 128 wide, 4 blocks, convolutional stem, small heads",
        out_dim=1024, head_hidden_dim=512),
}


def create_model(name: str, *, num_classes: int, pos_resample: str = "fidelity") -> Student:
    """A new, randomly initialised TVT student of the named variant (see :data:`MODEL_VARIANTS`).

    Args:
        name: a key of :data:`MODEL_VARIANTS`, e.g. ``"tvt-vit-s8"`` (the paper's fusion ViT-S/8).
        num_classes: training classes, the size of the fusion head's classifier.
        pos_resample: ``"fidelity"`` (the official position-embedding resampling [Q10]) or ``"exact"``.
    Returns:
        A :class:`~tvt.models.wrappers.Student` in train mode: ``model(x [N, 3, S, S], modality)``
        gives a ``StudentOutput`` (``dino_logits`` [N, out_dim], ``cls_logits`` [N, num_classes],
        ``f`` [N, bottleneck]); ``model.features(x, modality)`` gives retrieval features [N, D].
    """
    variant = MODEL_VARIANTS.get(name)
    if variant is None:
        raise ConfigError(f"unknown model {name!r}; the named models are {', '.join(MODEL_VARIANTS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    head = {"out_dim": variant.out_dim, "hidden_dim": variant.head_hidden_dim,
            "bottleneck_dim": variant.head_bottleneck_dim, "nlayers": variant.head_layers}
    # a copy of the arch: the model keeps it as .arch, and the registry must not change through it
    return new_student(replace(variant.arch), variant.token_num, pos_resample, head, num_classes)
