"""`tvt pretrain-sketch`: stage A, DINO self-distillation of the sketch ViT."""

from __future__ import annotations

import argparse

from tvt.commands._common import add_config_arguments, is_main, load_config, require_inputs

HELP = "fine-tune a ViT on training-class sketches with DINO self-distillation (stage A)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="continue from the run directory's last checkpoint if there is one (default)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start over even if checkpoints exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tvt.engine.train_dino import train

    cfg = load_config(args)
    require_inputs(cfg, "sketch")
    path = train(cfg, resume=args.resume, device=args.device, progress=not args.no_progress)
    if is_main():  # under torchrun only rank 0 reports
        print(f"selected checkpoint: {path}")
    return 0
