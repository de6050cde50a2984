"""`tvt pretrain-sketch`: stage A, DINO self-distillation of the sketch ViT."""

from __future__ import annotations

import argparse

from tvt.commands._common import add_training_arguments, run_training

HELP = "fine-tune a ViT on training-class sketches with DINO self-distillation (stage A)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_training_arguments(p)


def run(args: argparse.Namespace) -> int:
    return run_training(args, "sketch")
