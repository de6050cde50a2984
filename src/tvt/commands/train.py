"""`tvt train`: stage B, TVT training of the fusion ViT."""

from __future__ import annotations

import argparse

from tvt.commands._common import add_training_arguments, run_training

HELP = "train the fusion ViT (stage B) from a frozen image teacher and sketch teacher"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_training_arguments(p)


def run(args: argparse.Namespace) -> int:
    return run_training(args, "train")
