"""Arguments shared by the commands that take a config."""

from __future__ import annotations

import argparse


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", nargs="+", default=[], metavar="YAML",
                   help="config files, merged left to right over the defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set train.epochs=10")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def load_config(args: argparse.Namespace):
    from tvt import config

    return config.load(args.config, args.overrides)


def is_main() -> bool:
    """True on rank 0 of a torchrun launch, and in a plain single-process run."""
    from tvt.distributed import rank_and_world

    return rank_and_world()[0] == 0
