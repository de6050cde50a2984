"""Building models from checkpoints (spec §3): teachers, backbones, the TVT student.

Architectures are inferred from tensor shapes (see :mod:`tvt.models.convert`), so any ViT size
loads. Loading is strict: a missing or unexpected key is a :class:`CheckpointError` naming the
keys, never a silent fall-back to random weights [Q18]. Models loaded for inference
(``load_backbone``, ``load_student``) are returned in eval mode. Retrieval encoders over these
modules (``load_encoder``, exported model folders) are :mod:`tvt.models.encoder`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tvt.errors import CheckpointError
from tvt.models.convert import (
    arch_hint,
    check_finite,
    check_load,
    clean_state,
    describe,
    flat_state,
    infer_head_dims,
    infer_vit_arch,
    read_checkpoint,
    sub_state,
)
from tvt.models.backbones import is_named
from tvt.models.fusion import POS_RESAMPLE_MODES, FusionViT, NamedFusionViT
from tvt.models.heads import DINOHead, FusionHead
from tvt.models.named import fusion_size, fusion_vit, heads_around, plain_from_state, student_from_teacher
from tvt.models.vit import DinoViT, ViTArch, build_vit
from tvt.models.wrappers import Student, Teacher

__all__ = [
    "arch_hints",
    "init_student_from_teacher",
    "load_backbone",
    "load_student",
    "load_teacher",
    "read_checkpoint",
]

_TIMM_IGNORED = ("head.weight", "head.bias")  # timm classifier; not part of the backbone


def is_fusion_state(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` holds a TVT fusion ViT (its fusion token), not a plain ViT."""
    return any(k.endswith("fusion_token") for k in state)


def _backbone_model(backbone: dict[str, Tensor], path: Path | str, hint: Mapping) -> DinoViT:
    """DinoViT with ``backbone`` (flat keys) loaded strictly."""
    if is_fusion_state(backbone):
        raise CheckpointError(
            f"checkpoint {path} holds a TVT fusion ViT, not a plain ViT; use load_student or load_encoder"
        )
    if any(k.startswith("fc_norm.") for k in backbone):
        # timm keeps fc_norm only when it pools by averaging (its final `norm` is then Identity).
        raise CheckpointError(
            f"checkpoint {path} is an average-pooled timm ViT (fc_norm.* keys); a CLS-token ViT with a "
            "final `norm` (DINO, or timm with global_pool='token') is needed"
        )
    backbone = {k: v for k, v in backbone.items() if k not in _TIMM_IGNORED}
    model = build_vit(infer_vit_arch(backbone, path, prefix_tokens=1, hint=hint))
    _load(model, backbone, path, "ViT backbone")
    return model


def vit_model(backbone: dict[str, Tensor], path: Path | str, hint: Mapping) -> nn.Module:
    """The plain ViT of ``backbone`` weights: named timm backbone per ``hint``, else DINO's ViT."""
    if hint.get("backbone"):
        check_finite(backbone, path)
        return plain_from_state(str(hint["backbone"]), backbone, path)
    return _backbone_model(backbone, path, hint)


def _load(model: nn.Module, state: Mapping[str, Tensor], path: Path | str, what: str, **kw: Any) -> None:
    check_finite(state, path)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"checkpoint {path}: weights do not fit the {what}: {exc}") from exc
    check_load(result, path, what, **kw)


