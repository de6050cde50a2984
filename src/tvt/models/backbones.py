"""Pretrained ViT backbones by name, built from timm's own registry (``timm.create_model``).

The paper's image ViT is DINO's ViT-S/8 (:mod:`tvt.models.vit`, sizes read from the weights).
Any other ViT that timm knows can be named instead; :data:`BACKBONES` gives short names for the
families the project supports and tests. The architecture always comes from timm
(``pretrained=False``: nothing is downloaded unless :func:`build_named_vit` is called with
``download=True``); the weights come from a file (:mod:`tvt.models.backbone_weights`).

What follows the backbone, not the paper: patch size, native image size, position embeddings
and timm's rule for resizing them, layer scale, register tokens, the pooled feature
(CLS token, or SigLIP's attention pool) and the normalisation constants (timm's
``pretrained_cfg`` mean/std; CLIP's and SigLIP's are not ImageNet's).

A built backbone is timm's ``VisionTransformer`` with a :class:`NamedArch` attached as ``.arch``,
so the rest of the package reads ``img_size``, ``patch_size`` and ``embed_dim`` from it as it
does for :class:`tvt.models.vit.DinoViT`. ``forward(x [N, 3, S, S]) -> [N, D]`` is timm's pooled
pre-logits feature (no classifier, no CLIP projection).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from tvt.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class BackboneSpec:
    """One named backbone: timm architecture (with its pretrained tag), default size, licence.

    ``img_size`` is the input side used when none is given (DINOv2 is released at 518 px; 224 px,
    its pre-training size, keeps a 16x16 grid and CPU cost reasonable). ``dino_head`` says whether
    the authors released a DINO projection head, which the paper's TVT needs as the image
    teacher's target (see ``sketch.init_head`` for the others).
    """

    timm_name: str
    family: str
    img_size: int
    licence: str
    dino_head: bool
    weights_hint: str


BACKBONES: dict[str, BackboneSpec] = {
    "dino_vits8": BackboneSpec("vit_small_patch8_224.dino", "dino", 224, "apache-2.0", True,
                               "dino_deitsmall8_pretrain.pth (backbone) or its full checkpoint"),
    "dino_vits16": BackboneSpec("vit_small_patch16_224.dino", "dino", 224, "apache-2.0", True,
                                "dino_deitsmall16_pretrain.pth (backbone) or its full checkpoint"),
    "dinov2_vits14": BackboneSpec("vit_small_patch14_dinov2.lvd142m", "dinov2", 224, "apache-2.0", False,
                                  "dinov2_vits14_pretrain.pth, or the timm/HF folder"),
    "dinov2_vits14_reg": BackboneSpec("vit_small_patch14_reg4_dinov2.lvd142m", "dinov2", 224, "apache-2.0", False,
                                      "dinov2_vits14_reg4_pretrain.pth, or the timm/HF folder"),
    "dinov2_vitb14": BackboneSpec("vit_base_patch14_dinov2.lvd142m", "dinov2", 224, "apache-2.0", False,
                                  "dinov2_vitb14_pretrain.pth, or the timm/HF folder"),
    "dinov2_vitb14_reg": BackboneSpec("vit_base_patch14_reg4_dinov2.lvd142m", "dinov2", 224, "apache-2.0", False,
                                      "dinov2_vitb14_reg4_pretrain.pth, or the timm/HF folder"),
    "clip_vitb16": BackboneSpec("vit_base_patch16_clip_224.openai", "clip", 224, "mit", False,
                                "the timm/HF folder timm/vit_base_patch16_clip_224.openai, or OpenAI's ViT-B-16.pt "
                                "state dict"),
    "siglip_vitb16": BackboneSpec("vit_base_patch16_siglip_224.webli", "siglip", 224, "apache-2.0", False,
                                  "the timm/HF folder timm/vit_base_patch16_siglip_224.webli"),
}


@dataclass
class NamedArch:
    """Sizes and preprocessing of a named backbone, attached to the built model as ``.arch``."""

    backbone: str
    timm_name: str
    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    licence: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (checkpoint ``arch`` entry, model-folder ``config.json``)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def resolve(name: str) -> tuple[str, BackboneSpec | None]:
    """``name`` (a short name of :data:`BACKBONES` or any timm ViT name) -> (timm name, spec or None).

    Raises :class:`ConfigError` for a name timm does not know.
    """
    import timm

    if name in BACKBONES:
        return BACKBONES[name].timm_name, BACKBONES[name]
    if timm.is_model(name):
        # a registered backbone named by its timm name (e.g. from a model folder) keeps its defaults
        for spec in BACKBONES.values():
            if spec.timm_name == name or spec.timm_name.split(".")[0] == name:
                return name, spec
        return name, None
    short = ", ".join(BACKBONES)
    raise ConfigError(f"unknown backbone {name!r}: use one of {short}, or a timm ViT name "
                      "(see timm.list_models('vit_*', pretrained=True))")


def _timm_kwargs(img_size: int, depth: int | None, drop_path_rate: float) -> dict[str, Any]:
    kw: dict[str, Any] = dict(num_classes=0, img_size=img_size, dynamic_img_size=True, drop_path_rate=drop_path_rate)
    if depth is not None:
        kw["depth"] = depth
    return kw


def _check_vit(model: nn.Module, name: str) -> None:
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"backbone {name!r} is a timm {type(model).__name__}, not a VisionTransformer; "
                          "TVT's fusion tokens need a plain ViT (DINO, DINOv2, CLIP, SigLIP, DeiT, ...)")


def build_named_vit(name: str, img_size: int | None = None, *, depth: int | None = None,
                    drop_path_rate: float = 0.0, download: bool = False, extra: dict | None = None) -> nn.Module:
    """timm's ViT ``name`` at input side ``img_size`` (default: the backbone's), random init.

    ``depth`` overrides the number of blocks (for weights of a shortened model, and tests);
    ``download=True`` asks timm for its pretrained weights (needs a network; never used by tests);
    ``extra`` holds further timm keyword arguments (the fusion ViT's token layout).
    """
    import timm

    timm_name, spec = resolve(name)
    size = int(img_size or (spec.img_size if spec else _default_size(timm_name)))
    try:
        model = timm.create_model(timm_name, pretrained=download,
                                  **_timm_kwargs(size, depth, drop_path_rate), **(extra or {}))
    except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
        raise ConfigError(f"cannot build backbone {name!r} ({timm_name}) at {size} px: {exc}") from exc
    _check_vit(model, name)
    model.arch = _arch(model, name, timm_name, spec, size)  # type: ignore[assignment]
    return model


def _default_size(timm_name: str) -> int:
    import timm

    with torch.device("meta"):
        probe = timm.create_model(timm_name, pretrained=False, num_classes=0)
    return int(probe.pretrained_cfg.get("input_size", (3, 224, 224))[-1])


def _arch(model: nn.Module, name: str, timm_name: str, spec: BackboneSpec | None, size: int) -> NamedArch:
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    patch = model.patch_embed.patch_size
    if size % patch[0]:
        raise ConfigError(f"backbone {name!r}: image size {size} is not a multiple of its {patch[0]}-px patch")
    return NamedArch(
        backbone=name, timm_name=timm_name, img_size=size, patch_size=int(patch[0]), embed_dim=int(model.embed_dim),
        depth=len(model.blocks), num_heads=int(model.blocks[0].attn.num_heads),
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),  # type: ignore[arg-type]
        licence=spec.licence if spec else str(cfg.get("license", "")),
    )


def is_named(module: nn.Module) -> bool:
    """True for a backbone built by :func:`build_named_vit` (or a fusion ViT around one)."""
    return isinstance(getattr(module, "arch", None), NamedArch)


def pos_prefix_rows(model: nn.Module) -> int:
    """Rows of ``pos_embed`` that belong to prefix tokens (0 when they carry no position)."""
    return 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))


def size_from_state(name: str, state: dict[str, torch.Tensor], where: str) -> tuple[int, int]:
    """(native img_size, depth) of weights ``state`` for backbone ``name`` (pos_embed rows, blocks)."""
    import math
    import re

    import timm

    timm_name, _ = resolve(name)
    with torch.device("meta"):
        probe = timm.create_model(timm_name, pretrained=False, num_classes=0)
    if "pos_embed" not in state:
        raise CheckpointError(f"{where}: no pos_embed among the weights; not a {name} ViT state dict")
    rows = int(state["pos_embed"].shape[1]) - pos_prefix_rows(probe)
    grid = math.isqrt(max(rows, 0))
    if rows <= 0 or grid * grid != rows:
        raise CheckpointError(f"{where}: pos_embed has {state['pos_embed'].shape[1]} rows, which is not a square "
                              f"patch grid for {name} ({pos_prefix_rows(probe)} prefix rows)")
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks:
        raise CheckpointError(f"{where}: no transformer blocks (blocks.N.*) among the weights")
    return grid * int(probe.patch_embed.patch_size[0]), len(blocks)


def backbone_norm(name: str) -> dict[str, tuple[float, ...]]:
    """``{"mean", "std"}`` of backbone ``name`` from timm's pretrained config ("" = the paper's
    DINO ViT: ImageNet's), for the training and evaluation transforms."""
    import timm

    if not name:
        return {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    cfg = timm.get_pretrained_cfg(resolve(name)[0])
    if cfg is None:
        return {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    return {"mean": tuple(float(v) for v in cfg.mean), "std": tuple(float(v) for v in cfg.std)}
