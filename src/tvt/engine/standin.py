"""The demo's stand-in for a pretrained image ViT (not part of TVT).

TVT starts from an image ViT pretrained on ImageNet with DINO (spec §3.2). The CPU demo cannot
download it, and DINO from scratch needs far more compute than a demo has (a tiny ViT trained with
DINO for a few CPU minutes stays at a uniform output). The demo therefore pretrains its image ViT
with labels: label-smoothed cross-entropy of a linear classifier on the CLS token, on the photos of
the *training* classes only (unseen classes are never touched), with the stage-B photo augmentation.
The checkpoint has the stage-A layout (``teacher`` = backbone + a freshly initialised DINO head), so
``pretrain-sketch`` and ``train`` use it exactly like a DINO checkpoint.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from tvt import config as config_mod
from tvt.config import Config
from tvt.errors import ConfigError
from tvt.data.folder import ClassFolder
from tvt.data.layout import load_split
from tvt.data.transforms import augment_pipeline
from tvt.engine import checkpoint as ckpt
from tvt.engine.common import config_arch, seed_everything
from tvt.distributed import pick_device
from tvt.models.heads import DINOHead
from tvt.models.vit import build_vit
from tvt.models.wrappers import Teacher

STANDIN_FILE = "checkpoint.pth"


def train_standin(cfg: Config, out_dir: str | Path, *, steps: int = 300, lr: float = 1e-3, batch_size: int = 64,
                  device: str = "auto", progress: bool = True) -> Path:
    """Train the supervised stand-in image ViT into ``out_dir/checkpoint.pth``; returns its path.

    An existing checkpoint is reused (the demo resumes by stage). AdamW (weight decay 0.05), linear
    warm-up over the first 10% of ``steps``, then a cosine to 0; the architecture is ``cfg.model``.
    """
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"the image ViT stand-in needs steps >= 1 and batch_size >= 1, got {steps} and {batch_size}")
    out = Path(out_dir) / STANDIN_FILE
    if out.is_file():
        return out
    seed_everything(cfg.train.seed)
    dev = pick_device(device)
    split = load_split(cfg.data.root, cfg.data.dataset, cfg.data.split)
    tf = augment_pipeline(cfg.data.img_size, (0.4, 1.0), blur_p=0.1)
    photos = ClassFolder(Path(cfg.data.root) / cfg.data.dataset / "photo", split.train_classes, tf,
                         alpha_background=cfg.data.alpha_background)
    batch_size = min(batch_size, len(photos))  # tiny datasets: one batch of everything
    gen = torch.Generator().manual_seed(cfg.train.seed)
    loader = torch.utils.data.DataLoader(photos, batch_size=batch_size, shuffle=True, drop_last=True, generator=gen,
                                         num_workers=cfg.data.num_workers)
    m = cfg.model
    arch = config_arch(cfg)
    vit = build_vit(arch).to(dev).train()
    classifier = nn.Linear(m.embed_dim, len(split.train_classes)).to(dev)
    params = list(vit.parameters()) + list(classifier.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    warm = max(1, steps // 10)
    bar = tqdm(total=steps, desc="image ViT stand-in (supervised)", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    step = 0
    while step < steps:
        for x, y in loader:
            if step >= steps:
                break
            scale = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))
            for group in opt.param_groups:
                group["lr"] = lr * scale
            loss = F.cross_entropy(classifier(vit(x.to(dev))), y.to(dev), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1), bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    head = DINOHead(m.embed_dim, m.out_dim, m.head_hidden_dim, m.head_bottleneck_dim)
    teacher = Teacher(vit.cpu().eval(), head)
    state = {"format": "tvt", "version": 1, "stage": "image", "standin": "supervised",
             "teacher": teacher.state_dict(), "arch": {"num_heads": m.num_heads},
             "config": config_mod.as_plain(cfg), "train_classes": list(split.train_classes),
             "test_classes": list(split.test_classes), "dataset": cfg.data.dataset, "split": cfg.data.split}
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt.save_atomic(state, out)
    return out
