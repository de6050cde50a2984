"""Pieces shared by the training loops: precision, parameter groups, clipping, logging."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tvt.errors import ConfigError
from tvt.models.vit import ViTArch


def config_arch(cfg: Any) -> ViTArch:
    """The ViT sizes of ``cfg.model`` at the native size ``cfg.data.img_size`` (random-init models)."""
    m = cfg.model
    return ViTArch(img_size=cfg.data.img_size, patch_size=m.patch_size, embed_dim=m.embed_dim, depth=m.depth,
                   num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, stem=m.stem)


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python ``random`` (the official code leaves ``random`` unseeded [Q23];
    it drives blur and solarization, so seeding it makes CPU runs repeatable)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> bf16 on CUDA, fp32 elsewhere. Mixed precision is refused on CPU."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if device.type != "cuda" and precision != "fp32":
        raise ConfigError(f"precision {precision} needs a GPU; use precision=fp32 on {device.type}")
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(precision: str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (the official setting); None otherwise."""
    return torch.amp.GradScaler("cuda") if precision == "fp16" else None


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """One optimizer step (through the GradScaler for fp16), then clear the gradients."""
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def param_groups(model: nn.Module, backbone_lr_mult: float | None) -> list[dict[str, Any]]:
    """Spec §3.4 / [Q16]: groups by name; "not regularised" = name ends in .bias or 1-D.

    With ``backbone_lr_mult`` set (stage B) the order is [backbone reg, backbone no-reg, heads reg,
    heads no-reg] and each group carries ``lr_mult``; with None (stage A) two groups [reg, no-reg].
    Frozen parameters (e.g. ``last_layer.weight_g`` with norm_last_layer) are left out.
    """
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_reg = name.endswith(".bias") or p.ndim == 1
        is_bb = backbone_lr_mult is not None and "backbone" in name
        buckets.setdefault((is_bb, no_reg), []).append(p)
    order = [(True, False), (True, True), (False, False), (False, True)] if backbone_lr_mult is not None else [(False, False), (False, True)]
    groups = []
    for is_bb, no_reg in order:
        params = buckets.get((is_bb, no_reg), [])
        groups.append({"params": params, "lr_mult": backbone_lr_mult if is_bb else 1.0, "regularised": not no_reg})
    return groups


def set_drop_path(vit: nn.Module, rate: float) -> None:
    """Linear stochastic-depth rates rate * i / (depth - 1) on a timm ViT's blocks (spec §2.1)."""
    from timm.layers import DropPath

    depth = len(vit.blocks)
    for i, blk in enumerate(vit.blocks):
        p = rate * i / max(depth - 1, 1)
        for name in ("drop_path1", "drop_path2"):
            if hasattr(blk, name):
                setattr(blk, name, DropPath(p) if p > 0 else nn.Identity())


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
        g["weight_decay"] = wd if g.get("regularised", True) else 0.0


def clip_per_parameter(params: Iterable[nn.Parameter], max_norm: float) -> None:
    """Clip every parameter's gradient to ``max_norm`` separately [Q15] (not the global norm)."""
    if max_norm <= 0:
        return
    for p in params:
        if p.grad is None:
            continue
        norm = p.grad.detach().norm(2)
        coef = max_norm / (norm + 1e-6)
        if coef < 1:
            p.grad.detach().mul_(coef)


def cancel_last_layer(model: nn.Module, epoch: int, freeze_epochs: int) -> None:
    """Drop the gradients of ``last_layer`` parameters during the first ``freeze_epochs`` epochs."""
    if epoch >= freeze_epochs:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None


class JsonlLogger:
    """Appends one JSON object per line; only the main process writes."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = Path(path), enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")


class Throughput:
    """Images per second over the last logging window."""

    def __init__(self) -> None:
        self.t0, self.n = time.perf_counter(), 0

    def add(self, n: int) -> None:
        self.n += n

    def rate(self) -> float:
        dt = time.perf_counter() - self.t0
        r = self.n / dt if dt > 0 else math.nan
        self.t0, self.n = time.perf_counter(), 0
        return r

