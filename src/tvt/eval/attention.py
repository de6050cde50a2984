"""Attention maps of a special token over the patches, and a figure of a query and its results.

The map is the last block's softmax attention of the chosen token (default: the fusion token of a
TVT student, or CLS of a plain ViT) to every patch, averaged over heads, computed from the block's
own ``norm1`` output and ``qkv`` weights (so no model code is changed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn


@torch.inference_mode()
def last_block_attention(backbone: nn.Module, x: Tensor, token_index: int, n_prefix: int) -> Tensor:
    """[N, 3, H, W] -> [N, gh, gw]: head-averaged attention of token ``token_index`` to the patches."""
    block = backbone.blocks[-1]
    attn = block.attn
    captured: dict[str, Tensor] = {}
    handle = block.norm1.register_forward_hook(lambda m, i, o: captured.__setitem__("x", o))
    try:
        backbone(x)
    finally:
        handle.remove()
    h = captured["x"]
    n, t, d = h.shape
    heads = attn.num_heads
    qkv = attn.qkv(h).reshape(n, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    weights = ((q[:, :, token_index: token_index + 1] * attn.scale) @ k.transpose(-2, -1)).softmax(-1)
    patches = weights.mean(1)[:, 0, n_prefix:]
    side = int(round(patches.shape[1] ** 0.5))
    gh = x.shape[-2] // backbone.arch.patch_size
    gw = patches.shape[1] // gh if gh else side
    return patches.reshape(n, gh, gw)


def attention_for(model: nn.Module, x: Tensor) -> Tensor:
    """Attention maps of the fusion token (TVT student) or of CLS (plain ViT / teacher)."""
    backbone = getattr(model, "backbone", model)
    token_num = getattr(backbone, "token_num", None)
    n_prefix = int(getattr(backbone, "num_prefix_tokens", token_num or 1))  # register tokens count too
    if token_num:  # fusion ViT: the fusion token is the last special token
        return last_block_attention(backbone, x, token_num - 1, n_prefix)
    return last_block_attention(backbone, x, 0, n_prefix)


def _overlay(img: Image.Image, att: np.ndarray, size: int) -> Image.Image:
    import matplotlib

    base = img.convert("RGB").resize((size, size), Image.BILINEAR)
    a = (att - att.min()) / max(float(att.max() - att.min()), 1e-12)
    heat = Image.fromarray(np.uint8(a * 255)).resize((size, size), Image.BICUBIC)
    colour = matplotlib.colormaps["jet"](np.asarray(heat) / 255.0)[..., :3]
    mixed = 0.55 * np.asarray(base, dtype=np.float64) / 255.0 + 0.45 * colour
    return Image.fromarray(np.uint8(np.clip(mixed, 0, 1) * 255))


def attention_figure(model: nn.Module, transform, query_path: str | Path, result_paths: Sequence[str | Path],
                     out_png: str | Path, *, device: torch.device | str = "cpu", thumb: int = 128,
                     query_name: str | None = None, result_names: Sequence[str] | None = None,
                     title: str = "") -> Path:
    """Two rows: the images (query first, then results) and their attention overlays.

    With ``query_name`` and ``result_names`` (classes) the figure is drawn with a title saying what
    the maps show, a caption per column (query class; rank and class of each result) and a colour
    scale; without them it is a bare image grid.
    """
    from tvt.data.images import load_rgb

    paths = [Path(query_path), *map(Path, result_paths)]
    images = [load_rgb(p) for p in paths]
    x = torch.stack([transform(im) for im in images]).to(device)
    maps = attention_for(model, x).float().cpu().numpy()
    if query_name is not None and result_names is not None:
        token = "fusion token" if getattr(getattr(model, "backbone", model), "token_num", None) else "CLS token"
        return _labelled(images, maps, [f"query sketch\n{query_name}", *(f"#{i + 1} photo\n{n}" for i, n in
                                                                          enumerate(result_names))],
                         Path(out_png), thumb, f"{title}\nlast-block attention of the {token} to each image patch "
                                               "(mean over heads; red = attended most, blue = least)")
    canvas = Image.new("RGB", (thumb * len(paths) + 4 * (len(paths) - 1), 2 * thumb + 4), "white")
    for i, (im, att) in enumerate(zip(images, maps)):
        left = i * (thumb + 4)
        canvas.paste(im.convert("RGB").resize((thumb, thumb), Image.BILINEAR), (left, 0))
        canvas.paste(_overlay(im, att, thumb), (left, thumb + 4))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_png)
    return out_png


def _labelled(images: list[Image.Image], maps: np.ndarray, captions: list[str], out_png: Path, thumb: int,
              title: str) -> Path:
    import matplotlib
    from matplotlib.figure import Figure  # object-oriented: no pyplot, no global backend switch

    n = len(images)
    fig = Figure(figsize=(1.7 * n + 1.2, 4.6))
    axes = fig.subplots(2, n, squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.88, top=0.78, bottom=0.03, hspace=0.35)
    for i, (im, att) in enumerate(zip(images, maps)):
        axes[0, i].imshow(im.convert("RGB").resize((thumb, thumb), Image.BILINEAR))
        axes[0, i].set_title(captions[i], fontsize=7)
        axes[1, i].imshow(_overlay(im, att, thumb))
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("image", fontsize=8)
    axes[1, 0].set_ylabel("attention overlay", fontsize=8)
    sm = matplotlib.cm.ScalarMappable(cmap="jet", norm=matplotlib.colors.Normalize(0, 1))
    bar = fig.colorbar(sm, cax=fig.add_axes((0.90, 0.05, 0.015, 0.33)))
    bar.set_label("attention (min-max per image)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=8)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png