def _teacher_state(ckpt: Mapping[str, Any], path: Path | str, key: str) -> dict[str, Tensor]:
    """The ``key`` entry (backbone.* + head.*) of a DINO / stage-A / TVT checkpoint."""
    if key not in ckpt:
        flat = flat_state(ckpt)
        if flat is not None and "patch_embed.proj.weight" in flat:
            raise CheckpointError(
                f"checkpoint {path} is a backbone-only ViT file (no DINO head); a full checkpoint "
                f"with a `{key}` entry holding backbone and DINO head is needed (e.g. DINO's "
                "*_pretrain_full_checkpoint.pth, or a `tvt pretrain-sketch` checkpoint); for a backbone released "
                "without a DINO head (DINOv2, CLIP, SigLIP) grow one: model.backbone=NAME, sketch.init_head=new "
                "(README, \"Which model should I use?\")"
            )
        raise CheckpointError(
            f"checkpoint {path} has no `{key}` entry (entries: {describe(ckpt)}); a DINO full "
            "training checkpoint or a `tvt pretrain-sketch` checkpoint is needed"
        )
    state = clean_state(ckpt[key], path, key)
    if not any(k.startswith("head.") for k in state):
        raise CheckpointError(
            f"checkpoint {path}: entry `{key}` has no DINO head (head.*); a full DINO training "
            "checkpoint with the teacher head is needed"
        )
    return state


def build_teacher(state: Mapping[str, Tensor], path: Path | str = "<state>", hint: Mapping | None = None) -> Teacher:
    """Teacher from a state dict with ``backbone.*`` and ``head.*`` keys (strict); a named timm
    backbone when ``hint["backbone"]`` says so, else the paper's DINO ViT."""
    backbone = sub_state(state, "backbone.")
    head_state = sub_state(state, "head.")
    extra = [k for k in state if not k.startswith(("backbone.", "head."))]
    if extra:
        raise CheckpointError(f"checkpoint {path}: unexpected teacher keys {extra[:10]}")
    if not backbone or not head_state:
        raise CheckpointError(f"checkpoint {path}: a teacher needs backbone.* and head.* weights")
    dims = infer_head_dims(head_state, path, "DINO head")
    if "out_dim" not in dims:
        raise CheckpointError(f"checkpoint {path}: the DINO head has no last_layer weights")
    vit = vit_model(backbone, path, hint or {})
    head = DINOHead(**dims)
    _load(head, head_state, path, "DINO head")
    return Teacher(vit, head)


def load_teacher(path: str | Path, key: str = "teacher", frozen: bool = False) -> Teacher:
    """Backbone + DINO head from the ``key`` entry of a checkpoint (spec §3.2).

    Works for DINO full training checkpoints, our stage-A (``sketch``/``image``) checkpoints and,
    with ``key="teacher_img"``/``"teacher_skt"``, the teachers stored in official TVT files. A
    backbone-only file raises :class:`CheckpointError`. The module comes back as freshly built
    (training mode, trainable; stage A starts its student from it); ``frozen=True`` gives what
    stage B needs: eval mode and ``requires_grad=False``.
    """
    ckpt = read_checkpoint(path)
    teacher = build_teacher(_teacher_state(ckpt, path, key), path, arch_hint(ckpt))
    if frozen:
        teacher.eval().requires_grad_(False)
    return teacher


def plain_vit(ckpt: Mapping[str, Any], path: Path | str) -> DinoViT | None:
    """The plain ViT of a flat (DINO/timm) file or of a ``teacher`` entry; None if neither."""
    flat = flat_state(ckpt)
    if flat is not None and "patch_embed.proj.weight" in flat:
        state = clean_state(flat, path, "<flat>")
    elif isinstance(ckpt.get("teacher"), Mapping):
        state = sub_state(clean_state(ckpt["teacher"], path, "teacher"), "backbone.")
    else:
        return None
    return vit_model(state, path, arch_hint(ckpt))


def load_backbone(path: str | Path) -> DinoViT:
    """A plain ViT (CLS output) from DINO backbone-only, DINO full (its teacher), timm or our
    stage-A/image checkpoints. timm's ``head.*`` classifier is ignored. Eval mode."""
    ckpt = read_checkpoint(path)
    vit = plain_vit(ckpt, path)
    if vit is None:
        raise CheckpointError(
            f"checkpoint {path} holds no plain ViT (entries: {describe(ckpt)}); expected a DINO/timm "
            "backbone state dict or a checkpoint with a `teacher` entry"
        )
    return vit.eval()


