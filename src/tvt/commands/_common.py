"""Arguments shared by the commands that take a config, and the run of a training stage."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tvt.config import Config


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", nargs="+", default=[], metavar="YAML",
                   help="config files, merged left to right over the defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set train.epochs=10")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")


# The config values that are paths (an explicit list: a new path key must be added here).
PATH_KEYS = (("data", "root"), ("data", "cache_dir"), ("sketch", "output_dir"), ("sketch", "init"),
             ("train", "output_dir"), ("train", "image_teacher"), ("train", "sketch_teacher"),
             ("eval", "checkpoint"), ("eval", "output_dir"))


def load_config(args: argparse.Namespace) -> Config:
    from tvt import config

    return expand_config_paths(config.load(args.config, args.overrides))


def expand_config_paths(cfg: Config) -> Config:
    """``cfg`` with a leading ``~`` expanded in every path value (YAML files and --set overrides)."""
    import os

    for section, key in PATH_KEYS:
        part = getattr(cfg, section)
        value = getattr(part, key)
        if isinstance(value, str) and value.startswith("~"):
            setattr(part, key, os.path.expanduser(value))
    return cfg


# Input checkpoints of each stage: (section, key, what it is, how to make it).
STAGE_INPUTS = {
    "sketch": [("sketch", "init", "the image ViT's full DINO checkpoint",
                "download DINO's (README, 'Reproducing the paper'); for configs/tiny_cpu.yaml make it with "
                "`tvt pretrain-sketch -c configs/tiny_cpu.yaml configs/tiny_cpu_image.yaml`")],
    "train": [("train", "image_teacher", "the image ViT's full DINO checkpoint",
               "download DINO's (README, 'Reproducing the paper'); for configs/tiny_cpu.yaml make it with "
               "`tvt pretrain-sketch -c configs/tiny_cpu.yaml configs/tiny_cpu_image.yaml`"),
              ("train", "sketch_teacher", "the stage-A sketch ViT",
               "make it with `tvt pretrain-sketch` and the same --config files")],
}


def require_inputs(cfg: Config, stage: str) -> None:
    """InputError naming the config key and the command that makes it, for a missing input checkpoint."""
    from pathlib import Path

    from tvt.errors import InputError

    for section, key, what, how in STAGE_INPUTS[stage]:
        value = getattr(getattr(cfg, section), key)
        if value and value != "random" and not Path(value).exists():
            raise InputError(f"{section}.{key} = {value} does not exist: it is {what}; {how}")


def is_main() -> bool:
    """True on rank 0 of a torchrun launch, and in a plain single-process run."""
    from tvt.distributed import rank_and_world

    return rank_and_world()[0] == 0


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The config arguments plus resume and progress (``tvt pretrain-sketch``, ``tvt train``)."""
    add_config_arguments(p)
    p.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="continue from the run directory's last checkpoint if there is one (default)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start over even if checkpoints exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_training(args: argparse.Namespace, stage: str) -> int:
    """Stage ``"sketch"`` (A) or ``"train"`` (B) from the command line; rank 0 prints the checkpoint path."""
    import importlib

    module, what = {"sketch": ("tvt.engine.train_dino", "selected checkpoint"),
                    "train": ("tvt.engine.train_tvt", "checkpoint")}[stage]
    cfg = load_config(args)
    require_inputs(cfg, stage)
    path = importlib.import_module(module).train(cfg, resume=args.resume, device=args.device,
                                                 progress=not args.no_progress)
    if is_main():  # under torchrun only rank 0 reports
        print(f"{what}: {path}")
    return 0
