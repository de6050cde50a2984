"""Weights of a named backbone (:mod:`tvt.models.backbones`) from the files people download.

Accepted, never unpickling anything but tensors (and DINO's argparse Namespace [Q22]):

* a timm state dict (``.pth`` / ``.pt`` / ``.bin``), also wrapped in ``state_dict`` / ``model``;
* a ``.safetensors`` file;
* a Hugging Face-style model folder as timm writes and the hub serves it (``config.json`` with
  the timm ``architecture``, plus ``model.safetensors`` or ``pytorch_model.bin``);
* the official release files timm converts itself: DINO backbone-only or full checkpoints
  (the ``teacher`` backbone), DINOv2's ``dinov2_*_pretrain.pth`` (also with registers) and
  OpenAI-format CLIP state dicts.

timm's own ``checkpoint_filter_fn`` converts those layouts and resizes the position embedding
to the model's grid; the result must then fit the model exactly (missing or unexpected keys are
errors naming them, never random weights [Q18]), and every tensor must be finite.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from tvt.errors import CheckpointError
from tvt.models.backbones import build_named_vit, resolve
from tvt.models.convert import check_finite, check_load, clean_state, describe, flat_state, read_checkpoint, sub_state

FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_IGNORED_PREFIXES = ("head.",)  # timm classifier / CLIP projection: not part of the pooled feature


def folder_weights(folder: Path) -> Path:
    """The weights file of a model folder (safetensors preferred)."""
    for name in FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"model folder {folder} holds none of {', '.join(FOLDER_WEIGHTS)}")


def read_folder_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a model folder as a dict (CheckpointError when missing or not JSON)."""
    path = folder / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckpointError(f"model folder {folder} has no readable config.json ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} holds a JSON {type(cfg).__name__}, expected an object")
    return cfg


def folder_backbone(folder: Path, cfg: Mapping[str, Any]) -> str:
    """The timm model name a timm/HF model folder was saved from (architecture + pretrained tag)."""
    arch = cfg.get("architecture")
    if not isinstance(arch, str):
        kind = cfg.get("model_type") or cfg.get("architectures")
        raise CheckpointError(
            f"{folder / 'config.json'} names no timm `architecture`"
            + (f" (it is a transformers {kind!r} folder, which timm cannot load)" if kind else "")
            + "; download the timm version of the model (e.g. huggingface-cli download timm/<name>) "
            "or pass --backbone with a timm state dict"
        )
    tag = (cfg.get("pretrained_cfg") or {}).get("tag")
    return f"{arch}.{tag}" if tag else arch


def _state_of(ckpt: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    """The backbone state dict inside a file: flat (timm/DINO/DINOv2/CLIP) or a DINO ``teacher``."""
    flat = flat_state(ckpt)
    if flat is not None:
        return dict(flat)
    teacher = ckpt.get("teacher")
    if isinstance(teacher, Mapping):
        state = sub_state(clean_state(teacher, path, "teacher"), "backbone.")
        if state:
            return state
    raise CheckpointError(f"{path} holds no backbone state dict (entries: {describe(ckpt)}); expected a timm or "
                          "DINO/DINOv2/CLIP state dict, a .safetensors file or a model folder")


def read_backbone_weights(path: str | Path) -> tuple[dict[str, Tensor], str | None]:
    """(state dict, backbone name recorded by a model folder or None) of a file or folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        name = folder_backbone(p, read_folder_config(p))
        wfile = folder_weights(p)
        return _state_of(read_checkpoint(wfile), wfile), name
    return _state_of(read_checkpoint(p), p), None


def block_count(state: Mapping[str, Tensor], where: str | Path) -> int:
    """Number of transformer blocks (``blocks.N.*`` keys) in a backbone state dict."""
    import re

    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks or blocks != set(range(len(blocks))):
        raise CheckpointError(f"{where}: transformer blocks blocks.0..N-1 expected among the weights "
                              f"(found {sorted(blocks)[:8]})")
    return len(blocks)


def load_named_state(model: nn.Module, state: Mapping[str, Tensor], where: str | Path) -> None:
    """Convert ``state`` with timm's filter for ``model`` and load it strictly (finite values only)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = {k: v for k, v in state.items() if not k.startswith(_IGNORED_PREFIXES)}
    proj = state.get("patch_embed.proj.weight")
    want = model.patch_embed.proj.weight.shape
    if proj is not None and proj.ndim == 4 and tuple(proj.shape[-2:]) != tuple(want[-2:]):
        raise CheckpointError(f"{where}: patches of {tuple(proj.shape[-2:])} px, but backbone "
                              f"{model.arch.backbone} uses {tuple(want[-2:])}; check --backbone")
    check_finite(state, where)
    try:
        state = checkpoint_filter_fn(dict(state), model)
        result = model.load_state_dict(state, strict=False)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{where}: weights do not fit backbone {model.arch.backbone}: "
                              f"{str(exc).splitlines()[0][:300]}") from exc
    check_load(result, where, f"backbone {model.arch.backbone}")


def load_named_backbone(path: str | Path, backbone: str | None = None, img_size: int | None = None,
                        drop_path_rate: float = 0.0) -> nn.Module:
    """Named timm ViT with the weights of ``path`` (file or model folder); eval mode.

    ``backbone`` may be omitted for a model folder (its ``config.json`` names it); when both are
    given they must agree. The depth follows the weights; ``img_size`` defaults to the backbone's.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"weights {p} do not exist; check the path")
    state, recorded = read_backbone_weights(p)
    name = backbone or recorded
    if not name:
        raise CheckpointError(f"{p} does not say which backbone it holds; pass --backbone NAME")
    if backbone and recorded and resolve(backbone)[0].split(".")[0] != resolve(recorded)[0].split(".")[0]:
        raise CheckpointError(f"model folder {p} holds {recorded}, not --backbone {backbone}")
    model = build_named_vit(name, img_size, depth=block_count(state, p), drop_path_rate=drop_path_rate)
    load_named_state(model, state, p)
    return model.eval()
