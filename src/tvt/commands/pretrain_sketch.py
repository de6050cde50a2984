"""`tvt pretrain-sketch`: stage A, DINO self-distillation of the sketch ViT."""

from __future__ import annotations

import argparse

from tvt.commands._common import add_config_arguments, load_config

HELP = "fine-tune a ViT on training-class sketches with DINO self-distillation (stage A)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="continue from the run directory's last checkpoint if there is one (default)")
    p.add_argument("--no-resume", dest="resume", action="store_false")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from tvt.engine.train_dino import train

    cfg = load_config(args)
    path = train(cfg, resume=args.resume, device=args.device, progress=not args.no_progress)
    print(f"selected checkpoint: {path}")
    return 0
