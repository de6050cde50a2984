"""Reading checkpoints and turning their state dicts into our key layout (spec §3).

Pure functions on dicts of tensors: reading a file safely, stripping DDP/wrapper prefixes,
renaming weight-norm keys, finding the model inside the formats we accept, and inferring the
architecture from tensor shapes. Building modules from the result is :mod:`tvt.models.weights`.

Accepted layouts:

* DINO backbone-only release files and timm ViT state dicts: flat ``cls_token``, ``pos_embed``,
  ``patch_embed.*``, ``blocks.*``, ``norm.*`` (timm's ``head.*`` classifier is ignored);
* DINO full training checkpoints: ``teacher`` / ``student`` dicts with ``backbone.*`` / ``head.*``
  keys, the student with a ``module.`` prefix, plus a pickled ``args`` Namespace [Q22];
* the authors' TVT checkpoints: ``student`` with ``module.backbone.*``, ``module.head.*``,
  ``module.head_fusion.*`` (``module.head_skt.*``), ``teacher_img``, ``teacher_skt``, ``args``;
* ours (``{"format": "tvt", "stage": ...}``, see the API contract), and ``.safetensors`` files
  holding any of the flat state dicts above.
"""

from __future__ import annotations

import argparse
import math
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tvt.errors import CheckpointError
from tvt.models.vit import ViTArch

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _torch_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``; only argparse.Namespace is allow-listed [Q22]."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # most likely the pickled argparse.Namespace of official files; retry allow-listed
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is not None:
        with safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    torch.serialization.add_safe_globals([argparse.Namespace])  # torch 2.4: no context manager
    return torch.load(path, map_location="cpu", weights_only=True)


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    # first sentence only: torch's advice about weights_only would mislead for a damaged file
    detail = re.split(r"(?<=\.)\s", (str(exc).strip().splitlines() or [""])[0])[0][:160]
    return CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {detail}), or not a "
                           "PyTorch checkpoint; copy or download it again")


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file to a dict on the CPU, never executing pickled code.

    ``torch.load(weights_only=True)``; official TVT/DINO files pickle an ``argparse.Namespace``
    under ``args``, which is allow-listed (and nothing else) [Q22]. ``.safetensors`` files give
    their flat tensor dict. Raises :class:`CheckpointError` naming the path when the file is
    missing, not a checkpoint, truncated, or holds disallowed objects.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist or is not a file; check the path")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = _torch_load(p)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # torch's words for a refused class; junk bytes fail here too
            raise _unreadable(p, exc) from exc
        raise CheckpointError(
            f"checkpoint {p} contains pickled objects other than tensors and argparse.Namespace "
            f"({_short(exc)}); it is not loaded for safety. Re-save it with only tensors, numbers "
            "and strings (e.g. torch.save({'student': model.state_dict()}, path))"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError/EOFError/... for foreign or cut files
        raise _unreadable(p, exc) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {p} holds a {type(obj).__name__}, expected a dict")
    return obj


def strip_prefixes(state: Mapping[str, Any], prefixes: Iterable[str] = WRAPPER_PREFIXES) -> dict:
    """Remove leading wrapper prefixes (``module.``, ``_orig_mod.``) from every key."""
    prefixes = tuple(prefixes)
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def sub_state(state: Mapping[str, Any], prefix: str) -> dict:
    """Entries whose key starts with ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def legacy_weight_norm(state: Mapping[str, Any]) -> dict:
    """Rename weight-norm keys to the legacy ``weight_g`` / ``weight_v`` names.

    Handles ``parametrizations.weight.original0/1`` (torch's new weight_norm) and a plain
    ``last_layer.weight`` (exactly re-parametrised: v = W, g = row norms of W).
    """
    out = {}
    for key, value in state.items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        out[key] = value
    for key in [k for k in out if k.endswith("last_layer.weight")]:
        base = key[: -len("weight")]
        if base + "weight_v" not in out:
            w = out.pop(key)
            out[base + "weight_v"] = w
            out[base + "weight_g"] = w.norm(dim=1, keepdim=True)
    return out


def clean_state(state: Any, path: Path | str, entry: str) -> dict[str, Tensor]:
    """Validate a state dict (str -> Tensor), strip wrapper prefixes, rename weight-norm keys."""
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"checkpoint {path}: entry {entry!r} is not a non-empty state dict")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(
            f"checkpoint {path}: entry {entry!r} has non-tensor values under {bad[:5]}; "
            "expected a model state dict"
        )
    check_finite(state, path, entry)
    return legacy_weight_norm(strip_prefixes(state))


def describe(ckpt: Mapping[str, Any]) -> str:
    """Short listing of a checkpoint's top-level entries, for error messages."""
    keys = list(ckpt)
    return ", ".join(map(str, keys[:12])) + (f", ... ({len(keys)} entries)" if len(keys) > 12 else "")


def is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def flat_state(ckpt: Mapping[str, Any]) -> dict[str, Tensor] | None:
    """The state dict of a flat file (the file itself, or its ``state_dict``/``model`` entry)."""
    for candidate in (ckpt, ckpt.get("state_dict"), ckpt.get("model")):
        if is_tensor_dict(candidate):
            return strip_prefixes(candidate)
    return None


def arch_hint(ckpt: Mapping[str, Any]) -> dict:
    """The ``arch`` hints of our checkpoints ({} for other formats; tensors always win).

    ``backbone`` (a named timm backbone, :mod:`tvt.models.backbones`) comes from ``arch`` or from
    the stored config's ``model.backbone``; it is absent for the paper's DINO ViT.
    """
    hint = ckpt.get("arch")
    out = dict(hint) if isinstance(hint, Mapping) else {}
    cfg = ckpt.get("config")
    model_cfg = cfg.get("model") if isinstance(cfg, Mapping) else None
    if not out.get("backbone") and isinstance(model_cfg, Mapping) and model_cfg.get("backbone"):
        out["backbone"] = str(model_cfg["backbone"])
    if not out.get("backbone"):
        out.pop("backbone", None)
    return out


def _err(path: Path | str, msg: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: {msg}")


def infer_vit_arch(
    backbone: Mapping[str, Tensor], path: Path | str, *, prefix_tokens: int = 1, hint: Mapping | None = None
) -> ViTArch:
    """ViT sizes from backbone tensors (keys without ``backbone.``).

    Patch size and width from ``patch_embed.proj.weight``, depth from the block count, MLP ratio
    from ``fc1``, native img_size from the square ``pos_embed`` grid (rows minus
    ``prefix_tokens``). Heads are not stored in weights: ``hint["num_heads"]`` if given, else
    ``embed_dim // 64`` (DINO and timm ViTs use 64-dim heads).
    """
    hint = dict(hint or {})
    stem = "conv" if "patch_embed.proj.0.weight" in backbone else "patch"
    stem_key = "patch_embed.proj.0.weight" if stem == "conv" else "patch_embed.proj.weight"
    for key in (stem_key, "pos_embed", "blocks.0.mlp.fc1.weight"):
        if key not in backbone:
            raise _err(path, f"no {key!r} among the backbone weights; not a ViT state dict")
    if stem == "conv":
        dim, patch = _conv_stem_sizes(backbone, path)
    else:
        proj = backbone["patch_embed.proj.weight"]
        if proj.ndim != 4 or proj.shape[-1] != proj.shape[-2]:
            raise _err(path, f"patch_embed.proj.weight has shape {tuple(proj.shape)}, expected (D, 3, p, p)")
        dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    blocks = {int(m.group(1)) for k in backbone if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks or blocks != set(range(len(blocks))):
        raise _err(path, f"transformer blocks are not numbered 0..N-1 (found {sorted(blocks)[:8]})")
    rows = int(backbone["pos_embed"].shape[1]) - prefix_tokens
    grid = math.isqrt(max(rows, 0))
    if rows <= 0 or grid * grid != rows:
        raise _err(
            path,
            f"pos_embed has {rows + prefix_tokens} rows; expected {prefix_tokens} special row(s) plus a "
            "square patch grid (ViTs without a positional row for the CLS token are not supported)",
        )
    num_heads = int(hint.get("num_heads") or max(1, dim // 64))
    if dim % num_heads:
        raise _err(path, f"embed dim {dim} is not divisible by num_heads {num_heads}")
    hidden = int(backbone["blocks.0.mlp.fc1.weight"].shape[0])
    return ViTArch(
        img_size=grid * patch, patch_size=patch, embed_dim=dim, depth=len(blocks),
        num_heads=num_heads, mlp_ratio=hidden / dim, stem=stem,
    )


def _conv_stem_sizes(backbone: Mapping[str, Tensor], path: Path | str) -> tuple[int, int]:
    """(embed_dim, patch_size) of a conv stem (:func:`tvt.models.vit.conv_stem`) from its weights."""
    convs = sorted(int(m.group(1)) for k in backbone
                   if (m := re.fullmatch(r"patch_embed\.proj\.(\d+)\.weight", k)) and backbone[k].ndim == 4)
    if convs != [3 * i for i in range(len(convs))]:
        raise _err(path, f"conv-stem layers patch_embed.proj.{{0,3,6,..}} expected, found {convs}")
    last = backbone[f"patch_embed.proj.{convs[-1]}.weight"]
    return int(last.shape[0]), 2 ** len(convs)


def infer_head_dims(head: Mapping[str, Tensor], path: Path | str, name: str) -> dict:
    """Sizes of a DINO/fusion head from its tensors (keys without the ``head.`` prefix).

    Returns in_dim, hidden_dim, bottleneck_dim, nlayers and, when present, out_dim (DINO
    ``last_layer``) or num_classes (fusion ``fc``) [Q2].
    """
    if "mlp.weight" in head:
        linears = [head["mlp.weight"]]
    else:
        idx = sorted(int(m.group(1)) for k in head if (m := re.fullmatch(r"mlp\.(\d+)\.weight", k)))
        if not idx:
            raise _err(path, f"the {name} has no MLP weights (keys {sorted(head)[:6]})")
        if idx != list(range(0, 2 * len(idx), 2)) or any(head[f"mlp.{i}.weight"].ndim != 2 for i in idx):
            raise _err(path, f"the {name} MLP is not Linear/GELU layers (BatchNorm heads are not supported)")
        linears = [head[f"mlp.{i}.weight"] for i in idx]
    dims = {
        "in_dim": int(linears[0].shape[1]),
        "hidden_dim": int(linears[0].shape[0]) if len(linears) > 1 else 2048,
        "bottleneck_dim": int(linears[-1].shape[0]),
        "nlayers": len(linears),
    }
    if "last_layer.weight_v" in head:
        dims["out_dim"] = int(head["last_layer.weight_v"].shape[0])
    if "fc.weight" in head:
        dims["num_classes"] = int(head["fc.weight"].shape[0])
    return dims


def check_finite(state: Mapping[str, Any], path: Path | str, entry: str = "") -> None:
    """Refuse NaN/inf weights: a model built from them gives NaN features without any error."""
    where = f"entry {entry!r}, " if entry and not entry.startswith("<") else ""
    for key, value in state.items():
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise _err(path, f"{where}tensor {key!r} holds {bad} non-finite value(s) (NaN or inf); the file is "
                             "damaged or comes from a diverged run: use an earlier checkpoint")


def check_load(result: Any, path: Path | str, what: str, ignore_missing: Iterable[str] = ()) -> None:
    """Turn missing/unexpected keys of ``load_state_dict(strict=False)`` into a CheckpointError.

    Never continue with randomly initialised weights [Q18].
    """
    missing = [k for k in result.missing_keys if k not in set(ignore_missing)]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:10]}" + (" ..." if len(missing) > 10 else ""))
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:10]}" + (" ..." if len(unexpected) > 10 else ""))
        raise _err(path, f"weights do not fit the {what}: " + "; ".join(parts))
