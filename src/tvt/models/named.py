"""TVT models around a named backbone (:mod:`tvt.models.backbones`): teachers, students, state dicts.

The paper's path (:mod:`tvt.models.weights` with :class:`~tvt.models.vit.DinoViT`) is untouched;
these builders are used when a checkpoint or config names a backbone (``model.backbone``).

Key layouts: a teacher is ``backbone.*`` (timm's own keys) + ``head.*``; a student is
``backbone.vit.*`` (timm keys of the token-free ViT), ``backbone.<special token>``, ``head.*``,
``head_fusion.*`` (+ ``head_skt.*``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from tvt.errors import CheckpointError, ConfigError
from tvt.models.backbone_weights import block_count, load_named_state
from tvt.models.convert import check_load, clean_state, infer_head_dims, sub_state
from tvt.models.backbones import build_named_vit, pos_prefix_rows
from tvt.models.fusion import NamedFusionViT
from tvt.models.heads import DINOHead, FusionHead
from tvt.models.wrappers import Student

# The fusion ViT's own prefix tokens replace the class token; positions cover the patches only;
# the pooled feature (CLS or SigLIP's attention pool) is not used.
FUSION_TIMM_KWARGS = {"class_token": False, "no_embed_class": True, "global_pool": ""}


def plain_from_state(name: str, state: Mapping[str, Tensor], where: str | Path,
                     img_size: int | None = None) -> nn.Module:
    """Named plain ViT whose weights are ``state`` (timm keys); size from the weights unless given."""
    from tvt.models.backbones import size_from_state

    native, depth = size_from_state(name, dict(state), str(where))
    model = build_named_vit(name, img_size or native, depth=depth)
    load_named_state(model, state, where)
    return model


def fusion_vit(name: str, img_size: int, depth: int, token_num: int, drop_path_rate: float = 0.0) -> NamedFusionViT:
    """A randomly initialised fusion ViT around backbone ``name``."""
    vit = build_named_vit(name, img_size, depth=depth, drop_path_rate=drop_path_rate, extra=FUSION_TIMM_KWARGS)
    return NamedFusionViT(vit, token_num)


def fusion_size(name: str, vit_state: Mapping[str, Tensor], where: str | Path) -> tuple[int, int]:
    """(img_size, depth) of a fusion ViT's ``vit.*`` weights (pos_embed = the patch grid only)."""
    import timm

    from tvt.models.backbones import resolve

    if "pos_embed" not in vit_state:
        raise CheckpointError(f"checkpoint {where}: the fusion ViT has no pos_embed")
    rows = int(vit_state["pos_embed"].shape[1])
    grid = math.isqrt(rows)
    if grid * grid != rows:
        raise CheckpointError(f"checkpoint {where}: fusion pos_embed has {rows} rows, not a square patch grid")
    with torch.device("meta"):
        probe = timm.create_model(resolve(name)[0], pretrained=False, num_classes=0)
    return grid * int(probe.patch_embed.patch_size[0]), block_count(vit_state, where)


def fusion_from_teacher(backbone: nn.Module, token_num: int) -> NamedFusionViT:
    """Fusion ViT initialised from a named teacher backbone (spec §3.3 for any timm ViT).

    Blocks, patch embedding, norms and register tokens are copied; the patch rows of the position
    embedding are copied; every special token = the CLS token plus its position row (timm's
    ``no_embed_class`` models add no position to it). Backbones without a class token (SigLIP,
    attention-pooled) have nothing to copy: their special tokens keep the trunc-normal(0.02)
    initialisation, drawn from the global torch RNG.
    """
    arch = backbone.arch
    fusion = fusion_vit(arch.backbone, arch.img_size, arch.depth, token_num)
    state = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    rows = pos_prefix_rows(backbone)
    pos = state.pop("pos_embed")
    cls, reg = state.pop("cls_token", None), state.pop("reg_token", None)
    prefix_pos = pos[:, :rows]
    new = {k: v for k, v in state.items() if not k.startswith(("attn_pool.", "fc_norm.", "head."))}
    new["pos_embed"] = pos[:, rows:]
    n_cls = 1 if cls is not None else 0
    if reg is not None:
        new["reg_token"] = reg + prefix_pos[:, n_cls:] if rows else reg
    result = fusion.vit.load_state_dict(new, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"the {arch.backbone} teacher does not fit its fusion ViT: missing "
                              f"{result.missing_keys[:6]}, unexpected {result.unexpected_keys[:6]}")
    if cls is not None:
        start = cls + prefix_pos[:, :1] if rows else cls
        with torch.no_grad():
            for name in fusion.token_names:
                getattr(fusion, name).copy_(start)
    return fusion


