"""Retrieval encoders: one callable feature extractor for any checkpoint or model folder.

:func:`load_encoder` takes a TVT student (ours or official), a plain ViT / teacher checkpoint, a
folder written by ``tvt export`` or a timm/Hugging Face folder of a named backbone, and gives an
:class:`Encoder` in eval mode. Building the modules themselves is :mod:`tvt.models.weights`;
this module only picks which one a file holds and wraps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tvt.errors import CheckpointError, InputError
from tvt.models.convert import arch_hint, describe, flat_state, read_checkpoint
from tvt.models.weights import build_student, is_fusion_state, plain_vit, student_state, vit_model
from tvt.models.wrappers import RETURN_IDX, check_modality

__all__ = [
    "Encoder",
    "MODEL_FORMAT",
    "MODEL_WEIGHTS",
    "load_encoder",
    "load_model_folder",
    "read_training_info",
    "training_info",
]


MODEL_FORMAT = "tvt-model"  # config.json "format" of an exported model folder (tvt.models.export)
MODEL_WEIGHTS = "model.safetensors"


class Encoder:
    """Callable feature extractor: ``encoder(x [N, 3, H, W], modality) -> [N, dim]`` (raw).

    kind ``"tvt"``: ``Student.features(x, modality, return_idx)``; kind ``"vit"``: the pooled
    feature of a plain ViT (CLS token, or the backbone's own pooling; ``return_idx`` and
    ``modality`` do not change it). ``dim`` is the feature size, ``img_size`` the model's native
    input side, ``patch_size`` its patch side, ``mean``/``std`` the input normalisation the
    backbone was trained with (ImageNet's for DINO). ``info`` holds what is known about the
    training (``dataset``, ``train_classes``, ``stage``; empty for foreign files).
    Runs in eval mode under ``torch.inference_mode``.
    """

    def __init__(self, model: nn.Module, kind: str, return_idx: int = 0, device: str | torch.device = "cpu",
                 info: Mapping[str, Any] | None = None) -> None:
        from tvt.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        if kind not in ("tvt", "vit"):
            raise ValueError(f"kind must be 'tvt' or 'vit', got {kind!r}")
        if return_idx not in RETURN_IDX:
            raise InputError(f"return_idx must be one of {RETURN_IDX}, got {return_idx!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.kind, self.return_idx = kind, return_idx
        backbone = getattr(model, "backbone", model)
        self.img_size: int = backbone.arch.img_size
        self.patch_size: int = backbone.arch.patch_size
        self.mean: tuple[float, ...] = tuple(getattr(backbone.arch, "mean", IMAGENET_MEAN))
        self.std: tuple[float, ...] = tuple(getattr(backbone.arch, "std", IMAGENET_STD))
        self.info: dict[str, Any] = dict(info or {})
        if kind == "tvt" and return_idx >= 2:
            self.dim: int = model.head_fusion.fc.in_features
        else:
            self.dim = backbone.arch.embed_dim

    def transform(self, size: int | None = None) -> Any:
        """The evaluation transform for this model (resize to ``size`` or the native side, its mean/std)."""
        from tvt.data.transforms import eval_transform

        return eval_transform(size or self.img_size, mean=self.mean, std=self.std)

    def __call__(self, x: Tensor, modality: str = "skt") -> Tensor:
        """[N, 3, H, W] -> [N, dim] float features on ``self.device`` (not normalised)."""
        check_modality(modality)
        with torch.inference_mode():
            x = x.to(self.device)
            if self.kind == "tvt":
                return self.model.features(x, modality, self.return_idx)
            return self.model(x)


def training_info(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """What a checkpoint says about its training (for model cards and warnings)."""
    keys = ("dataset", "split", "stage", "train_classes", "test_classes")
    return {k: ckpt[k] for k in keys if isinstance(ckpt.get(k), (str, list))}


def read_training_info(path: str | Path) -> dict[str, Any]:
    """:func:`training_info` of a checkpoint file or of a model folder (its config.json)."""
    p = Path(path).expanduser()
    if p.is_dir():
        from tvt.models.backbone_weights import read_folder_config

        cfg = read_folder_config(p)
        return {k: cfg[k] for k in ("dataset", "split", "stage", "train_classes", "test_classes") if k in cfg}
    return training_info(read_checkpoint(p))


def load_model_folder(folder: str | Path, return_idx: int | None = None, device: str | torch.device = "cpu") -> Encoder:
    """Encoder of a model folder written by ``tvt export`` (JSON + safetensors; nothing unpickled).

    ``return_idx`` None: the folder's own ``return_idx``.
    """
    from safetensors.torch import load_file

    from tvt.models.backbone_weights import read_folder_config

    d = Path(folder).expanduser()
    cfg = read_folder_config(d)
    if cfg.get("format") != MODEL_FORMAT or cfg.get("kind") not in ("tvt", "vit"):
        raise CheckpointError(f"{d / 'config.json'} is not a tvt model folder (format {cfg.get('format')!r}, "
                              f"kind {cfg.get('kind')!r}); make one with `tvt export CHECKPOINT --out DIR`")
    wfile = d / MODEL_WEIGHTS
    try:
        state = load_file(str(wfile), device="cpu")
    except Exception as exc:  # safetensors raises its own errors for missing/cut files
        raise CheckpointError(f"cannot read {wfile} ({type(exc).__name__}: {exc}); export the model again") from exc
    hint = dict(cfg.get("arch") or {})
    if cfg["kind"] == "tvt":
        model: nn.Module = build_student(state, wfile, hint)
    else:
        model = vit_model(dict(state), wfile, hint)
    idx = int(cfg.get("return_idx", 0)) if return_idx is None else return_idx
    info = {k: cfg[k] for k in ("dataset", "split", "stage", "train_classes", "test_classes") if k in cfg}
    return Encoder(model, cfg["kind"], idx, device, info=info)


def load_encoder(path: str | Path, return_idx: int | None = 0, device: str | torch.device = "cpu") -> Encoder:
    """Encoder for a TVT student (ours or official), any plain ViT / teacher checkpoint, a model
    folder of ``tvt export`` or a timm/Hugging Face model folder of a named backbone.

    A TVT student is used when the file has one (``features`` with ``return_idx``); otherwise the
    plain ViT (DINO backbone-only/full teacher, timm, our stage-A checkpoints) gives its pooled
    feature and ``return_idx`` is ignored.

    Args:
        path: the checkpoint file or model folder.
        return_idx: which TVT feature (0: the fusion token z_fus; see ``Student.features``); None: 0,
            or an exported folder's own.
        device: where the model runs.
    Returns:
        An :class:`Encoder`: ``encoder(x [N, 3, S, S], "img" | "skt") -> [N, dim]`` raw features,
        with ``.dim``, ``.img_size`` (the native side S) and ``.model``.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        from tvt.models.backbone_weights import load_named_backbone, read_folder_config

        if read_folder_config(p).get("format") == MODEL_FORMAT:
            return load_model_folder(p, return_idx, device)
        vit = load_named_backbone(p)
        return Encoder(vit, "vit", return_idx or 0, device, info={"pretrained_backbone": vit.arch.backbone})
    return_idx = return_idx or 0
    ckpt = read_checkpoint(p)
    info = training_info(ckpt)
    flat = flat_state(ckpt)
    student_entry = isinstance(ckpt.get("student"), Mapping) and is_fusion_state(ckpt["student"])
    if student_entry or (flat is not None and is_fusion_state(flat)):
        model: nn.Module = build_student(student_state(ckpt, p, "student"), p, arch_hint(ckpt))
        return Encoder(model, "tvt", return_idx, device, info=info)
    vit = plain_vit(ckpt, p)
    if vit is None:
        raise CheckpointError(
            f"checkpoint {p} holds neither a TVT student nor a ViT (entries: {describe(ckpt)})"
        )
    return Encoder(vit, "vit", return_idx, device, info=info)