def new_student(
    arch: ViTArch, token_num: int, pos_resample: str, head_dims: dict, num_classes: int,
    fusion_dims: dict | None = None,
) -> Student:
    """A randomly initialised Student of the given sizes (fusion MLP = DINO MLP sizes by default).

    ``head_dims`` / ``fusion_dims``: ``out_dim`` (DINO head only), ``hidden_dim``, ``bottleneck_dim``,
    ``nlayers``, as :func:`tvt.models.convert.infer_head_dims` reads them from weights.
    """
    mlp = {k: head_dims[k] for k in ("hidden_dim", "bottleneck_dim", "nlayers")}
    fusion_mlp = {k: (fusion_dims or head_dims)[k] for k in ("hidden_dim", "bottleneck_dim", "nlayers")}
    backbone = FusionViT(arch, token_num=token_num, pos_resample=pos_resample)
    head = DINOHead(arch.embed_dim, out_dim=head_dims["out_dim"], **mlp)
    head_skt = DINOHead(arch.embed_dim, out_dim=head_dims["out_dim"], **mlp) if token_num == 3 else None
    head_fusion = FusionHead(arch.embed_dim, num_classes, **fusion_mlp)
    return Student(backbone, head, head_fusion, head_skt)


def init_student_from_teacher(
    teacher_state: Mapping[str, Tensor] | nn.Module,
    num_classes: int,
    token_num: int = 2,
    pos_resample: str = "fidelity",
    num_heads: int | None = None,
) -> Student:
    """TVT student initialised from the image teacher (spec §3.3).

    Backbone blocks/patch embed/norm copied; every special token = ``cls_token``; ``pos_embed``
    = the CLS row repeated ``token_num - 1`` times, then the teacher's full embedding (so every
    special token gets the CLS row [Q11]); ``head`` and ``head_skt`` = the teacher's head;
    ``head_fusion.mlp`` = the teacher's head MLP; ``head_fusion.fc`` is the only random tensor
    (trunc-normal 0.02, zero bias; drawn from the global torch RNG). Tensors are copied, never
    shared with the teacher.

    ``teacher_state`` is the teacher's state dict (``backbone.*``, ``head.*``) or the
    :class:`Teacher` itself. Attention heads are not stored in a state dict: they come from
    ``num_heads``, else from the Teacher module, else ``embed_dim // 64`` (DINO's ViTs) — pass the
    module or ``num_heads`` for other head sizes.
    """
    if isinstance(teacher_state, nn.Module) and is_named(getattr(teacher_state, "backbone", teacher_state)):
        return student_from_teacher(teacher_state, num_classes, token_num)
    if isinstance(teacher_state, nn.Module):
        backbone_module = getattr(teacher_state, "backbone", teacher_state)
        if num_heads is None and hasattr(backbone_module, "blocks"):
            num_heads = backbone_module.blocks[0].attn.num_heads
        teacher_state = teacher_state.state_dict()
    state = clean_state(teacher_state, "<teacher state>", "teacher")
    backbone, head = sub_state(state, "backbone."), sub_state(state, "head.")
    if not head:
        raise CheckpointError("the teacher state has no DINO head (head.*); a full DINO checkpoint is needed")
    hint = {"num_heads": num_heads} if num_heads else {}
    arch = infer_vit_arch(backbone, "<teacher state>", prefix_tokens=1, hint=hint)
    dims = infer_head_dims(head, "<teacher state>", "DINO head")
    student = new_student(arch, token_num, pos_resample, dims, num_classes)
    cls, pos = backbone.pop("cls_token"), backbone.pop("pos_embed")
    new: dict[str, Tensor] = {f"backbone.{k}": v for k, v in backbone.items()}
    for name in student.backbone.token_names:
        new[f"backbone.{name}"] = cls
    new["backbone.pos_embed"] = torch.cat([pos[:, :1]] * (token_num - 1) + [pos], dim=1)
    for prefix in ("head.", "head_skt.") if token_num == 3 else ("head.",):
        new.update({f"{prefix}{k}": v for k, v in head.items()})
    new.update({f"head_fusion.{k}": v for k, v in head.items() if k.startswith("mlp.")})
    # load_state_dict copies into the student's own tensors, so nothing aliases the teacher.
    fresh = ("head_fusion.fc.weight", "head_fusion.fc.bias")
    _load(student, new, "<teacher state>", "TVT student", ignore_missing=fresh)
    return student