def student_from_teacher(teacher: nn.Module, num_classes: int, token_num: int) -> Student:
    """§3.3 for a named backbone: :func:`fusion_from_teacher`, heads copied as for DINO."""
    state = clean_state(teacher.state_dict(), "<teacher state>", "teacher")
    head = sub_state(state, "head.")
    if not head:
        raise CheckpointError("the teacher has no DINO head (head.*); grow one with sketch.init_head=new (README)")
    dims = infer_head_dims(head, "<teacher state>", "DINO head")
    backbone = fusion_from_teacher(teacher.backbone, token_num)
    student = heads_around(backbone, token_num, dims, num_classes)
    new = {f"head.{k}": v for k, v in head.items()}
    if token_num == 3:
        new.update({f"head_skt.{k}": v for k, v in head.items()})
    new.update({f"head_fusion.{k}": v for k, v in head.items() if k.startswith("mlp.")})
    result = student.load_state_dict(new, strict=False)
    check_load(result, "<teacher state>", "TVT student heads",
               ignore_missing=[k for k in student.state_dict() if k.startswith("backbone.")]
               + ["head_fusion.fc.weight", "head_fusion.fc.bias"])
    return student


def heads_around(backbone: nn.Module, token_num: int, head_dims: dict, num_classes: int,
                  fusion_dims: dict | None = None) -> Student:
    """A Student of random heads of the given sizes around ``backbone``."""
    dim = backbone.arch.embed_dim
    mlp = {k: head_dims[k] for k in ("hidden_dim", "bottleneck_dim", "nlayers")}
    fusion_mlp = {k: (fusion_dims or head_dims)[k] for k in ("hidden_dim", "bottleneck_dim", "nlayers")}
    head = DINOHead(dim, out_dim=head_dims["out_dim"], **mlp)
    head_skt = DINOHead(dim, out_dim=head_dims["out_dim"], **mlp) if token_num == 3 else None
    return Student(backbone, head, FusionHead(dim, num_classes, **fusion_mlp), head_skt)


def new_dino_head(embed_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int,
                  norm_last_layer: bool = True) -> DINOHead:
    """A freshly initialised DINO head for a backbone whose authors released none."""
    return DINOHead(embed_dim, out_dim, hidden_dim, bottleneck_dim, norm_last_layer=norm_last_layer)


INIT_HEADS = ("checkpoint", "new")


def _arch_name(name: str) -> str:
    """timm architecture of a backbone name without its pretrained tag ("" for the paper's ViT)."""
    from tvt.models.backbones import resolve

    return resolve(name)[0].split(".")[0] if name else ""


def check_teacher_backbone(model_backbone: str, teacher: nn.Module, where: str | Path) -> None:
    """The transforms follow ``model.backbone``: refuse a teacher of another backbone."""
    arch = getattr(getattr(teacher, "backbone", teacher), "arch", None)
    got = getattr(arch, "backbone", "")
    if _arch_name(got) != _arch_name(model_backbone):
        raise ConfigError(f"{where} holds a {got or 'DINO (paper)'} ViT but model.backbone is "
                          f"{model_backbone or 'unset (the paper DINO ViT)'}; set model.backbone={got} so that "
                          "images are normalised as the backbone expects")
