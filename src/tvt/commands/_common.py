"""Arguments shared by the commands that take a config."""

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