def student_state(ckpt: Mapping[str, Any], path: Path | str, key: str) -> dict[str, Tensor]:
    """The TVT student weights of a checkpoint: its ``key`` entry, else a flat fusion-ViT state."""
    if key in ckpt:
        state = clean_state(ckpt[key], path, key)
    elif (flat := flat_state(ckpt)) is not None and is_fusion_state(flat):
        state = clean_state(flat, path, "<flat>")
    else:
        raise CheckpointError(
            f"checkpoint {path} has no `{key}` entry (entries: {describe(ckpt)}); a TVT checkpoint "
            "(`tvt train` or the official TVT code) is needed"
        )
    if "backbone.fusion_token" not in state:
        raise CheckpointError(
            f"checkpoint {path}: entry `{key}` is not a TVT fusion ViT (no backbone.fusion_token); "
            "for a DINO/stage-A checkpoint use load_teacher, load_backbone or load_encoder"
        )
    return state


def build_student(
    state: Mapping[str, Tensor], path: Path | str = "<state>", hint: Mapping | None = None,
    pos_resample: str | None = None,
) -> Student:
    """Student from a state dict (``backbone.*``, ``head.*``, ``head_fusion.*``, ``head_skt.*``)."""
    hint = dict(hint or {})
    backbone = sub_state(state, "backbone.")
    token_num = 3 if "dist_skt_token" in backbone else 2
    dims = infer_head_dims(sub_state(state, "head."), path, "DINO head")
    fusion = infer_head_dims(sub_state(state, "head_fusion."), path, "fusion head")
    if "out_dim" not in dims or "num_classes" not in fusion:
        raise CheckpointError(f"checkpoint {path}: the student lacks head.last_layer or head_fusion.fc weights")
    if hint.get("backbone"):
        name = str(hint["backbone"])
        vit_state = sub_state(backbone, "vit.")
        student = heads_around(fusion_vit(name, *fusion_size(name, vit_state, path), token_num), token_num, dims,
                               fusion["num_classes"], fusion)
        _load(student, state, path, f"TVT student ({name})")
        return student
    arch = infer_vit_arch(backbone, path, prefix_tokens=token_num, hint=hint)
    mode = pos_resample or hint.get("pos_resample") or "fidelity"
    if mode not in POS_RESAMPLE_MODES:
        raise CheckpointError(f"checkpoint {path}: pos_resample {mode!r} is not one of {POS_RESAMPLE_MODES}")
    student = new_student(arch, token_num, mode, dims, fusion["num_classes"], fusion)
    _load(student, state, path, "TVT student")
    return student


def load_student(path: str | Path, key: str = "student", pos_resample: str | None = None) -> Student:
    """TVT student from an official TVT checkpoint (``module.`` keys, weight_g/v, Namespace
    ``args``) or ours (stage ``tvt``). Sizes, token_num and C [Q2] come from the tensors.

    ``pos_resample`` None: the checkpoint's ``arch`` hint, else ``"fidelity"`` [Q10]. Eval mode.
    """
    ckpt = read_checkpoint(path)
    return build_student(student_state(ckpt, path, key), path, arch_hint(ckpt), pos_resample).eval()


def arch_hints(model: nn.Module) -> dict:
    """The ``arch`` entry of our checkpoint format for a Student, Teacher or ViT."""
    backbone = getattr(model, "backbone", model)
    out = dict(backbone.arch.to_dict())
    if isinstance(backbone, (FusionViT, NamedFusionViT)):
        out.update(token_num=backbone.token_num, pos_resample=backbone.pos_resample)
    return out
