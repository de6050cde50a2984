"""The demo's stand-in for a pretrained image ViT (not part of TVT).

TVT starts from an image ViT pretrained on ImageNet with DINO (spec §3.2). The CPU demo cannot
download it, and DINO from scratch needs far more compute than a demo has (a tiny ViT trained with
DINO for a few CPU minutes stays at a uniform output). The demo therefore pretrains its image ViT
with labels, on the photos of the *training* classes only (unseen classes are never touched), with
the stage-B photo augmentation.

A DINO checkpoint's head is trained too, and TVT distils the student from that head's outputs. A
freshly initialised head gives near-uniform targets (the distillation loss sits at ln K).
``head="classes"`` therefore trains the DINO head with the labels: prototype ``k`` of the K head
outputs belongs to class ``k mod C``, a class scores the log-sum-exp of its prototypes' logits, and
label-smoothed cross-entropy runs on those scores, so the teacher's targets say which training
classes an image resembles. In the demo's 300 steps this gave a weaker image ViT and the
distillation loss still near ln K (README), so the default, ``head="random"``, trains a linear
classifier on CLS and ships a fresh head. The checkpoint has the stage-A layout (``teacher`` = backbone + DINO head), so
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

from tvt.config import Config
from tvt.errors import ConfigError
from tvt.data.folder import ClassFolder
from tvt.data.layout import load_split
from tvt.data.transforms import augment_pipeline
from tvt.engine import checkpoint as ckpt
from tvt.engine.common import JsonlLogger, config_arch, seed_everything
from tvt.distributed import pick_device
from tvt.models.heads import DINOHead
from tvt.models.vit import build_vit
from tvt.models.wrappers import Teacher

STANDIN_FILE = "checkpoint.pth"
HEADS = ("classes", "random")


def class_scores(logits: torch.Tensor, num_classes: int, temp: float) -> torch.Tensor:
    """[N, K] DINO-head logits -> [N, C] class scores: prototype ``k`` belongs to class ``k mod C``
    and a class scores the log-sum-exp of its prototypes' logits / ``temp``."""
    n, k = logits.shape
    if k < num_classes:
        raise ConfigError(f"the DINO head has {k} outputs, fewer than the {num_classes} training classes")
    z = logits[:, : k - k % num_classes] / temp
    return z.reshape(n, -1, num_classes).logsumexp(dim=1)


def train_standin(cfg: Config, out_dir: str | Path, *, steps: int = 300, lr: float = 1e-3, batch_size: int = 64,
                  device: str = "auto", progress: bool = True, head: str = "random", temp: float = 0.1) -> Path:
    """Train the supervised stand-in image ViT into ``out_dir/checkpoint.pth``; returns its path.

    An existing checkpoint is reused (the demo resumes by stage). AdamW (weight decay 0.05), linear
    warm-up over the first 10% of ``steps``, then a cosine to 0; the architecture is ``cfg.model``.

    ``head="classes"`` trains the DINO head too, through :func:`class_scores` at temperature
    ``temp``, so the frozen teacher's distillation targets carry class structure; ``"random"``
    trains a linear classifier on CLS and ships a freshly initialised DINO head (uniform-like
    targets, the first demo's choice).
    """
    if head not in HEADS:
        raise ConfigError(f"the image ViT stand-in head must be one of {HEADS}, got {head!r}")
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
    n_cls = len(split.train_classes)
    dino_head = DINOHead(m.embed_dim, m.out_dim, m.head_hidden_dim, m.head_bottleneck_dim).to(dev)
    if head == "classes":
        classifier: nn.Module = nn.Sequential(dino_head, _ClassScores(n_cls, temp))
    else:
        classifier = nn.Linear(m.embed_dim, n_cls).to(dev)
    params = list(vit.parameters()) + [p for p in classifier.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    warm = max(1, steps // 10)
    bar = tqdm(total=steps, desc="image ViT stand-in (supervised)", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    (Path(out_dir) / "log.jsonl").unlink(missing_ok=True)  # an interrupted earlier attempt starts over
    log = JsonlLogger(Path(out_dir) / "log.jsonl")
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
            if step % 5 == 0 or step == steps:
                log.write({"type": "step", "it": step - 1, "loss": loss.item(), "lr": lr * scale})
    bar.close()
    teacher = Teacher(vit.cpu().eval(), dino_head.cpu().eval())
    state = {**ckpt.header("image", teacher, cfg, split.train_classes, split.test_classes),
             "standin": "supervised", "standin_head": head, "teacher": teacher.state_dict()}
    ckpt.save_atomic(state, out)
    return out


class _ClassScores(nn.Module):
    """:func:`class_scores` as a module (no parameters)."""

    def __init__(self, num_classes: int, temp: float) -> None:
        super().__init__()
        self.num_classes, self.temp = num_classes, temp

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return class_scores(logits, self.num_classes, self.temp)
