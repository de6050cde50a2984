"""Base ViT backbone (spec §2.1): timm's VisionTransformer with DINO's positional-embedding rule.

The blocks, patch embedding and norms are timm's own modules; only two things are changed by a
small subclass, both to reproduce the DINO/TVT code:

* inputs whose side is not a multiple of the patch size are cropped at the bottom/right, which is
  what DINO's strided convolution does (timm would refuse them; the multi-scale evaluation of
  spec §6.1 feeds 158-px images to a patch-8 model);
* the positional embedding of the patch grid is resized with DINO's rule (:func:`resample_pos_grid`)
  instead of timm's target-size rule.

State-dict keys are those of DINO and timm (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``).

``ViTArch.stem = "conv"`` (not in the paper; used by the CPU demo) replaces the one-layer patch
embedding by a small convolutional stem, see :func:`conv_stem`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn


@dataclass
class ViTArch:
    """Sizes of a ViT; the defaults are DINO's ViT-S/8 used by TVT (spec §2.1).

    ``img_size`` is the native (training) input side; the patch grid is ``img_size // patch_size``
    on each side. ``num_heads`` is not recoverable from weights; DINO/timm ViTs use 64-dim heads.
    """

    img_size: int = 224
    patch_size: int = 8
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    stem: str = "patch"

    @property
    def grid(self) -> int:
        """Patch-grid side at the native size."""
        return self.img_size // self.patch_size

    def to_dict(self) -> dict:
        """Plain dict (for the ``arch`` entry of a checkpoint)."""
        return asdict(self)


STEMS = ("patch", "conv")


def conv_stem(patch_size: int, embed_dim: int) -> nn.Sequential:
    """A convolutional patch embedding: log2(p) stride-2 3x3 convolutions (``stem="conv"``).

    Widths double up to ``embed_dim`` (e.g. 32, 64, 128 for p = 8, D = 128); every conv but the
    last is followed by a per-image, per-channel GroupNorm (instance normalisation, so no batch
    statistics and no buffers) and a ReLU. Same output grid as the patch-p convolution. Not part of
    TVT or DINO: convolutional stems make small ViTs trained from scratch learn much faster
    (Xiao et al., "Early convolutions help transformers see better", 2021), which is what the
    CPU demo needs; pretrained DINO/timm weights always use the default ``stem="patch"``.
    State-dict keys: ``patch_embed.proj.{3i}.weight/bias`` (convs), ``patch_embed.proj.{3i+1}.*``
    (norms).
    """
    n = int(round(math.log2(patch_size))) if patch_size > 0 else 0
    if n < 1 or 2**n != patch_size:
        raise ValueError(f"the conv stem needs a power-of-two patch size >= 2, got {patch_size}")
    layers: list[nn.Module] = []
    c_in = 3
    for i in range(n):
        width = max(1, embed_dim // 2 ** (n - 1 - i))
        layers.append(nn.Conv2d(c_in, width, kernel_size=3, stride=2, padding=1))
        if i < n - 1:
            layers += [nn.GroupNorm(width, width), nn.ReLU(inplace=True)]
        c_in = width
    return nn.Sequential(*layers)


def apply_stem(vit: VisionTransformer, arch: ViTArch) -> None:
    """Install the stem ``arch.stem`` in a freshly built timm ViT (``"patch"``: keep timm's)."""
    if arch.stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {arch.stem!r}")
    if arch.stem == "conv":
        vit.patch_embed.proj = conv_stem(arch.patch_size, arch.embed_dim)


def timm_kwargs(arch: ViTArch, drop_path_rate: float = 0.0) -> dict:
    """Keyword arguments for timm's VisionTransformer matching DINO's ViT (spec §2.1).

    qkv bias, LayerNorm eps 1e-6, exact (erf) GELU, no classifier, no ``fc_norm``, dynamic input
    size (the patch embedding then returns NHWC and our ``_pos_embed`` resizes the grid).
    """
    return dict(
        img_size=arch.img_size,
        patch_size=arch.patch_size,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        mlp_ratio=arch.mlp_ratio,
        qkv_bias=True,
        num_classes=0,
        fc_norm=False,
        dynamic_img_size=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        act_layer=nn.GELU,
        drop_path_rate=drop_path_rate,
    )


def resample_pos_grid(grid_pos: Tensor, grid_hw: tuple[int, int]) -> Tensor:
    """Resize a square positional-embedding grid with DINO's rule (spec §2.1, §2.2 [Q10]).

    Bicubic (A = -0.75, ``align_corners=False``) with the *scale factors*
    ``((gh + 0.1)/g, (gw + 0.1)/g)`` handed to ``F.interpolate`` as they are: PyTorch then takes
    source coordinates from the factor, ``src = (dst + 0.5)/scale - 0.5``, so even a g -> g
    "resize" is a slight magnification anchored at the top-left corner. The factors are applied to
    (rows, cols) = (height, width); DINO's code swaps them, which only matters for non-square
    inputs that no TVT path uses.

    Args:
        grid_pos: [1, g*g, D] patch rows of a positional embedding (row-major grid).
        grid_hw: target grid (gh, gw) = (H // p, W // p).
    Returns:
        [1, gh*gw, D].
    """
    _, n, dim = grid_pos.shape
    g = math.sqrt(n)
    side = int(round(g))
    if side * side != n:
        raise ValueError(f"positional embedding has {n} patch rows, not a square grid")
    gh, gw = grid_hw
    # Same float expression as the official code, so the factor is bit-identical.
    scale = ((gh + 0.1) / g, (gw + 0.1) / g)
    img = grid_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    out = F.interpolate(img, scale_factor=scale, mode="bicubic", align_corners=False)
    if out.shape[-2:] != (gh, gw):  # cannot happen for the +0.1 rule; guards float surprises
        raise RuntimeError(f"pos-embed resampling gave {tuple(out.shape[-2:])}, expected {(gh, gw)}")
    return out.permute(0, 2, 3, 1).reshape(1, gh * gw, dim)


def crop_to_patches(x: Tensor, patch_size: int) -> Tensor:
    """Crop [N, C, H, W] at the bottom/right to multiples of ``patch_size``.

    DINO's stride-p convolution silently ignores the remainder; timm asserts instead.
    """
    h, w = x.shape[-2:]
    hc, wc = h - h % patch_size, w - w % patch_size
    if (hc, wc) == (h, w):
        return x
    if hc == 0 or wc == 0:
        raise ValueError(f"input {h}x{w} is smaller than one {patch_size}-px patch")
    return x[..., :hc, :wc]


class DinoViT(VisionTransformer):
    """timm VisionTransformer with DINO's input cropping and positional-embedding rule.

    ``forward(x [N, 3, H, W]) -> [N, D]`` is the CLS token after the final LayerNorm.
    """

    def __init__(self, arch: ViTArch, drop_path_rate: float = 0.0) -> None:
        super().__init__(**timm_kwargs(arch, drop_path_rate))
        apply_stem(self, arch)
        self.arch = arch

    def forward_features(self, x: Tensor, *args, **kwargs) -> Tensor:
        """[N, 3, H, W] -> [N, 1 + gh*gw, D] tokens after the final norm."""
        return super().forward_features(crop_to_patches(x, self.arch.patch_size), *args, **kwargs)

    def _pos_embed(self, x: Tensor) -> Tensor:
        """Prepend CLS and add the positional embedding; x: [N, gh, gw, D] (NHWC) -> [N, 1+gh*gw, D].

        The stored embedding is used unchanged when the grid is the native g x g one; otherwise
        the grid is resized by :func:`resample_pos_grid` (spec §2.1).
        """
        n, gh, gw, dim = x.shape
        g = self.arch.grid
        pos = self.pos_embed
        if (gh, gw) != (g, g):
            pos = torch.cat([pos[:, :1], resample_pos_grid(pos[:, 1:], (gh, gw))], dim=1)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x.reshape(n, gh * gw, dim)], dim=1)
        return self.pos_drop(x + pos)


def build_vit(arch: ViTArch, drop_path_rate: float = 0.0) -> DinoViT:
    """A DINO-style ViT (CLS output, no classifier) built on timm; random init (spec §2.1).

    Stochastic depth for block i is ``drop_path_rate * i / (depth - 1)``, as in DINO.
    """
    return DinoViT(arch, drop_path_rate)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
