"""Fusion ViT (spec §2.2): the base ViT with the CLS token replaced by 2 or 3 learned tokens.

Built as a subclass of timm's VisionTransformer with ``class_token=False``; only the prefix
tokens and the positional embedding differ from :class:`tvt.models.vit.DinoViT`.

Token sequence (index: token):

* ``token_num=2``: 0 ``dist_img_token`` (the one distillation token, both modalities),
  1 ``fusion_token``, then the patches;
* ``token_num=3``: 0 ``dist_img_token``, 1 ``dist_skt_token``, 2 ``fusion_token``, then patches.

``pos_embed`` is (1, token_num + g*g, D): one row per special token in sequence order, then the
patch grid.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from tvt.models.vit import ViTArch, apply_stem, crop_to_patches, resample_pos_grid, timm_kwargs

POS_RESAMPLE_MODES = ("fidelity", "exact")
TOKEN_NAMES: dict[int, tuple[str, ...]] = {
    2: ("dist_img_token", "fusion_token"),
    3: ("dist_img_token", "dist_skt_token", "fusion_token"),
}


def add_special_tokens(module: nn.Module, token_num: int, dim: int) -> None:
    """Register the [1, 1, dim] special-token parameters of ``token_num`` on ``module`` (trunc-normal 0.02)."""
    for name in TOKEN_NAMES[token_num]:
        token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(token, std=0.02)
        setattr(module, name, token)


class FusionViT(VisionTransformer):
    """Fusion ViT: ``forward(x [N, 3, H, W]) -> tuple of token_num tensors [N, D]``.

    The outputs are the special tokens after the final LayerNorm, in sequence order:
    ``(z_dist, z_fus)`` for token_num 2, ``(z_dist_img, z_dist_skt, z_fus)`` for 3.

    ``pos_resample`` [Q10]:

    * ``"fidelity"`` (default): the patch grid of ``pos_embed`` is always resampled with DINO's
      rule, even at the native size (scale factor (g + 0.1)/g, e.g. 28.1/28 at 224 px), because
      the official "no resize" test ``tokens - 1 == pos_len - token_num`` is never true and the
      official checkpoints were trained and evaluated that way;
    * ``"exact"``: the stored grid is used unchanged at the native size, and resampled with the
      base ViT's rule (spec §2.1) otherwise.

    Special-token rows are never resampled.
    """

    def __init__(
        self,
        arch: ViTArch,
        token_num: int = 2,
        pos_resample: str = "fidelity",
        drop_path_rate: float = 0.0,
    ) -> None:
        if token_num not in TOKEN_NAMES:
            raise ValueError(f"token_num must be 2 or 3, got {token_num}")
        if pos_resample not in POS_RESAMPLE_MODES:
            raise ValueError(f"pos_resample must be one of {POS_RESAMPLE_MODES}, got {pos_resample!r}")
        kwargs = timm_kwargs(arch, drop_path_rate)
        kwargs.update(class_token=False, global_pool="")
        super().__init__(**kwargs)
        apply_stem(self, arch)
        self.arch = arch
        self.token_num = token_num
        self.pos_resample = pos_resample
        self.num_prefix_tokens = token_num  # so timm's helpers skip the special tokens
        dim = arch.embed_dim
        num_patches = arch.grid * arch.grid
        self.pos_embed = nn.Parameter(torch.zeros(1, token_num + num_patches, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        add_special_tokens(self, token_num, dim)

    @property
    def token_names(self) -> tuple[str, ...]:
        """Names of the special-token parameters, in sequence order."""
        return TOKEN_NAMES[self.token_num]

    def special_tokens(self) -> Tensor:
        """[1, token_num, D] special tokens in sequence order (before positional embedding)."""
        return torch.cat([getattr(self, name) for name in self.token_names], dim=1)

    def patch_pos_embed(self, grid_hw: tuple[int, int]) -> Tensor:
        """[1, gh*gw, D] positional rows for a (gh, gw) patch grid, per ``pos_resample`` [Q10]."""
        grid_pos = self.pos_embed[:, self.token_num :]
        g = self.arch.grid
        if self.pos_resample == "exact" and tuple(grid_hw) == (g, g):
            return grid_pos
        return resample_pos_grid(grid_pos, grid_hw)

    def _pos_embed(self, x: Tensor) -> Tensor:
        """x: [N, gh, gw, D] (NHWC patches) -> [N, token_num + gh*gw, D] with positions added."""
        n, gh, gw, dim = x.shape
        pos = torch.cat([self.pos_embed[:, : self.token_num], self.patch_pos_embed((gh, gw))], dim=1)
        tokens = self.special_tokens().expand(n, -1, -1)
        x = torch.cat([tokens, x.reshape(n, gh * gw, dim)], dim=1)
        return self.pos_drop(x + pos)

    def forward_features(self, x: Tensor, *args, **kwargs) -> Tensor:
        """[N, 3, H, W] -> [N, token_num + gh*gw, D] tokens after the final LayerNorm."""
        return super().forward_features(crop_to_patches(x, self.arch.patch_size), *args, **kwargs)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        """[N, 3, H, W] -> token_num tensors [N, D]: the normalised special tokens in order."""
        out = self.forward_features(x)
        return tuple(out[:, i] for i in range(self.token_num))


class NamedFusionViT(nn.Module):
    """Fusion ViT around a named timm backbone (:mod:`tvt.models.backbones`): same tokens as
    :class:`FusionViT`, everything else the backbone's.

    ``vit`` is timm's ViT built without a class token, with its position embedding covering the
    patch grid only (``no_embed_class``) and no pooling head; register tokens, layer scale and
    pre-norm stay as the backbone has them. Sequence: the ``token_num`` special tokens, then the
    register tokens (if any), then the patches. A special token's position is folded into the
    token itself (positions of prefix tokens are never resized), so it starts as the teacher's
    CLS token plus its position row, as [Q10]/[Q11] do for DINO. The patch grid is resized with
    timm's rule when the input differs from the native size (``pos_resample`` is DINO's only).

    ``forward(x [N, 3, H, W]) -> tuple of token_num tensors [N, D]`` after the final norm.
    """

    def __init__(self, vit: nn.Module, token_num: int = 2) -> None:
        super().__init__()
        if token_num not in TOKEN_NAMES:
            raise ValueError(f"token_num must be 2 or 3, got {token_num}")
        if getattr(vit, "cls_token", None) is not None or not getattr(vit, "no_embed_class", False):
            raise ValueError("NamedFusionViT needs a timm ViT built with class_token=False, no_embed_class=True")
        self.vit = vit
        self.arch = vit.arch
        self.token_num = token_num
        self.pos_resample = "timm"
        dim = vit.embed_dim
        add_special_tokens(self, token_num, dim)

    @property
    def token_names(self) -> tuple[str, ...]:
        return TOKEN_NAMES[self.token_num]

    @property
    def num_prefix_tokens(self) -> int:
        """Special tokens plus the backbone's register tokens (everything before the patches)."""
        reg = self.vit.reg_token
        return self.token_num + (int(reg.shape[1]) if reg is not None else 0)

    @property
    def blocks(self) -> nn.Module:
        """The backbone's blocks (stochastic depth and head counts are read from them)."""
        return self.vit.blocks

    def special_tokens(self) -> Tensor:
        """[1, token_num, D] special tokens in sequence order (positions included)."""
        return torch.cat([getattr(self, name) for name in self.token_names], dim=1)

    def forward_features(self, x: Tensor) -> Tensor:
        """[N, 3, H, W] -> [N, token_num + registers + gh*gw, D] tokens after the final norm."""
        from timm.layers import resample_abs_pos_embed

        vit = self.vit
        x = vit.patch_embed(x)  # [N, gh, gw, D] (dynamic_img_size)
        n, gh, gw, dim = x.shape
        pos = resample_abs_pos_embed(vit.pos_embed, new_size=(gh, gw), old_size=vit.patch_embed.grid_size,
                                     num_prefix_tokens=0)
        prefix = [self.special_tokens()] + ([vit.reg_token] if vit.reg_token is not None else [])
        x = torch.cat([p.expand(n, -1, -1) for p in prefix] + [x.reshape(n, gh * gw, dim) + pos], dim=1)
        x = vit.norm_pre(vit.patch_drop(vit.pos_drop(x)))
        return vit.norm(vit.blocks(x))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.forward_features(x)
        return tuple(out[:, i] for i in range(self.token_num))
